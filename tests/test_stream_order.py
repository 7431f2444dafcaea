"""``StreamBook`` (per-stream ordering, pure), ``StreamAdmission`` and the ``StreamEngine`` contract."""

import numpy as np
import pytest

from operators.streaming.admission import StreamAdmission
from operators.streaming.engine import StreamEngine
from operators.streaming.order import (
    AfterEndOfStreamError,
    Duplicate,
    Ended,
    FinalisedStreamError,
    Gap,
    Ready,
    Rejected,
    StreamBook,
)
from transforms.live.coder import NumpyTreeCoder


def _book(**kw) -> StreamBook:
    options = {"max_pending": 4, "max_pending_bytes": 1000, "idle_seconds": 10.0, "tombstone_seconds": 100.0}
    options.update(kw)
    return StreamBook(**options)


def _push(book, sid, seq, eos=False, nbytes=10, now=0.0):
    return book.push(sid, seq, eos, {"payload": bytes(nbytes)}, nbytes, now + 0.5, "test", now)


def _kinds(actions):
    out = []
    for a in actions:
        if isinstance(a, Ready):
            out.append(("ready", a.stream_id, a.seq))
        elif isinstance(a, Gap):
            out.append(("gap", a.stream_id, a.missing_from, a.missing_to))
        elif isinstance(a, Ended):
            out.append(("end", a.stream_id, a.reason, a.seq))
        elif isinstance(a, Rejected):
            out.append(("rejected", a.stream_id, a.seq, type(a.error).__name__))
        else:
            assert isinstance(a, Duplicate)
            out.append(("duplicate", a.stream_id, a.seq))
    return out


def test_reorders_drops_duplicates_and_ends():
    book = _book()
    acts = []
    for seq, eos in ((1, False), (0, False), (0, False), (3, True), (2, False), (2, False)):
        acts += _push(book, "s", seq, eos)
    assert _kinds(acts) == [
        ("ready", "s", 0), ("ready", "s", 1), ("duplicate", "s", 0),
        ("ready", "s", 2), ("ready", "s", 3), ("end", "s", "eos", 3), ("duplicate", "s", 2),
    ]
    assert book.streams == {} and book.pending_bytes == 0
    assert _kinds(_push(book, "s", 4)) == [("rejected", "s", 4, "FinalisedStreamError")]
    assert isinstance(_push(book, "s", 9)[0].error, FinalisedStreamError)


def test_chunks_after_end_of_stream_are_rejected():
    book = _book()
    acts = _push(book, "s", 5) + _push(book, "s", 2, eos=True) + _push(book, "s", 3)
    assert _kinds(acts) == [("rejected", "s", 5, "AfterEndOfStreamError"),
                            ("rejected", "s", 3, "AfterEndOfStreamError")]
    assert isinstance(acts[0].error, AfterEndOfStreamError)
    assert book.pending_bytes == 10  # chunk 2 waits for 0 and 1


def test_per_stream_budget_skips_the_gap_and_goes_on():
    book = _book(max_pending=2)
    acts = []
    for seq in (0, 2, 3, 4, 5):  # 1 never arrives
        acts += _push(book, "s", seq)
    assert _kinds(acts) == [("ready", "s", 0), ("gap", "s", 1, 1), ("ready", "s", 2), ("ready", "s", 3),
                            ("ready", "s", 4), ("ready", "s", 5)]
    gap = next(a for a in acts if isinstance(a, Gap))
    assert "live_pending_chunks=2" in gap.reason


def test_total_pending_bytes_budget_flushes_the_biggest_stream():
    book = _book(max_pending=100, max_pending_bytes=250)
    acts = []
    for seq in range(1, 5):  # "hog" waits for its chunk 0 with 4 x 50 bytes
        acts += _push(book, "hog", seq, nbytes=50)
    acts += _push(book, "small", 1, nbytes=20)
    assert not [a for a in acts if not isinstance(a, Duplicate)]
    assert book.pending_bytes == 220
    acts = _push(book, "small", 2, nbytes=40)  # 260 > 250: the hog gives up its gap
    assert _kinds(acts)[0] == ("gap", "hog", 0, 0)
    assert [a.seq for a in acts if isinstance(a, Ready)] == [1, 2, 3, 4]
    assert "live_pending_bytes=250" in acts[0].reason
    assert book.pending_bytes == 60 <= book.max_pending_bytes


