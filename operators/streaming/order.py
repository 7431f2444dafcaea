"""Per-stream ordering of live chunks as a pure object: ``StreamBook``.

A book holds the streams of one stream shard: for each open stream the next sequence number
expected, the chunks that arrived early (its reorder buffer), its end-of-stream sequence
number and when it was last seen; and the ids of recently finished streams. It does no I/O
and reads no clock (``now`` is passed in), so it is tested on its own and the Beam DoFn only
stores it (``to_tree`` / ``from_tree``: dicts, ints, floats, strings and the caller's opaque
items) and acts on what it returns.

``push`` and ``expire`` return *actions* in the order they must be applied, per stream:

* ``Ready``: the next chunk of a stream, in sequence order (feed it to the engine);
* ``Gap``: sequence numbers given up (reorder buffer over its budget, the total buffered bytes
  over theirs, or the stream went idle); the stream goes on after them;
* ``Ended``: the stream is over (``reason`` ``eos`` or ``idle``); finalise its engine state;
* ``Rejected``: a chunk refused, with the error to report (stream already finished, chunk
  after the end of stream);
* ``Duplicate``: a chunk already seen (dropped; count it).

Limits: at most ``max_pending`` chunks wait per stream (beyond that the oldest gap is
skipped) and at most ``max_pending_bytes`` payload bytes wait in the whole book (beyond that
the stream holding the most bytes has its gaps skipped), so memory is bounded per stream and
in total.
"""

from typing import Any, Dict, List, NamedTuple, Optional

__all__ = ["StreamBook", "Ready", "Gap", "Ended", "Rejected", "Duplicate",
           "FinalisedStreamError", "AfterEndOfStreamError"]


class FinalisedStreamError(ValueError):
    """A chunk for a stream id that was already finalised (or expired)."""


class AfterEndOfStreamError(ValueError):
    """A chunk whose sequence number follows the stream's end-of-stream chunk."""


class Ready(NamedTuple):
    """The next chunk of a stream, in order."""

    stream_id: str
    seq: int
    eos: bool
    item: Any
    received_at: float
    source: str


class Gap(NamedTuple):
    """Sequence numbers ``missing_from..missing_to`` were given up; ``reason`` says why."""

    stream_id: str
    missing_from: int
    missing_to: int
    reason: str
    source: str


class Ended(NamedTuple):
    """A stream is over; ``seq`` / ``received_at`` are those of its last chunk (-1 / 0.0 if none)."""

    stream_id: str
    reason: str
    seq: int
    received_at: float
    source: str


class Rejected(NamedTuple):
    """A chunk refused, with the error to report."""

    stream_id: str
    seq: int
    source: str
    error: Exception


class Duplicate(NamedTuple):
    """A chunk whose sequence number was already seen (dropped)."""

    stream_id: str
    seq: int


