"""Per-stream live inference in Beam: ``LiveStreams`` (``LiveChunk`` → ``LiveEvent``).

The DoFn here only moves things in and out of Beam state and calls two pure objects:

* ``operators.streaming.order.StreamBook``: ordering by sequence number, duplicates, gaps,
  end of stream, idle expiry and the reorder-buffer budgets (``live_pending_chunks`` per
  stream, ``live_pending_bytes`` per shard);
* the engine, any ``operators.streaming.engine.StreamEngine`` (``LiveASR``, ``LiveVideo``),
  built once per worker in ``setup`` from a picklable factory.

``LiveStreamFn`` is keyed by *shard* (``transforms.live.shard.ShardChunks``), so one call
steps every stream of the shard with a chunk ready in batched engine steps: the n-th ready
chunk of each stream goes into the n-th batch, so per-stream order is kept and every event
cites the chunk that produced it (``seq``, ``received_at``: latency). Rows of a batch are
independent, so each stream's results are exactly those of the stream processed alone.

State: one bag per shard holding an append-only log (``transforms.live.state_log``): a bundle
appends the book and the states of the streams it stepped or ended, not the whole shard, and
decodes only the states it uses (``NumpyTreeCoder``, no pickle). A processing-time timer is
set for the first stream to go idle; timers may fire early
(the in-process runner fires them after bundles of an unbounded pipeline), so ``expire``
asks the book, which checks each stream's last-seen time; when the shard's book is still the
one this worker committed and its first idle time is ahead, ``expire`` only sets the timer
again (no decoding, nothing written). It is only set while a shard has open streams, so a
bounded run ends with no timer pending. A worker takes back the stream states it wrote last
instead of decoding them (``WrittenStates``).

A payload over ``live_frame_bytes`` (possible from sources other than ``ReadLiveFrames``,
whose decoder already skips them) and a payload the engine cannot decode are error events for
that chunk only; its sequence number is consumed and the stream goes on.
"""

import collections
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from operators.streaming.engine import StreamEngine
from operators.streaming.order import (
    Duplicate,
    Ended,
    FinalisedStreamError,
    Gap,
    Ready,
    Rejected,
    StreamBook,
)
from operators.tokenizers.base import MediaError
from schemas.budgets import DEFAULT_BUDGETS, BudgetExceeded, Budgets
from schemas.live import LiveChunk, LiveEvent
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.live.shard import ShardChunks
from transforms.live.state_log import RECORD_CODER, ShardStateLog, WrittenStates

STAGE = "LiveStreams"


