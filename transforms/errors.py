"""The dead-letter policy: a failed record becomes a ``DeadLetter`` row, never a crash."""

from typing import Any, Iterator, Optional

import apache_beam as beam

from schemas.common import DeadLetter

DEAD_LETTER_TAG = "dead_letters"


def as_dead_letter(
    key: str, source: str, stage: str, error: BaseException, message: Optional[str] = None
) -> DeadLetter:
    """The ``DeadLetter`` row for an exception raised at stage ``stage``."""
    return DeadLetter(
        key=key,
        source=source,
        stage=stage,
        error_type=type(error).__name__,
        message=(message or str(error) or repr(error))[:2000],
    )


def dead_letter(
    key: str, source: str, stage: str, error: BaseException, message: Optional[str] = None
) -> beam.pvalue.TaggedOutput:
    """Wraps an exception as a tagged ``DeadLetter`` output of stage ``stage``."""
    return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, as_dead_letter(key, source, stage, error, message))


def count(namespace: str, name: str, n: int = 1) -> None:
    """Increments a Beam counter ``namespace/name``."""
    beam.metrics.Metrics.counter(namespace, name).inc(n)


class SplitDeadLetters(beam.DoFn):
    """Routes ``DeadLetter`` results to ``DEAD_LETTER_TAG`` and the rest to the main output.

    RunInference handlers return a dead letter in place of a failed record's result; this
    step separates the two and counts them under ``namespace``. Override ``count_row`` to
    count more per row.

    Args:
        namespace: Metrics namespace (the stage label).
        rows_counter: Counter name for successful rows.
    """

    def __init__(self, namespace: str, rows_counter: str = "rows"):
        self._namespace = namespace
        self._rows_counter = rows_counter

    def count_row(self, row: Any) -> None:
        """Counts one successful row."""
        count(self._namespace, self._rows_counter)

    def process(self, result: Any) -> Iterator:
        if isinstance(result, DeadLetter):
            count(self._namespace, "dead_letters")
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, result)
        else:
            self.count_row(result)
            yield result
