"""Unbounded live sources: framed chunks from TCP clients, or tailed recordings.

``ReadLiveFrames`` is an unbounded splittable DoFn (SDF) behind an ``Impulse``. Its
restriction is the offset range ``[0, ∞)`` of frames delivered. Each ``process`` call polls:
it drains the frames that arrived (waiting at most ``poll_seconds`` for the first), claims one
offset per frame, emits them and a ``PollEnd`` punctuation, and polls again while frames keep
coming, for up to ``bundle_seconds``; then it self-checkpoints with ``defer_remainder`` and the
runner resumes it in a new bundle. Fused consumers run as each poll is emitted, so a chunk
waits for the poll after it arrived, not for a bundle to end: the end of a bundle (committing
state, firing timers, Beam's per-bundle work) took about a quarter of a 32-stream ASR cycle,
and the bundle boundary now comes once per ``bundle_seconds``, not once per poll. This is
Beam's portable pattern for unbounded reads (FnApiRunner, Flink and Dataflow all run SDF
checkpoints); nothing here is runner-specific.

The receiving side lives in a process-wide *poller* (``transforms.live.pollers``: a TCP
listener with one reader thread per connection, or a file tailer) created on the worker on
first use and looked up by its spec, because sockets cannot be part of a restriction. On a distributed runner the
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

import sys
import time
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import Timestamp

from schemas.common import DeadLetter
from schemas.live import PollEnd
from transforms.errors import DEAD_LETTER_TAG, count
from transforms.live.pollers import STAGE, Poller, SourceSpec, poller_for

_END = sys.maxsize


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
    """The unbounded SDF: ``SourceSpec`` → ``LiveChunk`` and ``PollEnd`` (+ ``DeadLetter`` for bad frames)."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        spec: SourceSpec,
        tracker=beam.DoFn.RestrictionParam(_FramesRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks()),
    ) -> Iterator:
        poller = poller_for(spec)
        position = tracker.current_restriction().start
        until = time.time() + spec.bundle_seconds
        while True:
            items = poller.drain(spec.poll_seconds)
            for item in items:
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
            if items:
                yield beam.window.TimestampedValue(PollEnd(now), Timestamp(now))
            _check_stop(spec, poller, now)
            if not items or now >= until or poller.stopping_since is not None:
                break  # idle, or time for the bundle to end (state commits, timers fire)
        # Event time is arrival time: the watermark follows the wall clock even without frames,
        # so downstream event-time timers (stream expiry) fire on every runner.
        current = watermark.current_watermark()
        if current is None or Timestamp(now) > current:
            watermark.set_watermark(Timestamp(now))
        if poller.stopping_since is not None and now - poller.stopping_since >= spec.drain_seconds:
            poller.close()
            tracker.try_claim(_END)  # claims the rest: the restriction is done
            return
        tracker.defer_remainder()


def _check_stop(spec: SourceSpec, poller: Poller, now: float) -> None:
    """Marks the poller as stopping once a bounded run's condition holds (idle or over time)."""
    idle = spec.max_idle_seconds and now - poller.last_item >= spec.max_idle_seconds
    over = spec.stop_after_seconds and now - poller.started >= spec.stop_after_seconds
    if (idle or over) and poller.stopping_since is None:
        poller.stopping_since = now


class ReadLiveFrames(beam.PTransform):
    """``Impulse`` → ``{"chunks": LiveChunk and PollEnd, DEAD_LETTER_TAG: DeadLetter}`` from ``spec``."""

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
