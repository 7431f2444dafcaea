"""Per-stream live inference in Beam: ordering, batching, state in Beam state, expiry.

``LiveStreams`` takes ``LiveChunk`` rows (from ``transforms.live.source`` or a ``TestStream``)
and returns ``LiveEvent`` rows plus dead letters on ``DEAD_LETTER_TAG``.

Design (why it is keyed by *shard*, not by stream):

* A Beam stateful DoFn sees one element of one key at a time, so a DoFn keyed by stream can
  only step one stream per call: no batching across streams. Batching in ``finish_bundle``
  is not possible either, because state cannot be read or written there.
* So ``ShardChunks`` first collects the chunks of a bundle (one poll of the source: the
  frames that arrived together) and emits one ``(shard, [chunks])`` element per shard, where
  ``shard = crc32(stream_id) % num_shards``. ``LiveStreamFn`` is keyed by shard; its state
  holds a slot per stream of that shard (operator state + reorder buffer + last-seen time),
  and one call runs *one batched operator step* for every stream of the shard with a chunk
  ready. ``num_shards`` is the parallelism on a distributed runner; each stream still lives in
  exactly one shard, so per-stream order, state and results are exactly those of a stream
  processed alone (the operator's batch rows are independent).
* Per stream, chunks are reordered by sequence number, duplicates are dropped (counted),
  a gap that the reorder buffer cannot bridge (``max_pending`` chunks waiting) is reported
  as a ``gap`` event and skipped, the end-of-stream chunk finalises the stream (``final``
  event, slot removed, stream id remembered for ``tombstone_seconds``), and a stream idle
  for ``idle_seconds`` is flushed and finalised (``reason: idle``) by a processing-time
  timer. Timers may fire early (the in-process runner fires them after bundles of an
  unbounded pipeline), so ``on_timer`` checks each stream's last-seen time itself. The timer
  is only set while a shard has open streams (finalised ids are purged lazily), so a bounded
  run whose source drains for longer than ``idle_seconds`` ends with no timer pending.
* State goes through ``NumpyTreeCoder``: a deterministic binary coding of dicts, lists and
  numpy arrays (no pickle, no torch), so the same bytes restore on any worker.

The operator is an engine with ``init_state / decode / push / ready / step_batch /
finished / ended / position / consumed`` and an ``event_name`` (``operators.asr.stream_engine.LiveASR``, ``operators.video.stream_engine.LiveVideo``), built once
per worker in ``setup`` from a picklable factory.
"""

import struct
import time
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import Coder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from operators.tokenizers.base import MediaError
from schemas.common import DeadLetter
from schemas.live import LiveChunk, LiveEvent
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter

STAGE = "LiveStreams"


class FinalisedStreamError(ValueError):
    """A chunk for a stream id that was already finalised (or expired)."""


class AfterEndOfStreamError(ValueError):
    """A chunk whose sequence number follows the stream's end-of-stream chunk."""


class OversizedChunkError(ValueError):
    """A payload larger than the configured limit."""


class NumpyTreeCoder(Coder):
    """Deterministic binary coder for trees of dict / list / tuple / scalars / numpy arrays.

    Used for the per-stream operator state in Beam state. Arrays are stored as dtype string,
    shape and raw little-endian bytes (one copy each way); dict keys are ``str`` or ``int``;
    no pickle.
    """

    def encode(self, value: Any) -> bytes:
        parts: List[bytes] = []
        _encode_tree(value, parts)
        return b"".join(parts)

    def decode(self, encoded: bytes) -> Any:
        value, _ = _decode_tree(memoryview(encoded), 0)
        return value

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


def _encode_str(text: str, parts: List[bytes]) -> None:
    raw = text.encode("utf-8")
    parts.append(_U32.pack(len(raw)))
    parts.append(raw)


