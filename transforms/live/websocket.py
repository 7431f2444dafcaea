"""The WebSocket edge of the live jobs: browsers and apps stream to ``live-asr``/``live-video`` (no Beam).

One connection carries one stream (the protocol is in ``docs/live.md``): a JSON ``start``
message (``stream_id``, ``format`` and, for audio, ``sample_rate``), then binary messages (PCM
pieces, or one JPEG/PNG per message), then ``{"type": "end"}``. Every message becomes a
``schemas.live.Frame`` put into the same poller queue as the TCP frames, so it meets the same
admission, ordering and stateful DoFn; the job's events for the stream come back on the
connection as JSON text messages, and the server closes the connection after the stream's
last ``final``.

Audio at another rate than the model's is converted here, once per stream, by a streaming
resampler (``operators.streaming.resample``) and travels on as float32 PCM at the model rate.

Everything is checked before it is used: control messages field by field, binary messages
against the stream's format. Limits, each from ``schemas.budgets`` (a refusal is an ``error``
event for that client, then a close where the client cannot go on):

* ``live_frame_bytes``: larger messages are refused by the WebSocket layer before they are
  read (close code 1009);
* ``live_connections``: a client beyond it gets an error event and close code 1013;
* ``live_client_bytes_per_second``: a client sending faster (over any second: a token bucket
  holding one second's worth) gets an error event and 1008;
* ``live_reply_bytes``: a client reading its events too slowly is closed (1008); events are
  queued per client and sent by its own task, so a slow reader never holds up the others;
* a client silent for ``idle_seconds`` is closed with an error event (1008).
"""

import asyncio
import json
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from operators.streaming.resample import StreamResampler, resampler_for
from schemas.budgets import BudgetExceeded
from schemas.common import DeadLetter
from schemas.live import MAX_SAMPLE_RATE, MAX_STREAM_ID_BYTES, Frame, LiveEvent, PayloadKind

STAGE = "LiveWebSocket"
FORMATS = {"audio": {"pcm16": PayloadKind.PCM_S16LE, "f32": PayloadKind.PCM_F32LE},
           "video": {"jpeg": PayloadKind.IMAGE, "png": PayloadKind.IMAGE}}
START_FIELDS = {"type", "stream_id", "format", "sample_rate"}
POLICY, TOO_BIG, TRY_LATER = 1008, 1009, 1013


class ClientError(ValueError):
    """A message the edge refuses; ``close_code`` is set when the connection cannot go on."""

    def __init__(self, message: str, close_code: Optional[int] = None, error_type: str = "ClientError"):
        super().__init__(message)
        self.close_code = close_code
        self.error_type = error_type


