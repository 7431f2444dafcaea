"""Fuzzing the live frame decoder (the edge every untrusted live byte crosses).

Seeded (``derandomize``) and bounded: the default example counts keep the file well under 45 s;
set ``MEDIABEAM_FUZZ_EXAMPLES=N`` for longer runs. Properties: the decoder never raises, it
yields only ``Frame`` or ``FramingError`` (the documented error type), which the source turns
into chunks or error events; no payload exceeds the budget and the decoder's buffer stays
bounded however the bytes are split; a damaged frame never changes another stream's frames.
"""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.budgets import Budgets
from schemas.common import DeadLetter
from schemas.live import (
    HEADER,
    MAGIC,
    MAX_SEQ,
    MAX_STREAM_ID_BYTES,
    Frame,
    FrameDecoder,
    FramingError,
    LiveChunk,
    encode_frame,
)
from transforms.live.pollers import Poller, SourceSpec
from transforms.live.sink import error_event

MAX_PAYLOAD = 512
EXAMPLES = int(os.environ.get("MEDIABEAM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
READ = 1 << 12  # bytes per feed at most (a socket read)


def _feed(data: bytes, cuts) -> list:
    """Decodes ``data`` fed in pieces cut at ``cuts``; checks the memory bound after each piece."""
    decoder, out, start = FrameDecoder(MAX_PAYLOAD), [], 0
    points = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    for end in points:
        for i in range(start, end, READ):
            out += decoder.feed(data[i : min(i + READ, end)])
            assert len(decoder._buffer) <= HEADER.size + MAX_STREAM_ID_BYTES + MAX_PAYLOAD + READ
        start = end
    for item in out:
        assert isinstance(item, (Frame, FramingError)), type(item)
        if isinstance(item, Frame):
            assert len(item.payload) <= MAX_PAYLOAD and 0 <= item.seq <= MAX_SEQ
    return out


payloads = st.binary(max_size=MAX_PAYLOAD).filter(lambda b: MAGIC not in b)
frames = st.builds(
    Frame,
    stream_id=st.sampled_from(["a", "b", "cam-1", "ü"]),
    seq=st.integers(0, MAX_SEQ),
    eos=st.booleans(),
    kind=st.sampled_from([1, 2]),
    sample_rate=st.sampled_from([8000, 16000, 48000]),
    payload=payloads,
)
cuts = st.lists(st.integers(0, 1 << 14), max_size=8)


@FUZZ
@given(data=st.binary(max_size=4096), cuts=cuts)
def test_random_bytes_give_only_frames_and_error_events(data, cuts):
    out = _feed(data, cuts)
    poller = Poller(SourceSpec("tail", "/nonexistent", Budgets(live_frame_bytes=MAX_PAYLOAD)))
    poller.put_frames(out, "fuzz")
    items = poller.drain(0.0, linger=0.0)
    assert len(items) == len(out)
    for item in items:
        assert isinstance(item, (LiveChunk, DeadLetter))
        if isinstance(item, DeadLetter):
            json.loads(error_event(item).to_json())


@FUZZ
@given(data=st.binary(min_size=HEADER.size, max_size=2048), cuts=cuts)
def test_valid_magic_and_random_rest_never_escape(data, cuts):
    _feed(MAGIC + bytes([1]) + data[5:], cuts)


@FUZZ
@given(others=st.lists(frames, min_size=1, max_size=6), victim=frames, at=st.integers(0, 6),
       field=st.sampled_from(["flags", "kind", "reserved", "seq", "rate"]), value=st.integers(0, 2**64 - 1),
       cuts=cuts)
def test_a_bad_header_field_affects_only_its_frame(others, victim, at, field, value, cuts):
    """Any value in a resynchronisable field: the other frames decode unchanged, the victim is
    one frame or one non-fatal error."""
    victim = victim._replace(stream_id="victim")
    raw = bytearray(encode_frame(victim))
    names = ["magic", "version", "flags", "kind", "reserved", "id_len", "seq", "rate", "length"]
    values = list(HEADER.unpack_from(raw))
    width = {"flags": 8, "kind": 8, "reserved": 8, "seq": 64, "rate": 32}[field]
    values[names.index(field)] = value % (1 << width)
    raw[: HEADER.size] = HEADER.pack(*values)
    at = min(at, len(others))
    data = b"".join(map(encode_frame, others[:at])) + bytes(raw) + b"".join(map(encode_frame, others[at:]))
    out = _feed(data, cuts)
    assert [o for o in out if isinstance(o, Frame) and o.stream_id != "victim"] == others
    about_victim = [o for o in out if o.stream_id == "victim"]
    assert len(about_victim) == 1
    assert isinstance(about_victim[0], Frame) or not about_victim[0].fatal


@FUZZ
@given(others=st.lists(frames, min_size=1, max_size=6), victim=frames, at=st.integers(0, 6),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4), cuts=cuts)
def test_a_damaged_frame_never_changes_other_streams_frames(others, victim, at, flips, cuts):
    """Bytes flipped in one frame (header included): frames before it decode unchanged,
    and every frame of another stream that decodes at all is one that was sent, in order."""
    victim = victim._replace(stream_id="victim")
    raw = bytearray(encode_frame(victim))
    # Any byte but the stream id's own (a changed id is a different stream, not damage).
    positions = [i for i in range(len(raw)) if not HEADER.size <= i < HEADER.size + len("victim")]
    for position, mask in flips:
        raw[positions[position % len(positions)]] ^= mask
    at = min(at, len(others))
    data = b"".join(map(encode_frame, others[:at])) + bytes(raw) + b"".join(map(encode_frame, others[at:]))
    out = _feed(data, cuts)
    decoded = [o for o in out if isinstance(o, Frame) and o.stream_id in {"a", "b", "cam-1", "ü"}]
    assert decoded[:at] == others[:at]
    rest = iter(others[at:])
    assert all(any(frame == sent for sent in rest) for frame in decoded[at:])