class LiveStreamFn(beam.DoFn):
    """Keyed by shard: orders each stream's chunks (``StreamBook``) and steps the engine in batches.

    Args:
        engine_factory: Picklable zero-argument callable returning a ``StreamEngine``.
        model: Model name written into every event.
        idle_seconds: A stream with no chunk for this long is flushed and finalised.
        budgets: ``live_frame_bytes``, ``live_pending_chunks`` and ``live_pending_bytes`` apply here.
        max_batch: Most streams in one engine step.
        tombstone_seconds: How long a finalised stream id is remembered (its late chunks
            become error events instead of starting a new stream).
        threads: Intra-op threads of the worker's PyTorch (``None``: leave as is). One thread
            per worker process is fastest when cores are shared.
        clock: Wall-clock source (``time.time``); injectable for tests.
    """

    LOG = BagStateSpec("log", RECORD_CODER)
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, engine_factory: Callable[[], StreamEngine], model: str, idle_seconds: float = 30.0,
                 budgets: Budgets = DEFAULT_BUDGETS, max_batch: int = 64, tombstone_seconds: float = 300.0,
                 threads: Optional[int] = None, clock: Callable[[], float] = time.time):
        self._factory = engine_factory
        self._model = model
        self._idle = idle_seconds
        self._budgets = budgets
        self._max_batch = max_batch
        self._tombstone = tombstone_seconds
        self._threads = threads
        self._clock = clock
        self.engine: Optional[StreamEngine] = None
        self._written = WrittenStates()
        self._due: Dict[Any, Tuple[bytes, float]] = {}  # shard → (its book as committed, next expiry)

    def setup(self) -> None:
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
        self.engine = self._factory()
        if not isinstance(self.engine, StreamEngine):
            raise TypeError(f"the engine factory returned a {type(self.engine).__name__}, not a StreamEngine")

    def process(
        self,
        element: Tuple[int, List[LiveChunk]],
        log=beam.DoFn.StateParam(LOG),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator:
        shard, chunks = element
        now = self._clock()
        states = ShardStateLog(log.read(), self._written)
        streams = self._book(states.book())
        out: List[Any] = []
        actions: List[Any] = []
        limit = self._budgets.live_frame_bytes
        for chunk in chunks:
            count(STAGE, "chunks")
            item = {"kind": int(chunk.kind), "rate": int(chunk.sample_rate), "payload": chunk.payload, "bad": False}
            if len(chunk.payload) > limit:
                count(STAGE, "bad_chunks")
                out.append(dead_letter(f"{chunk.stream_id}#{chunk.seq}", chunk.source, STAGE, BudgetExceeded(
                    "live_frame_bytes", limit, f"a chunk of {len(chunk.payload)} payload bytes")))
                item = {"kind": 0, "rate": 0, "payload": b"", "bad": True}
            actions += streams.push(chunk.stream_id, chunk.seq, chunk.eos, item, len(item["payload"]),
                                    chunk.received_at, chunk.source, now)
        self._apply(actions, states, out)
        self._save(shard, streams, states, log, expiry)
        yield from out

    @on_timer(EXPIRY)
    def expire(
        self,
        shard=beam.DoFn.KeyParam,
        log=beam.DoFn.StateParam(LOG),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator:
        states = ShardStateLog(log.read(), self._written)
        now = self._clock()
        due = self._due.get(shard)
        if due is not None and now < due[1] and states.has_book(due[0]):
            # Fired early (the in-process runner fires timers after every bundle): the book this
            # worker committed says no stream is idle yet, so nothing is read, decoded or written.
            expiry.set(Timestamp(due[1]))
            return
        streams = self._book(states.book())
        out: List[Any] = []
        self._apply(streams.expire(now), states, out)
        self._save(shard, streams, states, log, expiry)
        yield from out

    def _book(self, tree: Optional[Dict[str, Any]]) -> StreamBook:
        return StreamBook(self._budgets.live_pending_chunks, self._budgets.live_pending_bytes, self._idle,
                          self._tombstone, tree)

    def _event(self, sid: str, event: str, seq: int, received_at: float, source: str,
               fields: Dict[str, Any]) -> LiveEvent:
        return LiveEvent(sid, event, seq, {"model": self._model, **fields}, source, received_at, self._clock())

    def _engine_event(self, sid: str, seq: int, received_at: float, source: str, fields: Dict[str, Any]) -> LiveEvent:
        """An engine output as an event: named by its ``event`` field if it has one (an ASR
        utterance's ``final``), else by the engine's ``event_name``."""
        name = fields.get("event", self.engine.event_name)
        return self._event(sid, name, seq, received_at, source, {k: v for k, v in fields.items() if k != "event"})

    def _apply(self, actions: List[Any], states: ShardStateLog, out: List[Any]) -> None:
        """Carries out the book's actions: per stream in order, ready chunks batched across streams."""
        queues: Dict[str, Deque[Any]] = {}
        for action in actions:
            if isinstance(action, Duplicate):
                count(STAGE, "duplicates")
            elif isinstance(action, Rejected):
                if isinstance(action.error, FinalisedStreamError):
                    count(STAGE, "chunks_after_final")
                out.append(dead_letter(f"{action.stream_id}#{action.seq}", action.source, STAGE, action.error))
            else:
                queues.setdefault(action.stream_id, collections.deque()).append(action)
        while queues:
            batch: List[Tuple[str, Ready, Any]] = []
            ends: List[Ended] = []
            for sid in list(queues):
                ready = self._next_input(sid, queues[sid], states, out, ends)
                if ready is not None:
                    batch.append(ready)
                if not queues[sid]:
                    del queues[sid]
            for start in range(0, len(batch), self._max_batch):
                self._step(batch[start : start + self._max_batch], states, out)
            for start in range(0, len(ends), self._max_batch):
                self._finalize(ends[start : start + self._max_batch], states, out)

    def _finalize(self, ends: List[Ended], states: ShardStateLog, out: List[Any]) -> None:
        """Ends streams (one batched flush): their last engine outputs, then their ``final`` events."""
        engine = self.engine
        finals = [states.pop(end.stream_id, None) for end in ends]
        outputs = engine.finalize_many([engine.init_state() if s is None else s for s in finals])
        for action, fields_list in zip(ends, outputs):
            sid = action.stream_id
            for fields in fields_list:
                out.append(self._engine_event(sid, action.seq, action.received_at, action.source, fields))
            out.append(self._event(sid, "final", action.seq, action.received_at, action.source,
                                   {"reason": action.reason}))
            count(STAGE, "finalised_streams")
            if action.reason == "idle":
                count(STAGE, "expired_streams")

    def _next_input(self, sid: str, queue: Deque[Any], states: ShardStateLog, out: List[Any],
                    ends: List[Ended]) -> Optional[Tuple[str, Ready, Any]]:
        """Handles a stream's actions up to its next decodable chunk, which it returns, or up to
        its end, which it adds to ``ends`` (streams ending in the same round are flushed together)."""
        engine = self.engine
        while queue:
            action = queue.popleft()
            if isinstance(action, Gap):
                count(STAGE, "gaps")
                out.append(self._event(sid, "gap", action.missing_to, 0.0, action.source, {
                    "missing_from": action.missing_from, "missing_to": action.missing_to, "reason": action.reason}))
            elif isinstance(action, Ended):
                ends.append(action)
                return None
            else:
                if sid not in states:
                    states[sid] = engine.init_state()
                    count(STAGE, "streams")
                item = action.item
                if item["bad"]:
                    continue
                try:
                    decoded = engine.decode(item["kind"], item["rate"], item["payload"])
                except MediaError as err:
                    count(STAGE, "bad_chunks")
                    out.append(dead_letter(f"{sid}#{action.seq}", action.source, STAGE, err))
                    continue
                count(STAGE, "pushed_chunks")
                return sid, action, decoded
        return None

    def _step(self, batch: List[Tuple[str, Ready, Any]], states: ShardStateLog, out: List[Any]) -> None:
        engine = self.engine
        outputs, new_states = engine.step([x for _, _, x in batch], [states[sid] for sid, _, _ in batch])
        count(STAGE, "batched_steps")
        count(STAGE, "stream_steps", len(batch))
        for (sid, ready, _), fields_list, state in zip(batch, outputs, new_states):
            states[sid] = state
            for fields in fields_list:
                out.append(self._engine_event(sid, ready.seq, ready.received_at, ready.source, fields))

    def _save(self, shard: Any, streams: StreamBook, states: ShardStateLog, log, expiry) -> None:
        tree = streams.to_tree()
        rewrite, records = states.commit(tree if tree["streams"] or tree["closed"] else None)
        if rewrite:
            log.clear()
        for record in records:
            log.add(record)
        when = streams.next_expiry()
        self._due.pop(shard, None)
        if when is not None:
            expiry.set(Timestamp(when))
            self._due[shard] = (states.coded_book, when)


class LiveStreams(beam.PTransform):
    """``LiveChunk`` → ``{"events": LiveEvent, DEAD_LETTER_TAG: DeadLetter}``.

    Args:
        engine_factory: Picklable callable returning a ``StreamEngine``.
        model: Model name for the events.
        num_shards: Stream shards (parallelism on a distributed runner).
        **options: ``LiveStreamFn`` options (``idle_seconds``, ``budgets``, ``max_batch`` ...).
    """

    def __init__(self, engine_factory: Callable[[], StreamEngine], model: str, num_shards: int = 1, **options):
        super().__init__()
        self._shard = ShardChunks(num_shards)
        self._fn = LiveStreamFn(engine_factory, model, **options)

    def expand(self, chunks):
        return (
            chunks
            | "ShardChunks" >> beam.ParDo(self._shard).with_output_types(Tuple[int, Any])
            | "StepStreams" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="events")
        )
