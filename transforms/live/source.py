"""Unbounded live sources: framed chunks from TCP clients, or tailed recordings.

``ReadLiveFrames`` is an unbounded splittable DoFn (SDF) behind an ``Impulse``. Its
restriction is the offset range ``[0, ∞)`` of frames delivered; each ``process`` call drains
the frames that arrived (waiting at most ``poll_seconds``), claims one offset per frame and
then self-checkpoints with ``defer_remainder``, so the runner resumes it and downstream
stages see each poll as one bundle. This is Beam's portable pattern for unbounded reads
(FnApiRunner, Flink and Dataflow all run SDF checkpoints); nothing here is runner-specific.

The receiving side lives in a process-wide *poller* (a TCP listener with one reader thread
per connection, or a file tailer) created on the worker on first use and looked up by its
address, because sockets cannot be part of a restriction. On a distributed runner the
listener is bound on the worker that runs the source; events can be sent back on a
connection (``WriteLiveEvents`` with ``reply``) only where the sink runs in the same process
as the source (the local runner), otherwise write events to a file or stdout.

Event time is arrival time, and the watermark follows the wall clock on every poll.

Bounded runs (tests, demos): ``max_idle_seconds`` stops after that long without a frame (the
wait starts at the first poll) and ``stop_after_seconds`` after that long in total; the
source then goes on delivering for ``drain_seconds`` (so that idle streams downstream are
finalised and their events sent), claims the rest of its restriction and finishes, and so
does the pipeline.
"""

import glob
import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import Timestamp

from schemas.common import DeadLetter
from schemas.live import RECORDING_SUFFIX, Frame, FrameDecoder, LiveChunk, LiveEvent
from transforms.errors import DEAD_LETTER_TAG, count

STAGE = "LiveSource"
SINK_STAGE = "WriteLiveEvents"
_END = sys.maxsize


class SourceSpec(NamedTuple):
    """What to read.

    Attributes:
        kind: ``"tcp"`` (listen for clients) or ``"tail"`` (recordings in a file or folder).
        address: ``HOST:PORT`` for tcp; a ``.mbl`` file or a folder of them for tail.
        max_payload_bytes: Larger frames are skipped and reported.
        max_idle_seconds: Stop after this long without a frame (0: never).
        stop_after_seconds: Stop after this long in total (0: never).
        poll_seconds: Longest wait for frames in one ``process`` call.
        drain_seconds: After a stop condition, keep delivering for this long before finishing
            (downstream idle-stream timers fire and events reach the clients).
    """

    kind: str
    address: str
    max_payload_bytes: int = 1 << 20
    max_idle_seconds: float = 0.0
    stop_after_seconds: float = 0.0
    poll_seconds: float = 0.2
    drain_seconds: float = 0.0


