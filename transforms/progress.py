"""Operability steps: per-stage Beam metrics, live progress files and worker progress logs.

:class:`CountStage` is a pass-through step that any job drops between two stages. It keeps
``Progress/<stage>.elements`` and ``Progress/<stage>.bytes`` counters and a distribution
``Progress/<stage>.seen_at_ms`` of when elements passed (milliseconds since the job was
built): its min and max over all workers say when the stage was active, on any runner that
reports distributions (see ``pipelines.operability.stage_throughput``).

Beam metrics reach the launcher only when the job ends on the in-process runner, and a
batch job's writer runs after a shuffle barrier, so neither tells a person how far a long
run is. With ``progress_dir`` set, each ``CountStage`` instance also writes its running
count to ``<progress_dir>/<stage>-<instance>.json`` (atomically, at most every
``flush_every_s`` and at the end of each bundle that changed it); the launcher sums these files while the job runs
(``pipelines.operability.ProgressMonitor``). This works on every runner whose workers can
write where the launcher can read (local disk, GCS, S3). Each worker also logs its count
and rate every ``log_every_s``, for people tailing worker logs on Dataflow or Flink.
:class:`CountDeadLetters` counts dead letters per stage and error type.
"""

import json
import logging
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.common import DeadLetter
from transforms.io.layout import write_atomic

NAMESPACE = "Progress"
DEAD_LETTER_NAMESPACE = "DeadLetters"
_LOG = logging.getLogger(__name__)


class CountStage(beam.DoFn):
    """Passes elements through, counting them (and their size) under ``stage``.

    Args:
        stage: Stage label used in the metric and progress file names.
        origin_s: Wall-clock time (``time.time()``) the job was built; timestamps are kept
            relative to it so the distribution sums stay small.
        size_fn: Optional picklable ``element -> bytes`` for the ``.bytes`` counter.
        progress_dir: Folder for live progress files (None: none written).
        flush_every_s: Least seconds between two progress file writes of one instance.
        log_every_s: Seconds between two progress log lines of one instance.
    """

    def __init__(
        self, stage: str, origin_s: float, size_fn: Optional[Callable[[Any], int]] = None,
        progress_dir: Optional[str] = None, flush_every_s: float = 5.0, log_every_s: float = 30.0,
    ):
        self._stage = stage
        self._origin = origin_s
        self._size_fn = size_fn
        self._dir = progress_dir
        self._flush_every = flush_every_s
        self._log_every = log_every_s
        self._elements = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}.elements")
        self._bytes = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}.bytes")
        self._seen = beam.metrics.Metrics.distribution(NAMESPACE, f"{stage}.seen_at_ms")

    def setup(self) -> None:
        self._id = uuid.uuid4().hex[:12]
        self._count = self._size = self._flushed = 0
        self._first: Optional[float] = None
        self._next_flush = self._next_log = 0.0

    def process(self, element: Any) -> Iterator[Any]:
        now = time.time()
        self._count += 1
        self._first = self._first or now
        self._elements.inc()
        self._seen.update(int(1000 * (now - self._origin)))
        if self._size_fn is not None:
            size = int(self._size_fn(element))
            self._size += size
            self._bytes.inc(size)
        if now >= self._next_flush:
            self._flush(now)
        if now >= self._next_log:
            self._next_log = now + self._log_every
            rate = self._count / max(now - self._first, 1e-3)
            _LOG.info("%s: %d elements on this worker, %.1f/s", self._stage, self._count, rate)
        yield element

    def finish_bundle(self) -> None:
        self._flush(time.time())  # a bundle's end is a commit point: its count is final

    def _flush(self, now: float) -> None:
        self._next_flush = now + self._flush_every
        if self._dir is None or self._count == self._flushed:
            return
        record = {"stage": self._stage, "count": self._count, "bytes": self._size, "first": self._first, "time": now}
        write_atomic(FileSystems.join(self._dir, f"{self._stage}-{self._id}.json"), json.dumps(record).encode())
        self._flushed = self._count


def read_progress(progress_dir: str) -> Dict[str, int]:
    """Sums the live progress files under ``progress_dir``: stage → elements so far."""
    totals: Dict[str, int] = {}
    for result in FileSystems.match([FileSystems.join(progress_dir, "*.json")]):
        for meta in result.metadata_list:
            try:
                with FileSystems.open(meta.path) as f:
                    record = json.loads(f.read())
            except (IOError, ValueError):  # replaced between listing and reading: next poll
                continue
            totals[record["stage"]] = totals.get(record["stage"], 0) + int(record["count"])
    return totals


class CountDeadLetters(beam.DoFn):
    """Counts dead letters as ``DeadLetters/<stage>`` and ``DeadLetters/<stage>.<error_type>``."""

    def process(self, dead: DeadLetter) -> Iterator[DeadLetter]:
        beam.metrics.Metrics.counter(DEAD_LETTER_NAMESPACE, dead.stage).inc()
        beam.metrics.Metrics.counter(DEAD_LETTER_NAMESPACE, f"{dead.stage}.{dead.error_type}").inc()
        yield dead


def member_bytes(sample: Any) -> int:
    """Total payload bytes of a ``MediaSample`` (for ``CountStage(size_fn=...)``)."""
    return sum(len(v) for v in sample.members.values())
