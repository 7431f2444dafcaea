"""Live inference: the binary framing clients send and the rows/events the pipelines carry.

Wire format, version 1 (all integers big-endian). One frame is a 26-byte header, the stream
id (UTF-8) and the payload::

    magic   4s  b"MBLV"
    version B   1
    flags   B   bit 0: end of stream (the frame may carry a last payload or none)
    kind    B   PayloadKind of the payload
    _       B   reserved, 0
    id_len  H   bytes of the stream id (1..MAX_STREAM_ID_BYTES)
    seq     Q   sequence number of the frame in its stream, from 0, no gaps
    rate    I   sample rate in Hz for audio payloads, 0 otherwise
    length  I   payload bytes

Every field is checked at this edge, before a frame goes further: a bad magic, version or
stream id length cannot be resynchronised (the connection is closed after one error event);
any other bad field (unknown flag bits or payload kind, reserved byte not 0, sequence number
above ``MAX_SEQ``, a sample rate outside ``1..MAX_SAMPLE_RATE`` for audio or not 0 otherwise,
a payload on a ``NONE`` frame, a stream id that is not UTF-8) or an oversized payload skips
that frame (its length is known), is reported for that stream, and the connection stays
usable. The same byte stream stored in a file is a *recording* (``.mbl``), replayed by
the tail source.
"""

import json
import struct
from enum import IntEnum
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

MAGIC = b"MBLV"
VERSION = 1
FLAG_EOS = 1
HEADER = struct.Struct(">4sBBBBHQII")
MAX_STREAM_ID_BYTES = 256
MAX_SEQ = (1 << 63) - 2  # downstream, seq and the next seq expected (seq + 1) are signed 64-bit
MAX_SAMPLE_RATE = 384_000
RECORDING_SUFFIX = ".mbl"


class PayloadKind(IntEnum):
    """What a frame's payload holds."""

    NONE = 0  # no payload (a bare end-of-stream frame)
    PCM_S16LE = 1  # mono 16-bit little-endian PCM
    PCM_F32LE = 2  # mono float32 little-endian PCM in [-1, 1]
    IMAGE = 3  # one encoded video frame (JPEG or PNG)


_KINDS = frozenset(int(k) for k in PayloadKind)


class FramingError(ValueError):
    """Bytes that are not a valid frame.

    Attributes:
        stream_id: The frame's stream id when the header could be read, else ``""``.
        seq: The frame's sequence number, or -1.
        fatal: True when the byte stream cannot be resynchronised (bad magic/version).
    """

    def __init__(self, message: str, stream_id: str = "", seq: int = -1, fatal: bool = False):
        super().__init__(message)
        self.stream_id = stream_id
        self.seq = seq
        self.fatal = fatal


class Frame(NamedTuple):
    """One decoded wire frame."""

    stream_id: str
    seq: int
    eos: bool
    kind: int
    sample_rate: int
    payload: bytes


def encode_frame(frame: Frame) -> bytes:
    """Serialises a frame (version 1)."""
    sid = frame.stream_id.encode("utf-8")
    if not 0 < len(sid) <= MAX_STREAM_ID_BYTES:
        raise ValueError(f"stream id must be 1..{MAX_STREAM_ID_BYTES} UTF-8 bytes, got {len(sid)}")
    if not 0 <= frame.seq <= MAX_SEQ:
        raise ValueError(f"sequence number {frame.seq} is outside 0..{MAX_SEQ}")
    flags = FLAG_EOS if frame.eos else 0
    header = HEADER.pack(
        MAGIC, VERSION, flags, int(frame.kind), 0, len(sid), frame.seq, frame.sample_rate, len(frame.payload)
    )
    return header + sid + frame.payload


class FrameDecoder:
    """Incremental decoder of a byte stream of frames (one per connection or recording).

    ``feed(data)`` returns the complete frames and the errors found so far, in order. After a
    fatal error the decoder refuses further input.

    Args:
        max_payload_bytes: Larger payloads are skipped and reported (``FramingError``).
    """

    def __init__(self, max_payload_bytes: int):
        self.max_payload_bytes = max_payload_bytes
        self._buffer = bytearray()
        self._skip = 0
        self.broken = False

    def feed(self, data: bytes) -> List[Any]:
        """Appends bytes; returns a list of ``Frame`` and ``FramingError`` items, in order."""
        if self.broken:
            return []
        self._buffer += data
        out: List[Any] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return out
            if len(self._buffer) < HEADER.size:
                return out
            magic, version, flags, kind, reserved, id_len, seq, rate, length = HEADER.unpack_from(self._buffer)
            if magic != MAGIC or version != VERSION:
                self.broken = True
                self._buffer.clear()
                what = f"version {version}" if magic == MAGIC else f"magic {bytes(magic)!r}"
                out.append(FramingError(f"malformed frame header ({what}; expected {MAGIC!r} v{VERSION})",
                                        fatal=True))
                return out
            if not 0 < id_len <= MAX_STREAM_ID_BYTES:
                self.broken = True
                self._buffer.clear()
                out.append(FramingError(f"malformed frame header (stream id length {id_len})", fatal=True))
                return out
            if len(self._buffer) < HEADER.size + id_len:
                return out
            raw_id = bytes(self._buffer[HEADER.size : HEADER.size + id_len])
            stream_id = raw_id.decode("utf-8", errors="replace")
            start = HEADER.size + id_len
            problem = _field_problem(raw_id, flags, kind, reserved, seq, rate, length, self.max_payload_bytes)
            if problem is not None:
                del self._buffer[:start]
                self._skip = length
                out.append(FramingError(problem, stream_id, seq if seq <= MAX_SEQ else -1))
                continue
            if len(self._buffer) < start + length:
                return out
            payload = bytes(self._buffer[start : start + length])
            del self._buffer[: start + length]
            out.append(Frame(stream_id, seq, bool(flags & FLAG_EOS), kind, rate, payload))