class _Client:
    """One connection's stream: its format, resampler, sequence numbers and budgets.

    ``rate_budget`` bytes per second refill a token bucket of ``burst`` bytes.
    """

    def __init__(self, ws: ServerConnection, conn_id: str, number: int, rate_budget: int, burst: int):
        self.ws, self.conn_id = ws, conn_id
        self.stream_id = f"ws-{number}"
        self.kind: Optional[int] = None
        self.rate = 0
        self.resampler: Optional[StreamResampler] = None
        self.seq = 0
        self.ended = False
        self.outbox: "asyncio.Queue[Optional[str]]" = asyncio.Queue()
        self.queued = 0
        self.tokens, self.capacity, self.refill = float(burst), float(burst), float(rate_budget)
        self.filled_at = time.monotonic()

    def spend(self, nbytes: int) -> bool:
        """Token bucket of ``live_client_bytes_per_second``; False when the client is too fast."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.filled_at) * self.refill)
        self.filled_at = now
        self.tokens -= nbytes
        return self.tokens >= 0


class WebSocketEdge:
    """Serves WebSocket clients on ``host:port`` (own thread and event loop) into ``poller``.

    Args:
        poller: The live source's poller (``put_frames`` / ``put_error`` / ``put_items``).
        host, port: Listen address (port 0: any free port; ``self.port`` tells which).
        media: ``"audio"`` (live-asr) or ``"video"`` (live-video).
        model_rate: Sample rate the engine takes (audio is converted to it).
        budgets: ``schemas.budgets.Budgets``.
        idle_seconds: A client silent this long is closed.
    """

    def __init__(self, poller: Any, host: str, port: int, media: str, model_rate: int, budgets: Any,
                 idle_seconds: float):
        self.poller, self.host, self.media, self.model_rate = poller, host, media, model_rate
        self.budgets, self.idle_seconds = budgets, idle_seconds
        self.port = port
        self._clients: Dict[str, _Client] = {}
        self._count = 0
        self._handed: List[Tuple[_Client, str]] = []  # lines from the sink not yet in the clients' outboxes
        self._handed_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: Optional[asyncio.Future] = None
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._run, name="mediabeam-live-websocket", daemon=True).start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        print(f"mediabeam live: WebSocket on ws://{self.host}:{self.port}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # reported to the constructor (e.g. the port is taken)
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._stopped = self._loop.create_future()
        async with serve(self._handle, self.host, self.port, max_size=self.budgets.live_frame_bytes,
                         compression=None, ping_interval=20, ping_timeout=20) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped

    def close(self) -> None:
        """Stops serving and closes every client."""
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(lambda: self._stopped.done() or self._stopped.set_result(None))

    def owns(self, conn_id: str) -> bool:
        return conn_id.startswith(f"ws://{self.host}:{self.port}/")

    # Outbound: the sink thread hands lines over; each client's task sends its own.

    def reply(self, conn_id: str, line: str) -> bool:
        """Queues one event line for a client (never blocks); False if the client is gone.

        Lines handed over while the event loop has not yet taken the previous ones go with
        them: one loop wake-up per batch of events (a bundle's), not per event.
        """
        client = self._clients.get(conn_id)
        if client is None:
            return False
        with self._handed_lock:
            self._handed.append((client, line))
            wake = len(self._handed) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._take_handed)
        return True

    def _take_handed(self) -> None:
        with self._handed_lock:
            handed, self._handed = self._handed, []
        for client, line in handed:
            self._enqueue(client, line)

    def _enqueue(self, client: _Client, line: Optional[str]) -> None:
        if line is not None:
            if f'"stage":"{STAGE}"' in line:  # the edge's own errors were sent when they happened
                return
            client.queued += len(line)
            limit = self.budgets.live_reply_bytes
            if client.queued > limit:
                self._log_error(client, BudgetExceeded("live_reply_bytes", limit, f"{client.queued} event bytes "
                                                       "wait for this client (it reads too slowly)"))
                client.outbox.put_nowait(None)
                asyncio.ensure_future(client.ws.close(POLICY, "budget live_reply_bytes exceeded: reading too slowly"))
                return
        client.outbox.put_nowait(line)

    async def _write_loop(self, client: _Client) -> None:
        while True:
            line = await client.outbox.get()
            if line is None:
                return
            client.queued -= len(line)
            try:
                await client.ws.send(line)
            except ConnectionClosed:
                return
            if client.ended and line.find('"event":"final"') >= 0 and '"utterance":' not in line:
                await client.ws.close(1000, "stream finished")
                return

    # Inbound.

    async def _handle(self, ws: ServerConnection) -> None:
        number = self._count
        self._count += 1
        rate = self.budgets.live_client_bytes_per_second
        client = _Client(ws, f"ws://{self.host}:{self.port}/{number}", number, rate, rate)
        if len(self._clients) >= self.budgets.live_connections:
            limit = self.budgets.live_connections
            await self._refuse(client, ClientError(str(BudgetExceeded(
                "live_connections", limit, f"client {limit + 1} (try again later)")), TRY_LATER, "BudgetExceeded"))
            return
        self._clients[client.conn_id] = client
        writer = asyncio.ensure_future(self._write_loop(client))
        try:
            await self._read_loop(client)
        finally:
            self._clients.pop(client.conn_id, None)
            client.outbox.put_nowait(None)
            await writer

    async def _read_loop(self, client: _Client) -> None:
        ws = client.ws
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self.idle_seconds * (2 if client.ended else 1))
            except asyncio.TimeoutError:
                reason = ("no event came for the finished stream" if client.ended else
                          f"no message for {self.idle_seconds:g} s (idle clients are closed)")
                await self._refuse(client, ClientError(reason, POLICY, "IdleClient"))
                return
            except ConnectionClosed as closed:
                self._closed(client, closed)
                return
            try:
                if isinstance(message, str):
                    await self._control(client, message)
                else:
                    await self._payload(client, message)
            except ClientError as err:
                if err.close_code is not None:
                    await self._refuse(client, err)
                    return
                await self._send_error(client, err)
            except ConnectionClosed as closed:  # went away while we answered
                self._closed(client, closed)
                return

    def _closed(self, client: _Client, closed: ConnectionClosed) -> None:
        """Logs why a client went away when its stream was not finished."""
        code = closed.sent.code if closed.sent is not None else None
        if code == TOO_BIG:
            self._log_error(client, BudgetExceeded("live_frame_bytes", self.budgets.live_frame_bytes,
                                                   "a larger message (the connection was closed, code 1009)"))
        elif client.kind is not None and not client.ended:
            self._log_error(client, ClientError("the client disconnected before the end of its stream (it is "
                                                "finalised when idle)", error_type="ClientDisconnected"))

    async def _control(self, client: _Client, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise ClientError("malformed message: text messages must be JSON objects") from None
        if not isinstance(message, dict) or message.get("type") not in ("start", "end"):
            raise ClientError('malformed message: expected {"type": "start", ...} or {"type": "end"}')
        if message["type"] == "start":
            self._start(client, message)
            await client.ws.send(json.dumps({"stream_id": client.stream_id, "event": "ready", "seq": -1,
                                             "source": client.conn_id,
                                             "model_rate": self.model_rate if self.media == "audio" else 0}))
            return
        if set(message) != {"type"}:
            raise ClientError(f"malformed end message: unknown fields {sorted(set(message) - {'type'})}")
        if client.kind is None or client.ended:
            raise ClientError("an end message needs a started, unfinished stream")
        payload = b""
        if client.resampler is not None:
            payload = client.resampler.push(np.zeros(0, np.float32), final=True).tobytes()
        kind = (PayloadKind.PCM_F32LE if client.resampler is not None else client.kind) if payload else PayloadKind.NONE
        client.ended = True
        await self._put(client, Frame(client.stream_id, client.seq, True, int(kind),
                                      self.model_rate if payload else 0, payload))

    def _start(self, client: _Client, message: Dict[str, Any]) -> None:
        """Checks a start message field by field and opens the client's stream."""
        if client.kind is not None:
            raise ClientError("the stream was already started (one stream per connection)")
        unknown = set(message) - START_FIELDS
        if unknown:
            raise ClientError(f"start message: unknown fields {sorted(unknown)} (known: {sorted(START_FIELDS)})")
        sid = message.get("stream_id", client.stream_id)
        if not isinstance(sid, str) or not 0 < len(sid.encode("utf-8")) <= MAX_STREAM_ID_BYTES:
            raise ClientError(f"start message: stream_id must be a string of 1..{MAX_STREAM_ID_BYTES} UTF-8 bytes")
        formats = FORMATS[self.media]
        fmt = message.get("format")
        if fmt not in formats:
            raise ClientError(f"start message: format {fmt!r} is not one of {sorted(formats)} for {self.media}")
        rate = message.get("sample_rate", 0)
        if self.media == "audio":
            if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= MAX_SAMPLE_RATE:
                raise ClientError(f"start message: sample_rate must be an integer in 1..{MAX_SAMPLE_RATE} (Hz)")
        elif "sample_rate" in message:
            raise ClientError("start message: sample_rate is for audio only")
        client.stream_id, client.kind, client.rate = sid, int(formats[fmt]), int(rate)
        if self.media == "audio":
            client.resampler = resampler_for(rate, self.model_rate)

    async def _payload(self, client: _Client, data: bytes) -> None:
        if not client.spend(len(data)):
            limit = self.budgets.live_client_bytes_per_second
            raise ClientError(str(BudgetExceeded("live_client_bytes_per_second", limit,
                                                 "the client sends faster (send in real time)")), POLICY,
                              "BudgetExceeded")
        if client.kind is None:
            raise ClientError('binary message before the stream was started (send {"type": "start", ...} first)')
        if client.ended:
            raise ClientError("binary message after the end of the stream")
        kind, rate, payload = client.kind, client.rate, data
        if client.resampler is not None:
            width = 2 if kind == PayloadKind.PCM_S16LE else 4
            if len(data) % width:
                raise ClientError(f"{len(data)} bytes is not a whole number of {width}-byte samples",
                                  error_type="SampleFormatError")
            samples = (np.frombuffer(data, "<i2").astype(np.float32) / 32768.0 if width == 2
                       else np.frombuffer(data, "<f4").astype(np.float32))
            if not np.all(np.isfinite(samples)):
                raise ClientError("float samples contain NaN or infinity", error_type="SampleFormatError")
            payload = client.resampler.push(samples).astype("<f4").tobytes()
            kind, rate = PayloadKind.PCM_F32LE, self.model_rate
            if not payload:
                return
        await self._put(client, Frame(client.stream_id, client.seq, False, int(kind), rate, payload))

    async def _put(self, client: _Client, frame: Frame) -> None:
        client.seq += 1
        left = self.poller.put_frames([frame], client.conn_id, wait=False)
        if left:  # the queue is full (back-pressure): wait for room in a thread, never in the event loop
            await asyncio.to_thread(self.poller.put_items, left)

    # Errors.

    def _error_line(self, client: _Client, err: ClientError) -> str:
        now = time.time()
        return LiveEvent(client.stream_id, "error", -1, {"stage": STAGE, "error_type": err.error_type,
                                                         "reason": str(err)}, client.conn_id, now, now).to_json()

    def _log_error(self, client: _Client, err: Exception) -> None:
        """The error as a dead letter on the job's error output (and so in its event log)."""
        error_type = getattr(err, "error_type", type(err).__name__)
        left = self.poller.put_error(DeadLetter(f"{client.stream_id}#-1", client.conn_id, STAGE, error_type, str(err)),
                                     wait=False)
        if left:  # the queue is full: the dead letter waits for room in a thread, not in the event loop
            self._loop.run_in_executor(None, self.poller.put_items, left)

    async def _send_error(self, client: _Client, err: ClientError) -> None:
        self._log_error(client, err)
        try:
            await client.ws.send(self._error_line(client, err))
        except ConnectionClosed:
            pass

    async def _refuse(self, client: _Client, err: ClientError) -> None:
        """Sends the error event, then closes the connection with the error's code."""
        await self._send_error(client, err)
        await client.ws.close(err.close_code, str(err)[:120])