def _encode_tree(value: Any, parts: List[bytes]) -> None:
    if value is None:
        parts.append(b"N")
    elif isinstance(value, (bool, np.bool_)) and not isinstance(value, np.ndarray):
        parts.append(b"T" if value else b"F")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, np.ndarray):
        parts.append(b"I" + _I64.pack(int(value)))
    elif isinstance(value, (float, np.floating)) and not isinstance(value, np.ndarray):
        parts.append(b"D" + _F64.pack(float(value)))
    elif isinstance(value, str):
        parts.append(b"S")
        _encode_str(value, parts)
    elif isinstance(value, (bytes, bytearray)):
        parts.append(b"B" + _U32.pack(len(value)))
        parts.append(bytes(value))
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays cannot be coded")
        array = value.astype(value.dtype.newbyteorder("<")) if value.dtype.byteorder == ">" else value
        parts.append(b"A")
        _encode_str(array.dtype.str, parts)
        parts.append(_U32.pack(array.ndim) + b"".join(_I64.pack(d) for d in array.shape))
        raw = array.tobytes(order="C")
        parts.append(_I64.pack(len(raw)))
        parts.append(raw)
    elif isinstance(value, dict):
        parts.append(b"M" + _U32.pack(len(value)))
        for key in sorted(value, key=_key_order):
            _encode_tree(key, parts)
            _encode_tree(value[key], parts)
    elif isinstance(value, (list, tuple)):
        parts.append((b"L" if isinstance(value, list) else b"U") + _U32.pack(len(value)))
        for item in value:
            _encode_tree(item, parts)
    else:
        raise TypeError(f"NumpyTreeCoder cannot code {type(value).__name__}")


def _key_order(key: Any) -> Tuple[bool, Any]:
    return isinstance(key, str), key


def _decode_str(buf: memoryview, pos: int) -> Tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    return bytes(buf[pos + 4 : pos + 4 + n]).decode("utf-8"), pos + 4 + n


def _decode_tree(buf: memoryview, pos: int) -> Tuple[Any, int]:
    tag = bytes(buf[pos : pos + 1])
    pos += 1
    if tag == b"N":
        return None, pos
    if tag in (b"T", b"F"):
        return tag == b"T", pos
    if tag == b"I":
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if tag == b"D":
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if tag == b"S":
        return _decode_str(buf, pos)
    if tag == b"B":
        (n,) = _U32.unpack_from(buf, pos)
        return bytes(buf[pos + 4 : pos + 4 + n]), pos + 4 + n
    if tag == b"A":
        dtype, pos = _decode_str(buf, pos)
        (ndim,) = _U32.unpack_from(buf, pos)
        pos += 4
        shape = tuple(_I64.unpack_from(buf, pos + 8 * i)[0] for i in range(ndim))
        pos += 8 * ndim
        (n,) = _I64.unpack_from(buf, pos)
        pos += 8
        array = np.frombuffer(buf[pos : pos + n], dtype=np.dtype(dtype)).reshape(shape).copy()
        return array, pos + n
    if tag == b"M":
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        result = {}
        for _ in range(n):
            key, pos = _decode_tree(buf, pos)
            result[key], pos = _decode_tree(buf, pos)
        return result, pos
    if tag in (b"L", b"U"):
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = _decode_tree(buf, pos)
            items.append(item)
        return (items if tag == b"L" else tuple(items)), pos
    raise ValueError(f"corrupt NumpyTreeCoder data: tag {tag!r} at {pos - 1}")


def shard_of(stream_id: str, num_shards: int) -> int:
    """Stable shard of a stream id (the same on every worker and run)."""
    return zlib.crc32(stream_id.encode("utf-8")) % num_shards