def _field_problem(raw_id: bytes, flags: int, kind: int, reserved: int, seq: int, rate: int, length: int,
                   max_payload_bytes: int) -> Optional[str]:
    """What is wrong with a frame whose header could be read (``None``: nothing)."""
    if length > max_payload_bytes:
        return (f"budget live_frame_bytes={max_payload_bytes} exceeded: oversized frame of {length} payload "
                "bytes (send smaller chunks or raise --budget live_frame_bytes=N)")
    if flags & ~FLAG_EOS:
        return f"bad frame: unknown flag bits {flags:#04x} (only bit 0, end of stream, is defined)"
    if reserved:
        return f"bad frame: reserved byte is {reserved}, must be 0"
    if kind not in _KINDS:
        known = ", ".join(f"{k.value}={k.name}" for k in PayloadKind)
        return f"bad frame: unknown payload kind {kind} (known: {known})"
    if seq > MAX_SEQ:
        return f"bad frame: sequence number {seq} is above {MAX_SEQ}"
    if kind in (PayloadKind.PCM_S16LE, PayloadKind.PCM_F32LE):
        if not 0 < rate <= MAX_SAMPLE_RATE:
            return f"bad frame: audio sample rate {rate} Hz is outside 1..{MAX_SAMPLE_RATE}"
    elif rate:
        return f"bad frame: sample rate {rate} Hz on a {PayloadKind(kind).name} payload (must be 0)"
    if kind == PayloadKind.NONE and length:
        return f"bad frame: {length} payload bytes on a NONE (no payload) frame"
    try:
        raw_id.decode("utf-8")
    except UnicodeDecodeError:
        return "bad frame: the stream id is not UTF-8"
    return None


def iter_recording(data: bytes, max_payload_bytes: int) -> Iterator[Any]:
    """Frames and errors of a whole recording, in order (for tests and replay)."""
    decoder = FrameDecoder(max_payload_bytes)
    yield from decoder.feed(data)


class LiveChunk(NamedTuple):
    """A frame as it crosses Beam stages, with where and when it arrived.

    Attributes:
        stream_id: Client-chosen stream id.
        seq: Sequence number in the stream.
        eos: End of stream.
        kind: ``PayloadKind``.
        sample_rate: Hz for audio, else 0.
        payload: Raw payload bytes.
        received_at: Wall-clock seconds (``time.time()``) when the frame's last byte arrived.
        source: Where it came from: ``tcp://HOST:PORT/CONN`` or ``file://PATH``.
    """

    stream_id: str
    seq: int
    eos: bool
    kind: int
    sample_rate: int
    payload: bytes
    received_at: float
    source: str


class PollEnd(NamedTuple):
    """Punctuation after the chunks that one poll of the live source delivered together.

    The source keeps a bundle open across many polls (committing state and firing timers
    costs a bundle boundary); a consumer that batches what arrived together
    (``transforms.live.shard.ShardChunks``) flushes at each ``PollEnd`` instead of waiting for
    the bundle to finish. Other consumers of the source's chunks skip it.

    Attributes:
        at: Wall-clock seconds when the poll ended.
    """

    at: float


class LiveEvent(NamedTuple):
    """One output event, written as a JSON line.

    Attributes:
        stream_id: The stream.
        event: ``partial`` / ``final`` (transcripts), ``prediction`` (video), ``gap``, ``error``.
        seq: Sequence number of the newest frame the event covers (-1 if none).
        fields: Event-specific JSON-able fields (``text``, ``tokens``, ``audio_end_s`` …).
        source: The stream's connection or recording (events can be routed back on it).
        received_at: Arrival time of frame ``seq`` (wall-clock seconds), 0 if unknown.
        emitted_at: Wall-clock seconds when the event was made.
    """

    stream_id: str
    event: str
    seq: int
    fields: Dict[str, Any]
    source: str
    received_at: float
    emitted_at: float

    def to_json(self) -> str:
        """The JSON line (no newline)."""
        body = {
            "stream_id": self.stream_id,
            "event": self.event,
            "seq": self.seq,
            "source": self.source,
            "received_at": round(self.received_at, 6),
            "emitted_at": round(self.emitted_at, 6),
        }
        body.update(self.fields)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
