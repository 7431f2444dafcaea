"""The live JSON-lines sink: events to stdout, a file, and/or back to the client's connection."""

import time
from typing import Iterator, Optional

import apache_beam as beam

from schemas.common import DeadLetter
from schemas.live import LiveEvent
from transforms.errors import count
from transforms.live.pollers import listener_for_connection

SINK_STAGE = "WriteLiveEvents"


class WriteLiveEventsFn(beam.DoFn):
    """Writes each event as one JSON line: to stdout, a file (appended, flushed per line),
    and/or back to the client connection the stream came from (always for WebSocket clients)."""

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
        # WebSocket clients always get their events back (that is their protocol); TCP ones with --reply.
        if event.source.startswith("ws://") or (self._reply and event.source.startswith("tcp://")):
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


def error_event(dead: DeadLetter) -> LiveEvent:
    """A dead letter as an ``error`` event for the JSON sink (key ``<stream>#<seq>``)."""
    sid, _, seq = dead.key.rpartition("#")
    return LiveEvent(sid or dead.key, "error", int(seq) if seq.lstrip("-").isdigit() else -1,
                     {"stage": dead.stage, "error_type": dead.error_type, "reason": dead.message},
                     dead.source, 0.0, time.time())
