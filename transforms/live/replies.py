"""``ReplyWriter``: one TCP connection's outbound event lines, sent by a thread of their own.

The sink hands a line over and returns at once, so a client that reads its events slowly, or
not at all, never blocks the pipeline and so never delays the other streams. Lines wait in
memory up to the ``live_reply_bytes`` budget, the same budget WebSocket clients have; past it,
the writer stops and ``on_overflow`` is called once with the ``BudgetExceeded`` error (the
listener reports it and drops the connection).

A client may stop sending and still wait for its last events (they come once its streams are
finalised), so the writer outlives the connection's reader: once the reader has ended, it
stops after ``linger_seconds`` without a line to send. Whenever it stops (that, the client
gone, an overflow, or ``close``), ``on_closed`` is called once, so the listener forgets the
connection and no thread or socket is left behind.
"""

import collections
import socket
import threading
from typing import Callable, Deque

from schemas.budgets import BudgetExceeded


class ReplyWriter:
    """Sends lines on ``conn`` in order from a daemon thread (no Beam, no asyncio).

    Args:
        conn: The client's socket. It may have a timeout (the reader's polling one): a send
            that times out is retried, so nothing is sent twice or lost while the client lives.
        limit: ``live_reply_bytes``: most bytes waiting to be sent.
        linger_seconds: How long to wait for more lines once the reader has ended.
        on_overflow: Called (from the sink's thread) when a line would take the waiting bytes
            past ``limit``; the writer is closed by then.
        on_closed: Called once from the writer's thread when it stops.
    """

    def __init__(self, conn: socket.socket, limit: int, linger_seconds: float,
                 on_overflow: Callable[[BudgetExceeded], None], on_closed: Callable[[], None]):
        self._conn = conn
        self._limit = limit
        self._linger = linger_seconds
        self._on_overflow = on_overflow
        self._on_closed = on_closed
        self._lines: Deque[bytes] = collections.deque()
        self._queued = 0
        self._ready = threading.Condition()
        self._reading = True
        self.closed = False
        threading.Thread(target=self._run, name="mediabeam-live-reply", daemon=True).start()

    def send(self, line: str) -> bool:
        """Queues one event line (a newline is added); False once the writer is closed."""
        data = line.encode("utf-8") + b"\n"
        with self._ready:
            if self.closed:
                return False
            waiting = self._queued + len(data)
            if waiting <= self._limit:
                self._lines.append(data)
                self._queued = waiting
                self._ready.notify_all()
                return True
            self.closed = True
            self._ready.notify_all()
        self._on_overflow(BudgetExceeded("live_reply_bytes", self._limit,
                                         f"{waiting} event bytes waiting for this client (it reads too slowly)"))
        return False

    def reader_ended(self) -> None:
        """The client sends nothing more: stop once no line came for ``linger_seconds``."""
        with self._ready:
            self._reading = False
            self._ready.notify_all()

    def close(self, flush_seconds: float = 0.0) -> None:
        """Stops the thread, after sending what waits for at most ``flush_seconds``."""
        with self._ready:
            self._ready.wait_for(lambda: not self._lines or self.closed, flush_seconds)
            self.closed = True
            self._ready.notify_all()

    def _run(self) -> None:
        try:
            self._send_lines()
        finally:
            with self._ready:
                self.closed = True
                self._ready.notify_all()
            self._on_closed()

    def _send_lines(self) -> None:
        while True:
            with self._ready:
                while not self._lines and not self.closed:
                    if self._reading:
                        self._ready.wait()
                    elif not self._ready.wait(self._linger) and not self._lines:
                        return  # the client went quiet and nothing more came for it
                if self.closed:
                    return
                data = self._lines[0]
            view = memoryview(data)
            while view:
                try:
                    view = view[self._conn.send(view):]
                except socket.timeout:
                    if self.closed:
                        return
                except OSError:  # the client is gone
                    return
            with self._ready:
                self._lines.popleft()
                self._queued -= len(data)
                self._ready.notify_all()