class ShardChunks(beam.DoFn):
    """Groups a bundle's chunks by shard: ``LiveChunk`` → ``(shard, [LiveChunk, ...])``.

    Emits in ``finish_bundle`` (and early once ``max_chunks`` are buffered), so the chunks
    that arrived together reach ``LiveStreamFn`` as one element per shard.
    """

    def __init__(self, num_shards: int, max_chunks: int = 1024):
        self._num_shards = num_shards
        self._max_chunks = max_chunks
        self._buffer: Dict[Tuple[Any, int], List[LiveChunk]] = {}
        self._stamp: Dict[Any, Any] = {}
        self._buffered = 0

    def start_bundle(self) -> None:
        self._buffer, self._stamp, self._buffered = {}, {}, 0

    def process(self, chunk: LiveChunk, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._buffer.setdefault((window, shard_of(chunk.stream_id, self._num_shards)), []).append(chunk)
        self._stamp[window] = max(self._stamp.get(window, timestamp), timestamp)
        self._buffered += 1
        if self._buffered >= self._max_chunks:
            for (win, shard), chunks in self._take():
                yield (shard, chunks)

    def _take(self) -> List[Tuple[Tuple[Any, int], List[LiveChunk]]]:
        items = sorted(self._buffer.items(), key=lambda kv: kv[0][1])
        self._buffer, self._buffered = {}, 0
        return items

    def finish_bundle(self) -> Iterator[WindowedValue]:
        stamps = self._stamp
        for (window, shard), chunks in self._take():
            yield WindowedValue((shard, chunks), stamps[window], [window])
        self._stamp = {}


class LiveStreamFn(beam.DoFn):
    """Keyed by shard: reorders each stream's chunks and steps the shard's streams in batches.

    Args:
        engine_factory: Picklable zero-argument callable returning the engine.
        model: Model name written into every event.
        idle_seconds: A stream with no chunk for this long is flushed and finalised.
        max_pending: Out-of-order chunks buffered per stream before a gap is skipped.
        max_payload_bytes: Larger payloads become dead letters.
        max_batch: Most streams in one operator step.
        tombstone_seconds: How long a finalised stream id is remembered (its late chunks
            become dead letters instead of starting a new stream).
        threads: Intra-op threads of the worker's PyTorch (``None``: leave as is). One thread
            per worker process is fastest when cores are shared.
        clock: Wall-clock source (``time.time``); injectable for tests.
    """

    STREAMS = ReadModifyWriteStateSpec("streams", NumpyTreeCoder())
    CLOSED = ReadModifyWriteStateSpec("closed", NumpyTreeCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, engine_factory: Callable[[], Any], model: str, idle_seconds: float = 30.0,
                 max_pending: int = 64, max_payload_bytes: int = 1 << 20, max_batch: int = 64,
                 tombstone_seconds: float = 300.0, threads: Optional[int] = None,
                 clock: Callable[[], float] = time.time):
        self._factory = engine_factory
        self._model = model
        self._idle = idle_seconds
        self._max_pending = max_pending
        self._max_payload = max_payload_bytes
        self._max_batch = max_batch
        self._tombstone = tombstone_seconds
        self._threads = threads
        self._clock = clock
        self.engine = None

    def setup(self) -> None:
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
        self.engine = self._factory()

    def process(
        self,
        element: Tuple[int, List[LiveChunk]],
        streams=beam.DoFn.StateParam(STREAMS),
        closed=beam.DoFn.StateParam(CLOSED),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator:
        _, chunks = element
        now = self._clock()
        slots: Dict[str, Dict[str, Any]] = streams.read() or {}
        tombs: Dict[str, float] = closed.read() or {}
        out: List[Any] = []
        touched: List[str] = []
        for chunk in chunks:
            self._accept(chunk, slots, tombs, now, out, touched)
        for sid in dict.fromkeys(touched):
            self._advance(sid, slots[sid], out, force=False)
        self._run(slots, tombs, now, out)
        self._save(slots, tombs, now, streams, closed, expiry)
        yield from out

    @on_timer(EXPIRY)
    def expire(
        self,
        streams=beam.DoFn.StateParam(STREAMS),
        closed=beam.DoFn.StateParam(CLOSED),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator:
        now = self._clock()
        slots = streams.read() or {}
        tombs = closed.read() or {}
        out: List[Any] = []
        for sid, slot in slots.items():
            # Timers may fire early: a stream expires only when idle for the full timeout.
            # Otherwise it was seen after the timer was set, and ``_save`` sets a later one.
            if now - slot["last_seen"] >= self._idle and not slot["expired"]:
                slot["expired"] = "idle"
                count(STAGE, "expired_streams")
                self._advance(sid, slot, out, force=True)
                if not self.engine.ended(slot["op"]):
                    slot["op"] = self.engine.push(slot["op"], self.engine.decode(0, 0, b""), True)
        self._run(slots, tombs, now, out)
        self._save(slots, tombs, now, streams, closed, expiry)
        yield from out

    def _event(self, sid: str, slot: Dict[str, Any], event: str, fields: Dict[str, Any],
               seq: Optional[int] = None) -> LiveEvent:
        return LiveEvent(sid, event, slot["last_seq"] if seq is None else seq, {"model": self._model, **fields},
                         slot["source"], slot["last_received"], self._clock())

    def _accept(self, chunk: LiveChunk, slots, tombs, now: float, out: List[Any], touched: List[str]) -> None:
        sid, key = chunk.stream_id, f"{chunk.stream_id}#{chunk.seq}"
        count(STAGE, "chunks")
        if sid in tombs:
            count(STAGE, "chunks_after_final")
            out.append(dead_letter(key, chunk.source, STAGE, FinalisedStreamError(
                f"stream {sid!r} was already finalised; chunk {chunk.seq} dropped (use a new stream id)")))
            return
        slot = slots.get(sid)
        if slot is None:
            slot = slots[sid] = {
                "op": self.engine.init_state(), "next_seq": 0, "pending": {}, "eos_seq": -1,
                "last_seen": now, "last_seq": -1, "last_received": 0.0, "source": chunk.source,
                "expired": "",
                "marks": [],  # [position, seq, received_at] per pushed chunk not yet stepped
            }
            count(STAGE, "streams")
        slot["last_seen"] = now
        if chunk.seq < slot["next_seq"] or chunk.seq in slot["pending"]:
            count(STAGE, "duplicates")
            return
        if 0 <= slot["eos_seq"] < chunk.seq:
            out.append(dead_letter(key, chunk.source, STAGE, AfterEndOfStreamError(
                f"chunk {chunk.seq} follows the end-of-stream chunk {slot['eos_seq']}")))
            return
        bad: Optional[BaseException] = None
        decoded = None
        if len(chunk.payload) > self._max_payload:
            bad = OversizedChunkError(f"{len(chunk.payload)} payload bytes > limit {self._max_payload}")
        else:
            try:
                decoded = self.engine.decode(chunk.kind, chunk.sample_rate, chunk.payload)
            except MediaError as err:
                bad = err
        if bad is not None:
            # The sequence number is consumed (as an empty chunk) so the stream goes on.
            count(STAGE, "bad_chunks")
            out.append(dead_letter(key, chunk.source, STAGE, bad))
            decoded = self.engine.decode(0, 0, b"")
        if chunk.eos:
            slot["eos_seq"] = chunk.seq
        slot["pending"][chunk.seq] = {"input": decoded, "eos": chunk.eos, "received_at": chunk.received_at,
                                      "bad": bad is not None}
        touched.append(sid)

    def _advance(self, sid: str, slot: Dict[str, Any], out: List[Any], force: bool) -> None:
        """Pushes the chunks that are next in sequence; skips gaps when forced or overfull."""
        pending = slot["pending"]
        while pending:
            if slot["next_seq"] not in pending:
                if not force and len(pending) <= self._max_pending:
                    return
                first = min(pending)
                count(STAGE, "gaps")
                out.append(self._event(sid, slot, "gap", {"missing_from": slot["next_seq"], "missing_to": first - 1},
                                       seq=first - 1))
                slot["next_seq"] = first
            seq = slot["next_seq"]
            item = pending.pop(seq)
            slot["op"] = self.engine.push(slot["op"], item["input"], bool(item["eos"]))
            slot["next_seq"] = seq + 1
            slot["marks"].append([self.engine.position(slot["op"]), seq, item["received_at"]])
            if not item["bad"]:
                count(STAGE, "pushed_chunks")
            if item["eos"]:
                for late in sorted(s for s, waiting in pending.items() if not waiting["bad"]):
                    out.append(dead_letter(f"{sid}#{late}", slot["source"], STAGE, AfterEndOfStreamError(
                        f"chunk {late} follows the end-of-stream chunk {seq}")))
                pending.clear()

    def _run(self, slots, tombs, now: float, out: List[Any]) -> None:
        """Batched steps until no stream of the shard has a chunk ready; finalises ended streams."""
        engine = self.engine
        while True:
            ready = [sid for sid, slot in slots.items() if engine.ready(slot["op"])]
            if not ready:
                break
            for start in range(0, len(ready), self._max_batch):
                group = ready[start : start + self._max_batch]
                results = engine.step_batch([slots[sid]["op"] for sid in group])
                count(STAGE, "batched_steps")
                count(STAGE, "stream_steps", len(group))
                for sid, (delta, op) in zip(group, results):
                    slot = slots[sid]
                    slot["op"] = op
                    self._attribute(slot)
                    if delta is not None:
                        out.append(self._event(sid, slot, engine.event_name, dict(delta)))
                    if engine.finished(op):
                        out.append(self._event(sid, slot, "final", {"reason": slot["expired"] or "eos"}))
        for sid in [sid for sid, slot in slots.items() if engine.finished(slot["op"])]:
            del slots[sid]
            tombs[sid] = now
            count(STAGE, "finalised_streams")

    def _attribute(self, slot: Dict[str, Any]) -> None:
        """Makes the chunk whose arrival completed the step just taken the one its events cite
        (``seq`` and ``received_at``, for latency), and forgets the chunks stepped before it."""
        consumed = self.engine.consumed(slot["op"])
        marks = slot["marks"]
        while len(marks) > 1 and marks[0][0] < consumed:
            marks.pop(0)
        if marks:
            slot["last_seq"], slot["last_received"] = marks[0][1], marks[0][2]

    def _save(self, slots, tombs, now: float, streams, closed, expiry) -> None:
        for sid in [sid for sid, at in tombs.items() if now - at >= self._tombstone]:
            del tombs[sid]
        streams.write(slots) if slots else streams.clear()
        closed.write(tombs) if tombs else closed.clear()
        if slots:
            expiry.set(Timestamp(min(s["last_seen"] for s in slots.values()) + self._idle))


class LiveStreams(beam.PTransform):
    """``LiveChunk`` → ``{"events": LiveEvent, DEAD_LETTER_TAG: DeadLetter}``.

    Args:
        engine_factory: Picklable callable returning the engine (see module docstring).
        model: Model name for the events.
        num_shards: Stream shards (parallelism on a distributed runner).
        **options: ``LiveStreamFn`` options (``idle_seconds``, ``max_pending`` ...).
    """

    def __init__(self, engine_factory: Callable[[], Any], model: str, num_shards: int = 1, **options):
        super().__init__()
        self._shard = ShardChunks(num_shards)
        self._fn = LiveStreamFn(engine_factory, model, **options)

    def expand(self, chunks):
        return (
            chunks
            | "ShardChunks" >> beam.ParDo(self._shard).with_output_types(Tuple[int, Any])
            | "StepStreams" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="events")
        )


def error_event(dead: DeadLetter) -> LiveEvent:
    """A dead letter as an ``error`` event for the JSON sink (key ``<stream>#<seq>``)."""
    sid, _, seq = dead.key.rpartition("#")
    return LiveEvent(sid or dead.key, "error", int(seq) if seq.lstrip("-").isdigit() else -1,
                     {"stage": dead.stage, "error_type": dead.error_type, "reason": dead.message},
                     dead.source, 0.0, time.time())
