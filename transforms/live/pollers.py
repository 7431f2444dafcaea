"""The receiving side of live sources: TCP listeners and recording tailers (no Beam).

A *poller* is a process-wide object, created on the worker on first use and looked up by its
``SourceSpec`` (sockets cannot be part of a Beam restriction). Background threads decode
frames (``schemas.live.FrameDecoder``, which checks every field) into one queue that the
source's ``process`` call drains.

Budgets (``schemas.budgets.Budgets``) held here:

* ``live_frame_bytes``: a larger frame is skipped by the decoder and reported.
* ``live_queued_bytes``: payload bytes waiting in the queue. When full, reader threads wait
  (back-pressure: a TCP client's ``send`` blocks once the socket buffers fill; a tailer reads
  on later), so one fast client cannot grow the server's memory. Nothing is dropped.
* ``live_streams``: concurrent streams of the source; frames of a new stream beyond it are
  refused with an error event naming the budget (``operators.streaming.admission``).
* ``live_reply_bytes``: event bytes waiting to be sent back to one TCP client; each
  connection's replies go out from their own thread (``transforms.live.replies``), so a slow
  reader never blocks the pipeline, and one that falls this far behind is dropped with an
  error event.
* ``live_connections``: TCP connections open at once (WebSocket clients have their own count);
  one more is closed at once with an error event. A connection counts until its client has
  stopped sending and its last events went out (its writer lingers ``idle_seconds``).

With ``SourceSpec.ws_address`` the TCP listener also serves WebSocket clients
(``transforms.live.websocket``); their frames go into the same queue. With ``http_address`` it
serves the browser pages too (``transforms.live.pages``).
"""

import collections
import glob
import os
import socket
import sys
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple

from operators.streaming.admission import StreamAdmission
from schemas.budgets import DEFAULT_BUDGETS, BudgetExceeded, Budgets
from schemas.common import DeadLetter
from schemas.live import RECORDING_SUFFIX, Frame, FrameDecoder, LiveChunk
from transforms.live.replies import ReplyWriter

STAGE = "LiveSource"
ERROR_BYTES = 256  # what a queued error item counts for in live_queued_bytes


class SourceSpec(NamedTuple):
    """What to read.

    Attributes:
        kind: ``"tcp"`` (listen for clients) or ``"tail"`` (recordings in a file or folder).
        address: ``HOST:PORT`` for tcp; a ``.mbl`` file or a folder of them for tail.
        budgets: Untrusted-input budgets (``live_frame_bytes``, ``live_queued_bytes``, ``live_streams``).
        idle_seconds: A stream with no frame for this long no longer counts as open.
        max_idle_seconds: Stop after this long without a frame (0: never).
        stop_after_seconds: Stop after this long in total (0: never).
        poll_seconds: Longest wait for the first frame of a poll.
        bundle_seconds: How long one ``process`` call (one bundle) goes on polling while
            frames keep arriving; each poll's frames go downstream at once, followed by a
            ``PollEnd`` (0: one poll per bundle).
        drain_seconds: After a stop condition, keep delivering for this long before finishing
            (downstream idle-stream timers fire and events reach the clients).
        ws_address: ``HOST:PORT`` to serve WebSocket clients on as well (tcp only; ``""``: none).
        media: What WebSocket clients send: ``"audio"`` (live-asr) or ``"video"`` (live-video).
        model_rate: The engine's sample rate; WebSocket audio is converted to it.
        http_address: ``HOST:PORT`` to serve the browser pages on (needs ``ws_address``; ``""``: none).
    """

    kind: str
    address: str
    budgets: Budgets = DEFAULT_BUDGETS
    idle_seconds: float = 30.0
    max_idle_seconds: float = 0.0
    stop_after_seconds: float = 0.0
    poll_seconds: float = 0.2
    bundle_seconds: float = 0.3
    drain_seconds: float = 0.0
    ws_address: str = ""
    media: str = "audio"
    model_rate: int = 16000
    http_address: str = ""


