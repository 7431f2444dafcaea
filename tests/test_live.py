"""Live inference: framing, live ASR == offline, ordering/batching in Beam state, restart,
bounded state, idle expiry, dead letters, and a TCP loopback run of ``mediabeam live-asr``."""

import copy
import functools
import json
import threading

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that

from operators.asr.kv_memo import KeyValueMemo
from operators.asr.stream_engine import random_live_asr
from schemas.budgets import Budgets
from schemas.live import (
    HEADER,
    MAGIC,
    MAX_SEQ,
    Frame,
    FrameDecoder,
    FramingError,
    LiveChunk,
    PayloadKind,
    encode_frame,
    iter_recording,
)
from transforms.errors import DEAD_LETTER_TAG
from transforms.live.coder import NumpyTreeCoder
from transforms.live.state_log import RECORD_CODER, ShardStateLog, WrittenStates
from transforms.live.streams import LiveStreamFn, LiveStreams

torch.set_num_threads(1)  # tiny shapes: extra threads only add synchronisation on a shared machine

FACTORY = functools.partial(random_live_asr, seed=3)


@pytest.fixture(scope="module")
def engine():
    return FACTORY()


def _audio(seed: int, n: int) -> np.ndarray:
    """Tones of random pitch and loudness every 0.1 s (a random model emits many tokens on it)."""
    rng = np.random.default_rng(seed)
    pitch = np.repeat(rng.uniform(100, 4000, n // 1600 + 1), 1600)[:n]
    loudness = np.repeat(rng.uniform(0, 0.5, n // 1600 + 1), 1600)[:n]
    tone = loudness * np.sin(2 * np.pi * np.cumsum(pitch) / 16000)
    return (tone + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _pcm16(x: np.ndarray) -> np.ndarray:
    """Audio as the client sends it (s16), and back to float, so both paths see the same samples."""
    return (np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2")


def _chunks(sid: str, x: np.ndarray, cuts, source: str = "test") -> list:
    parts = np.split(_pcm16(x), sorted(cuts))
    return [LiveChunk(sid, i, i == len(parts) - 1, PayloadKind.PCM_S16LE, 16000, p.tobytes(), 0.0, source)
            for i, p in enumerate(parts)]


def _offline_tokens(engine, x: np.ndarray) -> list:
    samples = _pcm16(x).astype(np.float32) / 32768.0
    return engine.asr.transcribe_features(*engine.asr.features([samples]))[0]


def _streaming_options() -> PipelineOptions:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


class FakeBag:
    """Beam bag state that stores the coder's bytes, as a runner does (restart == decode);
    ``written`` counts the bytes each ``add`` sent."""

    def __init__(self):
        self.data, self.written = [], 0

    def read(self):
        return [RECORD_CODER.decode(item) for item in self.data]

    def add(self, value):
        self.data.append(RECORD_CODER.encode(value))
        self.written += len(self.data[-1])

    def clear(self):
        self.data = []

    def shard(self) -> ShardStateLog:
        return ShardStateLog(self.read())


class FakeTimer:
    def __init__(self):
        self.when = None

    def set(self, when):
        self.when = when


def _fn(clock=None, **options) -> LiveStreamFn:
    fn = LiveStreamFn(FACTORY, "tiny", clock=clock or (lambda: 0.0), **options)
    fn.setup()
    return fn


def _cells():
    return FakeBag(), FakeTimer()


def _call(fn, cells, chunks):
    log, timer = cells
    return list(fn.process((0, chunks), log=log, expiry=timer))


def _tokens(outputs, sid):
    return [t for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput) and o.stream_id == sid
            and o.event in ("partial", "final") for t in o.fields.get("tokens", [])]


def _dead(outputs):
    return [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG]


def test_framing_round_trip_oversized_and_malformed():
    frames = [Frame("cam-1", 0, False, PayloadKind.IMAGE, 0, b"\xff" * 10), Frame("mic", 7, True, 1, 16000, b"ab")]
    big = Frame("big", 1, False, 1, 16000, b"\x00" * 100)
    data = encode_frame(frames[0]) + encode_frame(big) + encode_frame(frames[1])
    decoder, out = FrameDecoder(max_payload_bytes=50), []
    for i in range(0, len(data), 7):  # arbitrary TCP segmentation
        out += decoder.feed(data[i : i + 7])
    assert [o for o in out if isinstance(o, Frame)] == frames
    errors = [o for o in out if isinstance(o, FramingError)]
    assert len(errors) == 1 and errors[0].stream_id == "big" and errors[0].seq == 1 and not errors[0].fatal
    bad = list(iter_recording(b"XXXX" + bytes(HEADER.size), 1 << 20))
    assert len(bad) == 1 and bad[0].fatal and "magic" in str(bad[0])


@pytest.mark.parametrize("n", [0, 1000, 17999, 40017])
def test_live_asr_engine_equals_offline_for_any_piece_sizes(engine, n):
    x = _audio(n, n)
    rng = np.random.default_rng(n + 1)
    state, tokens = engine.init_state(), []
    pieces = np.split(_pcm16(x), np.sort(rng.integers(0, n + 1, 9)))
    for piece in pieces:
        [outputs], [state] = engine.step([engine.decode(1, 16000, piece.tobytes())], [state])
        tokens += [t for delta in outputs for t in delta["tokens"]]
    tokens += [t for delta in engine.finalize(state) for t in delta["tokens"]]
    assert tokens == _offline_tokens(engine, x)
    assert n < 17999 or len(tokens) > 5  # the comparison is not vacuous


def test_batched_step_equals_each_stream_stepped_alone(engine):
    """Streams stepped together (one front-end analysis and one model step for the batch, pieces
    of different sizes) give each stream the events it gets alone, and its state up to float
    rounding (a matrix product's rounding may depend on its batch size on some CPUs)."""
    rng = np.random.default_rng(5)
    audio = [_audio(40 + i, 48000) for i in range(3)]
    cuts = [np.sort(rng.integers(0, 48000, 4)) for _ in audio]
    pieces = [[engine.decode(1, 16000, p.tobytes()) for p in np.split(_pcm16(x), c)] for x, c in zip(audio, cuts)]
    together, alone = [engine.init_state() for _ in audio], [engine.init_state() for _ in audio]
    events = 0
    for k in range(5):
        outputs, together = engine.step([p[k] for p in pieces], together)
        for i, p in enumerate(pieces):
            [single], [alone[i]] = engine.step([p[k]], [alone[i]])
            assert single == outputs[i]
            events += len(single)
    for mine, theirs in zip(together, alone):
        assert mine.keys() == theirs.keys()
        for name in mine:
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert events >= 3  # events were compared, not only empty lists


def test_remembered_key_value_caches_give_what_rebuilt_ones_give(engine):
    """The engine's key/value memo (the cache each step produced, reused by the next step) gives
    the events and states that rebuilding the cache from the stored attention cache gives (an
    engine whose memo holds nothing); it serves a state decoded from bytes (equal, not the same
    arrays), never a cache that belongs to other contents, and forgets streams that ended."""
    remembering = copy.copy(engine)
    remembering._kv_memo = KeyValueMemo()
    rebuilding = copy.copy(engine)
    rebuilding._kv_memo = KeyValueMemo(max_bytes=0)
    audio = [_audio(60 + i, 40000) for i in range(3)]
    mine = [remembering.init_state() for _ in audio]
    theirs = [rebuilding.init_state() for _ in audio]
    events = 0
    for k in range(5):
        pieces = [remembering.decode(1, 16000, _pcm16(x[k * 8000 : (k + 1) * 8000]).tobytes()) for x in audio]
        ours, mine = remembering.step(pieces, mine)
        want, theirs = rebuilding.step(pieces, theirs)
        assert ours == want
        events += sum(map(len, ours))
        if k == 2:  # as if restored from Beam state: equal arrays, new objects
            coder = NumpyTreeCoder()
            mine = [coder.decode(coder.encode(state)) for state in mine]
    for a, b in zip(mine, theirs):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert events >= 3 and len(rebuilding._kv_memo) == 0 and len(remembering._kv_memo) == len(audio)
    att = mine[0]["asr/cache_last_channel"]
    assert remembering._kv_memo.get(att.copy()) is not None  # the last step's cache, by content
    assert remembering._kv_memo.get(att + 1e-3) is None
    remembering.finalize_many(mine)
    assert len(remembering._kv_memo) == 0  # ended streams leave nothing behind


def test_key_value_memo_matches_by_content_and_stays_within_its_bytes():
    memo = KeyValueMemo(max_bytes=3 * 4 * 8)
    caches = [np.full((2, 1, 3, 2), float(i), np.float32) for i in range(5)]
    kv = [np.full((2, 1, 3, 4), float(i), np.float32) for i in range(5)]  # 96 bytes each
    memo.put(caches[0], kv[0][:1].copy())  # 48 bytes
    memo.put(caches[1], kv[1][:1].copy())
    memo.forget(caches[0])
    assert memo.get(caches[0]) is None and np.array_equal(memo.get(caches[1].copy()), kv[1][:1])
    assert len(memo) == 1 and memo.nbytes == 48
    memo.put(caches[2], kv[2])  # 48 + 96 > 96: the least recently used goes
    assert memo.get(caches[1]) is None and np.array_equal(memo.get(caches[2]), kv[2]) and memo.nbytes == 96
    memo.put(caches[3], np.zeros((2, 1, 3, 100), np.float32))  # larger than the bound: not held
    assert memo.get(caches[3]) is None and memo.nbytes == 96
    other = caches[2].copy()
    other[0, 0, 0, 0] = 7.0  # same newest frames (the lookup key), other contents
    assert memo.get(other) is None


def test_pipeline_interleaved_reordered_duplicated_equals_offline(engine):
    """Three streams, random chunking, chunks shuffled across bundles, one duplicate, a bad
    chunk in another stream and a chunk after finalisation: transcripts equal offline."""
    rng = np.random.default_rng(7)
    audio = {"a": _audio(1, 30000), "b": _audio(2, 21000), "c": _audio(3, 9000)}
    chunks = []
    for sid, x in audio.items():
        chunks += _chunks(sid, x, rng.integers(0, len(x), rng.integers(2, 6)))
    order = list(rng.permutation(len(chunks)))
    order.insert(order.index(1) + 1, 1)  # a duplicate (before its stream is finalised)
    bad = [
        LiveChunk("d", 0, False, PayloadKind.PCM_S16LE, 16000, b"\x01\x02\x03", 0.0, "test"),  # odd byte count
        LiveChunk("d", 1, False, PayloadKind.PCM_S16LE, 8000, b"\x00" * 64, 0.0, "test"),  # wrong rate
        LiveChunk("d", 2, False, PayloadKind.PCM_S16LE, 16000, b"\x00" * 70000, 0.0, "test"),  # oversized
        LiveChunk("d", 3, True, PayloadKind.PCM_S16LE, 16000, b"\x00" * 640, 0.0, "test"),
    ]
    stream = TestStream()
    for part in np.array_split(order, 4):
        stream = stream.add_elements([chunks[i] for i in part])
    stream = stream.add_elements(bad).add_elements([LiveChunk("d", 4, False, 1, 16000, b"", 0.0, "test")])
    stream = stream.advance_watermark_to_infinity()
    expected = {sid: _offline_tokens(engine, x) for sid, x in audio.items()}

    def check_events(events):
        for sid, want in expected.items():
            got = [t for e in events if e.stream_id == sid and e.event in ("partial", "final")
                   for t in e.fields.get("tokens", [])]
            assert got == want, sid
            finals = [e for e in events if e.stream_id == sid and e.event == "final"]
            assert len(finals) == 1 and finals[0].fields["reason"] == "eos"
        assert [e.fields["reason"] for e in events if e.stream_id == "d" and e.event == "final"] == ["eos"]

    def check_dead(dead):
        reasons = sorted((d.key, d.error_type) for d in dead)
        assert reasons == [("d#0", "SampleFormatError"), ("d#1", "SampleFormatError"),
                           ("d#2", "BudgetExceeded"), ("d#4", "FinalisedStreamError")], reasons

    with TestPipeline(options=_streaming_options()) as p:
        out = p | stream | LiveStreams(FACTORY, "tiny", num_shards=2, budgets=Budgets(live_frame_bytes=65536))
        assert_that(out["events"], check_events, label="CheckEvents")
        assert_that(out[DEAD_LETTER_TAG], check_dead, label="CheckDeadLetters")


def test_restart_from_coded_state_continues_identically(engine):
    """The DoFn's state, stored as coder bytes, restored into a fresh DoFn mid-stream (worker
    loss), gives the transcript of an uninterrupted run."""
    a, b = _audio(11, 45000), _audio(12, 30000)
    ca, cb = _chunks("a", a, [7000, 20000, 31000]), _chunks("b", b, [9000, 15000])
    batches = [[ca[0], cb[0]], [ca[1]], [cb[1], ca[2]], [cb[2], ca[3]]]
    cells = _cells()
    first = _fn()
    outputs = [o for batch in batches[:2] for o in _call(first, cells, batch)]
    saved = list(cells[0].data)
    del first
    restored = _cells()
    restored[0].data = saved
    fresh = _fn()
    outputs += [o for batch in batches[2:] for o in _call(fresh, restored, batch)]
    assert _tokens(outputs, "a") == _offline_tokens(engine, a) and len(_tokens(outputs, "a")) > 5
    assert _tokens(outputs, "b") == _offline_tokens(engine, b)


def test_states_taken_back_from_the_worker_give_what_decoding_gives(engine):
    """The DoFn takes back the states it wrote last bundle instead of decoding them
    (``WrittenStates``); a DoFn that always decodes gives the same events and writes the same
    bytes, bundle after bundle, with streams interleaved, reordered and ending."""
    a, b = _audio(13, 40000), _audio(14, 30000)
    ca, cb = _chunks("a", a, [5000, 12000, 20000, 33000]), _chunks("b", b, [8000, 16000])
    batches = [[ca[0], cb[0]], [ca[2], ca[1]], [cb[1]], [ca[3], cb[2]], [ca[4]]]
    taking, decoding = _fn(), _fn()
    decoding._written = WrittenStates(max_bytes=0)
    mine, theirs = _cells(), _cells()
    outputs = []
    for k, batch in enumerate(batches):
        ours, want = _call(taking, mine, batch), _call(decoding, theirs, batch)
        assert [(o.event, o.seq, o.fields) for o in ours] == [(o.event, o.seq, o.fields) for o in want]
        assert mine[0].data == theirs[0].data
        if k == 0:
            assert len(taking._written) == 2  # both states kept: the next bundle takes them back
        outputs += ours
    assert len(taking._written) == 0  # both streams ended: nothing kept
    assert _tokens(outputs, "a") == _offline_tokens(engine, a) and len(_tokens(outputs, "a")) > 5


def test_state_size_is_bounded_for_long_streams():
    fn, cells = _fn(), _cells()
    x = _audio(5, 16000 * 30)
    pieces = _chunks("long", x, list(range(8000, len(x), 8000)))
    sizes = []
    for chunk in pieces[:-1]:
        _call(fn, cells, [chunk])
        sizes.append(len(NumpyTreeCoder().encode(cells[0].shard()["long"])))
    early, late = max(sizes[4:12]), max(sizes[-8:])
    assert late <= early * 1.05, (early, late)
    assert cells[0].shard()["long"]["mel"].shape[1] < 112
    assert sum(map(len, cells[0].data)) <= 2 * late + (1 << 20) + 4096  # the log is rewritten as it grows


def test_bundle_writes_only_the_streams_it_touched(engine):
    """With two streams open, a bundle with a chunk of one stream writes that stream's state
    and the book, not the other stream's state; the transcripts still equal offline."""
    fn, cells = _fn(), _cells()
    a, b = _audio(31, 30000), _audio(32, 30000)
    ca, cb = _chunks("a", a, [10000, 20000]), _chunks("b", b, [10000, 20000])
    outputs = _call(fn, cells, [ca[0], cb[0]])
    one_state = len(NumpyTreeCoder().encode(cells[0].shard()["b"]))
    before = cells[0].written
    outputs += _call(fn, cells, [ca[1]])
    assert 0.5 * one_state < cells[0].written - before < 1.5 * one_state
    outputs += _call(fn, cells, [cb[1], ca[2], cb[2]])
    assert _tokens(outputs, "a") == _offline_tokens(engine, a) and _tokens(outputs, "b") == _offline_tokens(engine, b)
    shard = cells[0].shard()
    assert list(shard) == [] and sorted(shard.book()["closed"]) == ["a", "b"]  # ended: no state, remembered


def test_idle_expiry_checks_last_seen_time(engine):
    now = [100.0]
    fn, cells = _fn(clock=lambda: now[0], idle_seconds=10.0), _cells()
    x = _audio(8, 24000)
    chunk = _chunks("idle", x, [])[0]._replace(eos=False)
    events = _call(fn, cells, [chunk])
    log, timer = cells
    assert timer.when == 110.0
    now[0] = 105.0  # an early firing (the in-process runner fires after every bundle)
    written, timer.when = log.written, None
    assert list(fn.expire(shard=0, log=log, expiry=timer)) == []
    assert log.written == written and timer.when == 110.0  # nothing written; the timer is set again
    assert "idle" in log.shard().book()["streams"] and "idle" in log.shard()
    now[0] = 111.0
    events += list(fn.expire(shard=0, log=log, expiry=timer))
    assert events[-1].event == "final" and events[-1].fields["reason"] == "idle"
    assert _tokens(events, "idle") == _offline_tokens(engine, x)
    shard = log.shard()
    assert "idle" not in shard and shard.book()["streams"] == {} and "idle" in shard.book()["closed"]


def test_gap_is_reported_and_skipped_other_streams_unaffected(engine):
    fn, cells = _fn(budgets=Budgets(live_pending_chunks=2)), _cells()
    x, y = _audio(21, 20000), _audio(22, 12000)
    cx = _chunks("gappy", x, [4000, 8000, 12000, 16000])
    cy = _chunks("ok", y, [6000])
    outputs = _call(fn, cells, [cx[0], cy[0], cx[2], cx[3], cy[1], cx[4]])  # cx[1] never arrives
    gaps = [o for o in outputs if getattr(o, "event", "") == "gap"]
    assert [(g.stream_id, g.fields["missing_from"], g.fields["missing_to"]) for g in gaps] == [("gappy", 1, 1)]
    assert "live_pending_chunks=2" in gaps[0].fields["reason"]
    assert _tokens(outputs, "ok") == _offline_tokens(engine, y)
    assert [o.fields["reason"] for o in outputs if getattr(o, "event", "") == "final"] == ["eos", "eos"]


def test_tcp_loopback_live_asr_job(tmp_path, engine):
    """``mediabeam live-asr`` on FnApiRunner with a tiny .nemo model, two TCP clients."""
    import socket

    from operators.asr.nemo_checkpoint import save_nemo
    from pipelines import live_asr
    from pipelines.tools import send

    model_path = str(tmp_path / "tiny.nemo")
    save_nemo(model_path, engine.asr.model, labels=list("abcdefghijk "))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events_path = tmp_path / "events.jsonl"
    outcome = {}

    def run_job(argv):
        outcome["result"] = live_asr.run(argv)

    job = threading.Thread(target=run_job, args=([
        "--model", model_path, "--port", str(port), "--output", str(events_path), "--reply",
        "--max-idle-seconds", "2", "--idle-timeout", "2", "--stop-after", "40",
    ],))
    job.start()
    audio = {"s1": _audio(31, 20000), "s2": _audio(32, 26000)}
    results = {}

    def client(sid):
        wav = tmp_path / f"{sid}.wav"
        _write_wav(wav, audio[sid])
        results[sid] = send.run([str(wav), "--stream-id", sid, "--port", str(port), "--chunk-seconds", "0.3",
                                 "--quiet", "--wait", "20"])

    clients = [threading.Thread(target=client, args=(sid,)) for sid in audio]
    for c in clients:
        c.start()
    idle_audio = _audio(33, 12000)
    with send.connect("127.0.0.1", port) as raw:  # a stream that never ends: expired when idle
        # A hostile frame first (sequence number 2^64 - 1; it used to kill the job with every stream).
        raw.sendall(HEADER.pack(MAGIC, 1, 0, PayloadKind.PCM_S16LE, 0, 4, 2**64 - 1, 16000, 0) + b"evil")
        for frame in send.audio_frames(_pcm16(idle_audio).astype(np.float32) / 32768, "idle", 0.25):
            raw.sendall(encode_frame(frame._replace(eos=False)))
        with send.connect("127.0.0.1", port) as bad:  # garbage on another connection
            bad.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(HEADER.size))
        for c in clients:
            c.join()
        job.join(60)
    assert not job.is_alive()
    lines = [json.loads(line) for line in events_path.read_text().splitlines()]
    idle = [e for e in lines if e["stream_id"] == "idle"]
    assert idle[-1]["event"] == "final" and idle[-1]["reason"] == "idle"
    assert [t for e in idle for t in e.get("tokens", [])] == _offline_tokens(engine, idle_audio)
    errors = sorted((e for e in lines if e["event"] == "error"), key=lambda e: e["stream_id"] != "evil")
    assert len(errors) == 2 and "malformed frame header" in errors[1]["reason"], errors
    assert errors[0]["stream_id"] == "evil" and "sequence number" in errors[0]["reason"], errors
    counters: dict = {}
    for m in outcome["result"].metrics().query()["counters"]:
        name = f"{m.key.metric.namespace}/{m.key.metric.name}"
        counters[name] = counters.get(name, 0) + m.committed
    sent = sum(r["frames"] for r in results.values()) + 3  # + the idle stream's three frames
    # Inputs = outputs + dead letters, on both stages.
    assert counters["LiveSource/frames"] == sent and counters["LiveSource/bad_frames"] == 2
    assert counters["LiveStreams/chunks"] == sent == counters["LiveStreams/pushed_chunks"]
    assert counters["LiveStreams/finalised_streams"] == 3
    for sid, x in audio.items():
        tokens = [t for e in lines if e["stream_id"] == sid and e["event"] in ("partial", "final")
                  for t in e.get("tokens", [])]
        assert tokens == _offline_tokens(engine, x)
        assert results[sid]["transcript"] == engine.asr.vocabulary.decode(tokens)
        assert [e["event"] for e in lines if e["stream_id"] == sid][-1] == "final"


def test_tail_replays_recordings(tmp_path, engine):
    """``send --record`` writes .mbl recordings; ``live-asr --tail DIR`` replays them."""
    from operators.asr.nemo_checkpoint import save_nemo
    from pipelines import live_asr
    from pipelines.tools import send

    model_path = str(tmp_path / "tiny.nemo")
    save_nemo(model_path, engine.asr.model, labels=list("abcdefghijk "))
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    audio = {"r1": _audio(41, 15000), "r2": _audio(42, 22000)}
    for sid, x in audio.items():
        _write_wav(tmp_path / f"{sid}.wav", x)
        send.run([str(tmp_path / f"{sid}.wav"), "--stream-id", sid, "--chunk-seconds", "0.4",
                  "--record", str(recordings / f"{sid}.mbl")])
    (recordings / "broken.mbl").write_bytes(b"not a recording at all, not even close......")
    events_path = tmp_path / "events.jsonl"
    live_asr.run(["--model", model_path, "--tail", str(recordings), "--output", str(events_path),
                  "--max-idle-seconds", "1", "--idle-timeout", "1"])
    lines = [json.loads(line) for line in events_path.read_text().splitlines()]
    for sid, x in audio.items():
        assert [t for e in lines if e["stream_id"] == sid for t in e.get("tokens", [])] == _offline_tokens(engine, x)
    errors = [e for e in lines if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.mbl")


def _write_wav(path, x: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(_pcm16(x).tobytes())


def test_live_video_streams_equal_offline_stepper():
    """CoX3D (tiny) through the same DoFn: per-frame predictions equal stepping each video alone."""
    import io

    from PIL import Image

    from operators.video.stream_engine import live_co_x3d

    factory = functools.partial(live_co_x3d, "tiny", 2, 5, None, 32, 3)
    rng = np.random.default_rng(3)
    videos = {sid: rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for sid, n in (("v1", 16), ("v2", 13))}

    def png(frame):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        return buffer.getvalue()

    chunks = [LiveChunk(sid, i, False, PayloadKind.IMAGE, 0, png(f), 0.0, "test")
              for sid, frames in videos.items() for i, f in enumerate(frames)]
    chunks += [LiveChunk(sid, len(frames), True, PayloadKind.NONE, 0, b"", 0.0, "test")
               for sid, frames in videos.items()]
    chunks.append(LiveChunk("v3", 0, False, PayloadKind.IMAGE, 0, b"not an image", 0.0, "test"))
    order = rng.permutation(len(chunks))
    stream = TestStream()
    for part in np.array_split(order, 3):
        stream = stream.add_elements([chunks[i] for i in part])
    stream = stream.advance_watermark_to_infinity()
    engine = factory()
    expected = {sid: [(i, np.argsort(-out.ravel())[:3].tolist()) for i, out in engine.stepper.steps(list(frames))]
                for sid, frames in videos.items()}

    def check(events):
        for sid, want in expected.items():
            got = [(e.fields["frame_index"], e.fields["top_classes"]) for e in events
                   if e.stream_id == sid and e.event == "prediction"]
            assert got == want and want, sid
            assert [e.event for e in events if e.stream_id == sid].count("final") == 1

    with TestPipeline(options=_streaming_options()) as p:
        out = p | stream | LiveStreams(factory, "co_x3d_tiny", idle_seconds=60)
        assert_that(out["events"], check, label="CheckPredictions")
        assert_that(out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.key, d.error_type)),
                    lambda got: got == [("v3#0", "FrameFormatError")] or pytest.fail(str(got)), label="CheckDead")


def test_largest_sequence_numbers_fit_the_coded_state(engine):
    """The largest valid sequence numbers go through the book and the state coder (a number
    past int64 used to stop the job with every stream); another stream is unaffected."""
    fn, cells = _fn(budgets=Budgets(live_pending_chunks=1)), _cells()
    x = _audio(51, 12000)
    ok = _chunks("ok", x, [5000])
    far = [LiveChunk("far", seq, False, PayloadKind.PCM_S16LE, 16000, b"\x00" * 640, 0.0, "test")
           for seq in (MAX_SEQ - 1, MAX_SEQ)]
    outputs = _call(fn, cells, [ok[0], *far]) + _call(fn, cells, [ok[1]])
    gaps = [o for o in outputs if getattr(o, "event", "") == "gap"]
    assert [(g.stream_id, g.fields["missing_to"]) for g in gaps] == [("far", MAX_SEQ - 2)]
    assert cells[0].shard().book()["streams"]["far"]["next"] == MAX_SEQ + 1 == 2**63 - 1
    assert _tokens(outputs, "ok") == _offline_tokens(engine, x) and not _dead(outputs)