class StreamBook:
    """Reorder buffers, ends and expiry of the streams of one shard (see the module docstring).

    Args:
        max_pending: Most chunks waiting per stream (budget ``live_pending_chunks``).
        max_pending_bytes: Most payload bytes waiting in the book (budget ``live_pending_bytes``).
        idle_seconds: A stream not seen for this long is flushed and ended by ``expire``.
        tombstone_seconds: How long a finished stream id is remembered (its late chunks are
            rejected, or dropped as duplicates, instead of starting a new stream).
        tree: A book's ``to_tree()`` to continue from (``None``: empty).
    """

    def __init__(self, max_pending: int, max_pending_bytes: int, idle_seconds: float,
                 tombstone_seconds: float = 300.0, tree: Optional[Dict[str, Any]] = None):
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.idle_seconds = idle_seconds
        self.tombstone_seconds = tombstone_seconds
        tree = tree or {}
        self.streams: Dict[str, Dict[str, Any]] = tree.get("streams", {})
        self.closed: Dict[str, List[Any]] = tree.get("closed", {})  # id -> [finished at, last seq]
        self.pending_bytes = sum(e["bytes"] for s in self.streams.values() for e in s["pending"].values())

    def to_tree(self) -> Dict[str, Any]:
        """The book as a tree for a state coder (``StreamBook(..., tree=...)`` restores it)."""
        return {"streams": self.streams, "closed": self.closed}

    def push(self, stream_id: str, seq: int, eos: bool, item: Any, nbytes: int, received_at: float,
             source: str, now: float) -> List[Any]:
        """Adds one chunk (``item`` is opaque, ``nbytes`` its payload size); returns the actions."""
        self._purge(now)
        if stream_id in self.closed:
            if seq <= self.closed[stream_id][1]:
                return [Duplicate(stream_id, seq)]
            return [Rejected(stream_id, seq, source, FinalisedStreamError(
                f"stream {stream_id!r} was already finalised; chunk {seq} dropped (use a new stream id)"))]
        slot = self.streams.get(stream_id)
        if slot is None:
            slot = self.streams[stream_id] = {"next": 0, "eos": -1, "seen": now, "source": source,
                                              "last_seq": -1, "last_at": 0.0, "pending": {}}
        slot["seen"] = now
        pending = slot["pending"]
        if seq < slot["next"] or seq in pending:
            return [Duplicate(stream_id, seq)]
        if 0 <= slot["eos"] < seq:
            return [Rejected(stream_id, seq, source, AfterEndOfStreamError(
                f"chunk {seq} follows the end-of-stream chunk {slot['eos']}"))]
        actions: List[Any] = []
        if eos:
            slot["eos"] = seq
            for late in sorted(s for s in pending if s > seq):
                self.pending_bytes -= pending.pop(late)["bytes"]
                actions.append(Rejected(stream_id, late, source, AfterEndOfStreamError(
                    f"chunk {late} follows the end-of-stream chunk {seq}")))
        pending[seq] = {"eos": bool(eos), "at": float(received_at), "bytes": int(nbytes), "item": item}
        self.pending_bytes += int(nbytes)
        actions += self._advance(stream_id, None, now)
        while self.pending_bytes > self.max_pending_bytes:
            hog = max(self.streams, key=lambda sid: sum(e["bytes"] for e in self.streams[sid]["pending"].values()))
            actions += self._advance(hog, f"live_pending_bytes={self.max_pending_bytes} reached", now)
        return actions

    def expire(self, now: float) -> List[Any]:
        """Flushes and ends every stream idle for ``idle_seconds``; returns the actions."""
        self._purge(now)
        actions: List[Any] = []
        for sid in [sid for sid, slot in self.streams.items() if now - slot["seen"] >= self.idle_seconds]:
            actions += self._advance(sid, "stream idle", now)
            if sid in self.streams:
                slot = self.streams[sid]
                actions.append(Ended(sid, "idle", slot["last_seq"], slot["last_at"], slot["source"]))
                self._close(sid, now)
        return actions

    def next_expiry(self) -> Optional[float]:
        """When the first open stream goes idle (``None``: no open stream)."""
        if not self.streams:
            return None
        return min(s["seen"] for s in self.streams.values()) + self.idle_seconds

    def _advance(self, sid: str, force: Optional[str], now: float) -> List[Any]:
        """Releases the chunks next in sequence; skips gaps when ``force`` (the reason) is given
        or the stream's buffer is over ``max_pending``."""
        slot = self.streams[sid]
        pending = slot["pending"]
        actions: List[Any] = []
        while pending:
            if slot["next"] not in pending:
                if force is None and len(pending) <= self.max_pending:
                    break
                first = min(pending)
                reason = force or f"live_pending_chunks={self.max_pending} reached"
                actions.append(Gap(sid, slot["next"], first - 1, reason, slot["source"]))
                slot["next"] = first
            seq = slot["next"]
            entry = pending.pop(seq)
            self.pending_bytes -= entry["bytes"]
            slot["next"] = seq + 1
            slot["last_seq"], slot["last_at"] = seq, entry["at"]
            actions.append(Ready(sid, seq, entry["eos"], entry["item"], entry["at"], slot["source"]))
            if entry["eos"]:
                actions.append(Ended(sid, "eos", seq, entry["at"], slot["source"]))
                self._close(sid, now)
                break
        return actions

    def _close(self, sid: str, now: float) -> None:
        slot = self.streams.pop(sid)
        self.pending_bytes -= sum(e["bytes"] for e in slot["pending"].values())
        self.closed[sid] = [now, slot["last_seq"]]

    def _purge(self, now: float) -> None:
        for sid in [sid for sid, (at, _) in self.closed.items() if now - at >= self.tombstone_seconds]:
            del self.closed[sid]