def _split_address(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class Poller:
    """Collects chunks and framing errors from background threads into one byte-bounded queue."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.started = time.time()
        self.last_item = self.started
        self.stopping_since: Optional[float] = None
        self.closed = False
        self._items: Deque[Tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._ready = threading.Condition()
        self._admission = StreamAdmission(spec.budgets.live_streams, spec.idle_seconds)

    def put_frames(self, decoded: List[Any], source: str, wait: bool = True) -> List[Tuple[Any, int]]:
        """Admits decoded frames of ``source`` (its errors become dead letters) and queues them,
        waiting while the queue is full.

        With ``wait`` False nothing waits: it returns the admitted items the queue had no room
        for (from the first one that did not fit), for ``put_items`` from a thread, so an event
        loop never waits; each frame is admitted exactly once either way.
        """
        items = []
        for item in decoded:
            now = time.time()
            error = item
            if isinstance(item, Frame):
                error = self._admission.admit(item.stream_id, item.eos, now)
                if error is None:
                    items.append((LiveChunk(item.stream_id, item.seq, item.eos, item.kind, item.sample_rate,
                                            item.payload, now, source), len(item.payload)))
                    continue
            key = f"{item.stream_id}#{item.seq}" if item.stream_id else f"{source}#{item.seq}"
            items.append((DeadLetter(key, source, STAGE, type(error).__name__, str(error)), ERROR_BYTES))
        return self.put_items(items, wait)

    def put_error(self, dead: DeadLetter, wait: bool = True) -> List[Tuple[Any, int]]:
        """Queues an error found at the edge (reported on the source's dead-letter output); with
        ``wait`` False, returns it when the queue has no room (as ``put_frames`` does)."""
        return self.put_items([(dead, ERROR_BYTES)], wait)

    def put_items(self, items: List[Tuple[Any, int]], wait: bool = True) -> List[Tuple[Any, int]]:
        """Queues ``(item, bytes)`` pairs in order; with ``wait`` False, returns those from the
        first that did not fit (none: all queued)."""
        for k, (item, nbytes) in enumerate(items):
            if not self._put(item, nbytes, wait):
                return items[k:]
        return []

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting in the queue now (at most ``live_queued_bytes`` once readers wait)."""
        return self._bytes

    def _put(self, item: Any, nbytes: int, wait: bool = True) -> bool:
        limit = self.spec.budgets.live_queued_bytes
        with self._ready:
            while self._bytes and self._bytes + nbytes > limit and not self.closed:
                if not wait:
                    return False
                self._ready.wait(0.2)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._ready.notify_all()
        return True

    def drain(self, timeout: float, linger: float = 0.003) -> List[Any]:
        """Everything queued. When the queue is empty, waits up to ``timeout`` for the first item
        and then ``linger`` seconds more, so that frames arriving together are delivered (and
        batched) together; frames already waiting (the job is busy) are taken at once."""
        with self._ready:
            waiting = bool(self._items)
            if not waiting and not self._ready.wait_for(lambda: bool(self._items), timeout):
                return []
        if not waiting:
            time.sleep(linger)
        with self._ready:
            items = [item for item, _ in self._items]
            self._items.clear()
            self._bytes = 0
            self._ready.notify_all()
        self.last_item = time.time()
        return items

    def close(self) -> None:
        self.closed = True


class TcpListener(Poller):
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
        self._writers: Dict[str, ReplyWriter] = {}
        self._lock = threading.Lock()
        self._next = 0
        print(f"mediabeam live: listening on {self.host}:{self.port}", file=sys.stderr, flush=True)
        threading.Thread(target=self._accept_loop, name="mediabeam-live-accept", daemon=True).start()
        self.websocket = None
        if spec.ws_address:
            from transforms.live.websocket import WebSocketEdge

            ws_host, ws_port = _split_address(spec.ws_address)
            self.websocket = WebSocketEdge(self, ws_host, ws_port, spec.media, spec.model_rate, spec.budgets,
                                           spec.idle_seconds)
        self.pages = None
        if spec.http_address and self.websocket is not None:
            from transforms.live.pages import PageServer

            http_host, http_port = _split_address(spec.http_address)
            self.pages = PageServer(http_host, http_port, self.websocket.port, spec.media)

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            limit = self.spec.budgets.live_connections
            with self._lock:
                conn_id = f"tcp://{self.host}:{self.port}/{self._next}"
                self._next += 1
                refused = len(self._conns) >= limit
                if not refused:
                    self._conns[conn_id] = conn
                    self._writers[conn_id] = ReplyWriter(
                        conn, self.spec.budgets.live_reply_bytes, self.spec.idle_seconds,
                        lambda err, cid=conn_id: self._overflow(cid, err), lambda cid=conn_id: self._forget(cid))
            if refused:
                self.put_error(DeadLetter(f"{conn_id}#-1", conn_id, STAGE, "BudgetExceeded", str(BudgetExceeded(
                    "live_connections", limit, f"TCP connection {limit + 1} (try again later)"))))
                conn.close()
                continue
            threading.Thread(target=self._read_loop, args=(conn, conn_id), daemon=True).start()

    def _read_loop(self, conn: socket.socket, conn_id: str) -> None:
        decoder = FrameDecoder(self.spec.budgets.live_frame_bytes)
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
            self.put_frames(decoder.feed(data), conn_id)
            if decoder.broken:
                break
        if decoder.broken:
            self._drop(conn_id)
            return
        with self._lock:
            writer = self._writers.get(conn_id)
        if writer is not None:
            writer.reader_ended()  # its last events may still come: the writer lingers, then forgets it

    def _overflow(self, conn_id: str, err: BudgetExceeded) -> None:
        """A client reading its events too slowly: an error event, and the connection is dropped."""
        self.put_error(DeadLetter(f"{conn_id}#-1", conn_id, STAGE, type(err).__name__, str(err)))
        self._drop(conn_id)

    def _drop(self, conn_id: str, flush_seconds: float = 0.0) -> None:
        with self._lock:
            writer = self._writers.get(conn_id)
        if writer is not None:
            writer.close(flush_seconds)
        self._forget(conn_id)

    def _forget(self, conn_id: str) -> None:
        """Closes a connection and forgets it (idempotent: its writer calls it when it stops)."""
        with self._lock:
            conn = self._conns.pop(conn_id, None)
            self._writers.pop(conn_id, None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def owns(self, conn_id: str) -> bool:
        """Whether connection ``conn_id`` (``tcp://…`` or ``ws://…``) is one of this listener's."""
        if conn_id.startswith(f"tcp://{self.host}:{self.port}/"):
            return True
        return self.websocket is not None and self.websocket.owns(conn_id)

    def reply(self, conn_id: str, line: str) -> bool:
        """Sends one event line to a connection; False if it is gone."""
        if conn_id.startswith("ws://"):
            return self.websocket is not None and self.websocket.reply(conn_id, line)
        with self._lock:
            writer = self._writers.get(conn_id)
        return writer is not None and writer.send(line)

    def close(self) -> None:
        super().close()
        self.server.close()
        if self.websocket is not None:
            self.websocket.close()
        if self.pages is not None:
            self.pages.close()
        deadline = time.time() + 1.0  # events already handed over still reach their clients
        for conn_id in list(self._conns):
            self._drop(conn_id, flush_seconds=max(0.0, deadline - time.time()))


class RecordingTailer(Poller):
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
                decoder = self._decoders.setdefault(path, FrameDecoder(self.spec.budgets.live_frame_bytes))
                self.put_frames(decoder.feed(data), f"file://{os.path.abspath(path)}")
            time.sleep(self.spec.poll_seconds)


_POLLERS: Dict[SourceSpec, Poller] = {}
_POLLERS_LOCK = threading.Lock()


def poller_for(spec: SourceSpec) -> Poller:
    """The process-wide poller of ``spec``, started on first use."""
    with _POLLERS_LOCK:
        poller = _POLLERS.get(spec)
        if poller is None or poller.closed:
            poller = TcpListener(spec) if spec.kind == "tcp" else RecordingTailer(spec)
            _POLLERS[spec] = poller
        return poller


def close_pollers() -> None:
    """Closes every poller of this process (listening sockets, connections, tailers)."""
    with _POLLERS_LOCK:
        for poller in _POLLERS.values():
            poller.close()


def listener_for_connection(conn_id: str) -> Optional[TcpListener]:
    """The live listener that owns connection ``tcp://…`` or ``ws://…`` in this process, if any."""
    with _POLLERS_LOCK:
        for poller in _POLLERS.values():
            if isinstance(poller, TcpListener) and poller.owns(conn_id):
                return poller
    return None