def _split_address(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class _Poller:
    """Collects chunks and framing errors from background threads into one queue."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.items: "queue.Queue[Any]" = queue.Queue()
        self.started = time.time()
        self.last_item = self.started
        self.stopping_since: Optional[float] = None
        self.closed = False

    def _put_frames(self, decoded: List[Any], source: str) -> None:
        now = time.time()
        for item in decoded:
            if isinstance(item, Frame):
                self.items.put(LiveChunk(item.stream_id, item.seq, item.eos, item.kind, item.sample_rate,
                                         item.payload, now, source))
            else:
                key = f"{item.stream_id}#{item.seq}" if item.stream_id else f"{source}#{item.seq}"
                self.items.put(DeadLetter(key, source, STAGE, type(item).__name__, str(item)))

    def drain(self, timeout: float, linger: float = 0.003) -> List[Any]:
        """Everything queued, waiting up to ``timeout`` for the first item and then ``linger``
        seconds more, so that frames arriving together are delivered (and batched) together."""
        try:
            items = [self.items.get(timeout=timeout)]
        except queue.Empty:
            return []
        time.sleep(linger)
        while True:
            try:
                items.append(self.items.get_nowait())
            except queue.Empty:
                break
        self.last_item = time.time()
        return items

    def close(self) -> None:
        self.closed = True


class TcpListener(_Poller):
    """Accepts clients on ``HOST:PORT``; one reader thread per connection.

    Connection ids are ``tcp://HOST:PORT/N``; ``reply(conn_id, line)`` writes an event line back.
    """

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        host, port = _split_address(spec.address)
        self.server = socket.create_server((host, port), reuse_port=False)
        self.server.settimeout(0.2)
        self.host, self.port = self.server.getsockname()[:2]
        self._conns: Dict[str, socket.socket] = {}
        self._lock = threading.Lock()
        self._next = 0
        print(f"mediabeam live: listening on {self.host}:{self.port}", file=sys.stderr, flush=True)
        threading.Thread(target=self._accept_loop, name="mediabeam-live-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                conn_id = f"tcp://{self.host}:{self.port}/{self._next}"
                self._next += 1
                self._conns[conn_id] = conn
            threading.Thread(target=self._read_loop, args=(conn, conn_id), daemon=True).start()

    def _read_loop(self, conn: socket.socket, conn_id: str) -> None:
        decoder = FrameDecoder(self.spec.max_payload_bytes)
        conn.settimeout(0.2)
        while not self.closed:
            try:
                data = conn.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            self._put_frames(decoder.feed(data), conn_id)
            if decoder.broken:
                break
        if decoder.broken:
            self._drop(conn_id)

    def _drop(self, conn_id: str) -> None:
        with self._lock:
            conn = self._conns.pop(conn_id, None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def reply(self, conn_id: str, line: str) -> bool:
        """Sends one event line to a connection; False if it is gone."""
        with self._lock:
            conn = self._conns.get(conn_id)
            if conn is None:
                return False
            try:
                conn.sendall(line.encode("utf-8") + b"\n")
                return True
            except OSError:
                return False

    def close(self) -> None:
        super().close()
        self.server.close()
        for conn_id in list(self._conns):
            self._drop(conn_id)


class RecordingTailer(_Poller):
    """Reads recordings (``.mbl``) in a file or folder, and whatever is appended to them."""

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self._decoders: Dict[str, FrameDecoder] = {}
        self._offsets: Dict[str, int] = {}
        threading.Thread(target=self._tail_loop, name="mediabeam-live-tail", daemon=True).start()

    def _paths(self) -> List[str]:
        path = self.spec.address
        if os.path.isdir(path):
            return sorted(glob.glob(os.path.join(path, f"*{RECORDING_SUFFIX}")))
        return [path] if os.path.exists(path) else []

    def _tail_loop(self) -> None:
        while not self.closed:
            for path in self._paths():
                offset = self._offsets.get(path, 0)
                if os.path.getsize(path) <= offset:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(1 << 20)
                self._offsets[path] = offset + len(data)
                decoder = self._decoders.setdefault(path, FrameDecoder(self.spec.max_payload_bytes))
                self._put_frames(decoder.feed(data), f"file://{os.path.abspath(path)}")
            time.sleep(self.spec.poll_seconds)


_POLLERS: Dict[SourceSpec, _Poller] = {}
_POLLERS_LOCK = threading.Lock()


def poller_for(spec: SourceSpec) -> _Poller:
    """The process-wide poller of ``spec``, started on first use."""
    with _POLLERS_LOCK:
        poller = _POLLERS.get(spec)
        if poller is None or poller.closed:
            poller = TcpListener(spec) if spec.kind == "tcp" else RecordingTailer(spec)
            _POLLERS[spec] = poller
        return poller


def listener_for_connection(conn_id: str) -> Optional[TcpListener]:
    """The live listener that owns connection ``tcp://HOST:PORT/N`` in this process, if any."""
    with _POLLERS_LOCK:
        for poller in _POLLERS.values():
            if isinstance(poller, TcpListener) and conn_id.startswith(f"tcp://{poller.host}:{poller.port}/"):
                return poller
    return None


class _FramesRestrictions(RestrictionProvider):
    def initial_restriction(self, spec: SourceSpec) -> OffsetRange:
        return OffsetRange(0, _END)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, spec: SourceSpec, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one listener per address: never split up front

    def restriction_size(self, spec: SourceSpec, restriction: OffsetRange) -> int:
        return 1


class _Watermarks(WatermarkEstimatorProvider):
    def initial_estimator_state(self, spec, restriction):
        return None

    def create_watermark_estimator(self, state):
        return ManualWatermarkEstimator(state)


class PollFramesFn(beam.DoFn):
    """The unbounded SDF: ``SourceSpec`` → ``LiveChunk`` (+ ``DeadLetter`` for bad frames)."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        spec: SourceSpec,
        tracker=beam.DoFn.RestrictionParam(_FramesRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks()),
    ) -> Iterator:
        poller = poller_for(spec)
        position = tracker.current_restriction().start
        for item in poller.drain(spec.poll_seconds):
            if not tracker.try_claim(position):
                return
            position += 1
            if isinstance(item, DeadLetter):
                count(STAGE, "bad_frames")
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item)
                continue
            count(STAGE, "frames")
            yield beam.window.TimestampedValue(item, Timestamp(item.received_at))
        now = time.time()
        # Event time is arrival time: the watermark follows the wall clock even without frames,
        # so downstream event-time timers (stream expiry) fire on every runner.
        current = watermark.current_watermark()
        if current is None or Timestamp(now) > current:
            watermark.set_watermark(Timestamp(now))
        idle = spec.max_idle_seconds and now - poller.last_item >= spec.max_idle_seconds
        over = spec.stop_after_seconds and now - poller.started >= spec.stop_after_seconds
        if (idle or over) and poller.stopping_since is None:
            poller.stopping_since = now
        if poller.stopping_since is not None and now - poller.stopping_since >= spec.drain_seconds:
            poller.close()
            tracker.try_claim(_END)  # claims the rest: the restriction is done
            return
        tracker.defer_remainder()


class ReadLiveFrames(beam.PTransform):
    """``Impulse`` → ``{"chunks": LiveChunk, DEAD_LETTER_TAG: DeadLetter}`` from ``spec``."""

    def __init__(self, spec: SourceSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        return (
            pbegin
            | "Start" >> beam.Impulse()
            | "Spec" >> beam.Map(_constant, self._spec)
            | "PollFrames" >> beam.ParDo(PollFramesFn()).with_outputs(DEAD_LETTER_TAG, main="chunks")
        )


def _constant(_: Any, value: Any) -> Any:
    return value


class WriteLiveEventsFn(beam.DoFn):
    """Writes each event as one JSON line: to stdout, a file (appended, flushed per line),
    and/or back to the client connection the stream came from."""

    def __init__(self, path: Optional[str], reply: bool):
        self._path = path
        self._reply = reply
        self._handle = None

    def setup(self) -> None:
        if self._path and self._path != "-":
            self._handle = open(self._path, "a", encoding="utf-8", buffering=1)

    def process(self, event: LiveEvent) -> Iterator[str]:
        line = event.to_json()
        if self._path == "-":
            print(line, flush=True)
        elif self._handle is not None:
            self._handle.write(line + "\n")
        if self._reply and event.source.startswith("tcp://"):
            listener = listener_for_connection(event.source)
            if listener is None or not listener.reply(event.source, line):
                count(SINK_STAGE, "reply_failed")
        count(SINK_STAGE, "events")
        yield line

    def teardown(self) -> None:
        if self._handle is not None:
            self._handle.close()


class WriteLiveEvents(beam.PTransform):
    """``LiveEvent`` → JSON lines (returned too). ``path``: a file, ``"-"`` for stdout, or
    ``None``; ``reply``: also send each event back on its stream's connection."""

    def __init__(self, path: Optional[str] = "-", reply: bool = False):
        super().__init__()
        self._fn = WriteLiveEventsFn(path, reply)

    def expand(self, events):
        return events | "WriteJsonLines" >> beam.ParDo(self._fn)
