"""Operability steps: per-stage Beam metrics and worker-side progress logs.

:class:`CountStage` is a pass-through step that any job drops between two stages. It keeps
``Progress/<stage>.elements`` and ``Progress/<stage>.bytes`` counters and a distribution
``Progress/<stage>.seen_at_ms`` of when elements passed (milliseconds since the job was
built): its min and max over all workers say when the stage was active, on any runner
that reports distributions (see ``pipelines.operability.stage_throughput``). Every ``log_every_s`` each worker logs how many elements it passed and its
rate, which is what a person tailing worker logs on Dataflow or Flink sees while the job
runs. :class:`CountDeadLetters` counts dead letters per stage and error type.
"""

import logging
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from schemas.common import DeadLetter

NAMESPACE = "Progress"
DEAD_LETTER_NAMESPACE = "DeadLetters"
_LOG = logging.getLogger(__name__)


class CountStage(beam.DoFn):
    """Passes elements through, counting them (and their size) under ``stage``.

    Args:
        stage: Stage label used in the metric names.
        origin_s: Wall-clock time (``time.time()``) the job was built; timestamps are kept
            relative to it so the distribution sums stay small.
        size_fn: Optional picklable ``element -> bytes`` for the ``.bytes`` counter.
        log_every_s: Seconds between two progress log lines of one worker.
    """

    def __init__(
        self, stage: str, origin_s: float, size_fn: Optional[Callable[[Any], int]] = None,
        log_every_s: float = 30.0,
    ):
        self._stage = stage
        self._origin = origin_s
        self._size_fn = size_fn
        self._log_every = log_every_s
        self._elements = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}.elements")
        self._bytes = beam.metrics.Metrics.counter(NAMESPACE, f"{stage}.bytes")
        self._seen = beam.metrics.Metrics.distribution(NAMESPACE, f"{stage}.seen_at_ms")

    def setup(self) -> None:
        self._count = 0
        self._first = None
        self._next_log = time.time() + self._log_every

    def process(self, element: Any) -> Iterator[Any]:
        now = time.time()
        self._count += 1
        self._first = self._first or now
        self._elements.inc()
        self._seen.update(int(1000 * (now - self._origin)))
        if self._size_fn is not None:
            self._bytes.inc(int(self._size_fn(element)))
        if now >= self._next_log:
            self._next_log = now + self._log_every
            rate = self._count / max(now - self._first, 1e-3)
            _LOG.info("%s: %d elements on this worker, %.1f/s", self._stage, self._count, rate)
        yield element


class CountDeadLetters(beam.DoFn):
    """Counts dead letters as ``DeadLetters/<stage>`` and ``DeadLetters/<stage>.<error_type>``."""

    def process(self, dead: DeadLetter) -> Iterator[DeadLetter]:
        beam.metrics.Metrics.counter(DEAD_LETTER_NAMESPACE, dead.stage).inc()
        beam.metrics.Metrics.counter(DEAD_LETTER_NAMESPACE, f"{dead.stage}.{dead.error_type}").inc()
        yield dead


def member_bytes(sample: Any) -> int:
    """Total payload bytes of a ``MediaSample`` (for ``CountStage(size_fn=...)``)."""
    return sum(len(v) for v in sample.members.values())
