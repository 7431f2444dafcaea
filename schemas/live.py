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

A bad magic or version cannot be resynchronised: the connection is closed after one error
event. An oversized payload is skipped (its length is known), reported, and the connection
stays usable. The same byte stream stored in a file is a *recording* (``.mbl``), replayed by
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
RECORDING_SUFFIX = ".mbl"


class PayloadKind(IntEnum):
    """What a frame's payload holds."""

    NONE = 0  # no payload (a bare end-of-stream frame)
    PCM_S16LE = 1  # mono 16-bit little-endian PCM
    PCM_F32LE = 2  # mono float32 little-endian PCM in [-1, 1]
    IMAGE = 3  # one encoded video frame (JPEG or PNG)


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
            magic, version, flags, kind, _, id_len, seq, rate, length = HEADER.unpack_from(self._buffer)
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
                out.append(FramingError(f"malformed frame header (stream id length {id_len})", seq=seq, fatal=True))
                return out
            if len(self._buffer) < HEADER.size + id_len:
                return out
            raw_id = bytes(self._buffer[HEADER.size : HEADER.size + id_len])
            stream_id = raw_id.decode("utf-8", errors="replace")
            start = HEADER.size + id_len
            if length > self.max_payload_bytes:
                del self._buffer[:start]
                self._skip = length
                out.append(FramingError(
                    f"oversized frame: {length} payload bytes > limit {self.max_payload_bytes} "
                    "(send smaller chunks or raise --max-frame-bytes)", stream_id, seq))
                continue
            if len(self._buffer) < start + length:
                return out
            payload = bytes(self._buffer[start : start + length])
            del self._buffer[: start + length]
            out.append(Frame(stream_id, seq, bool(flags & FLAG_EOS), kind, rate, payload))


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


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """Parses one JSON event line (``None`` for blank lines)."""
    line = line.strip()
    return json.loads(line) if line else None