def test_idle_expiry_flushes_then_ends_only_idle_streams():
    book = _book()
    _push(book, "idle", 0, now=0.0)
    _push(book, "idle", 2, now=1.0)
    _push(book, "busy", 0, now=8.0)
    assert book.next_expiry() == 11.0
    assert book.expire(5.0) == []  # an early timer: nothing is idle yet
    acts = book.expire(11.0)
    assert _kinds(acts) == [("gap", "idle", 1, 1), ("ready", "idle", 2), ("end", "idle", "idle", 2)]
    assert acts[-1].received_at == 1.5
    assert list(book.streams) == ["busy"] and book.next_expiry() == 18.0
    assert _kinds(_push(book, "idle", 3, now=12.0)) == [("rejected", "idle", 3, "FinalisedStreamError")]
    assert _kinds(book.expire(200.0)) == [("end", "busy", "idle", 0)]
    assert book.next_expiry() is None and list(book.closed) == ["busy"]  # "idle" forgotten after 100 s
    assert _kinds(_push(book, "idle", 0, now=201.0)) == [("ready", "idle", 0)]


def test_tree_round_trip_through_the_state_coder_continues_identically():
    coder = NumpyTreeCoder()
    events = [("a", 2, False), ("b", 0, False), ("a", 0, False), ("b", 2, True), ("a", 1, False), ("b", 1, False),
              ("a", 3, True)]
    straight, restored = _book(), None
    expected, got = [], []
    for i, (sid, seq, eos) in enumerate(events):
        expected += _kinds(_push(straight, sid, seq, eos, now=float(i)))
        book = _book(tree=coder.decode(coder.encode(restored.to_tree()))) if restored else _book()
        got += _kinds(_push(book, sid, seq, eos, now=float(i)))
        restored = book
    assert got == expected and ("end", "b", "eos", 2) in got and ("end", "a", "eos", 3) in got
    assert coder.encode(restored.to_tree()) == coder.encode(straight.to_tree())


def test_admission_caps_open_streams_per_source():
    admission = StreamAdmission(max_streams=2, idle_seconds=10.0)
    assert admission.admit("a", False, 0.0) is None and admission.admit("b", False, 0.0) is None
    refused = admission.admit("c", False, 1.0)
    assert refused is not None and refused.budget == "live_streams" and "live_streams=2" in str(refused)
    assert admission.admit("a", False, 2.0) is None  # open streams go on
    assert admission.admit("b", True, 3.0) is None  # b ends: room for c
    assert admission.admit("c", False, 4.0) is None
    assert admission.admit("d", False, 5.0) is not None
    assert admission.admit("d", False, 14.5) is None  # a went idle at 12.0


class _Echo(StreamEngine):
    event_name = "echo"

    def decode(self, kind, sample_rate, payload):
        return np.frombuffer(payload, np.uint8)

    def init_state(self):
        return {"n": np.zeros((), np.int64)}

    def step(self, inputs, states):
        return ([[{"n": int(s["n"]) + len(x)}] for x, s in zip(inputs, states)],
                [{"n": s["n"] + len(x)} for x, s in zip(inputs, states)])

    def finalize(self, state):
        return [{"total": int(state["n"])}]


def test_engine_contract_is_checked_when_a_class_is_defined():
    engine = _Echo()
    outputs, states = engine.step([engine.decode(3, 0, b"ab"), engine.decode(3, 0, b"")],
                                  [engine.init_state(), engine.init_state()])
    assert outputs == [[{"n": 2}], [{"n": 0}]] and engine.finalize(states[0]) == [{"total": 2}]
    with pytest.raises(TypeError, match=r"step\('inputs',\) does not match"):
        type("Bad", (_Echo,), {"step": lambda self, inputs: None})
    with pytest.raises(TypeError, match="event_name"):
        type("Nameless", (_Echo,), {"event_name": ""})
    with pytest.raises(TypeError, match="abstract"):
        type("Partial", (StreamEngine,), {})()


def test_live_engines_implement_the_contract():
    from operators.asr.stream_engine import LiveASR
    from operators.video.stream_engine import LiveVideo

    assert issubclass(LiveASR, StreamEngine) and issubclass(LiveVideo, StreamEngine)
    assert (LiveASR.event_name, LiveVideo.event_name) == ("partial", "prediction")
