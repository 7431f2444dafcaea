"""The dead-letter policy: a failed record becomes a ``DeadLetter`` row, never a crash."""

from typing import Optional

import apache_beam as beam

from schemas.common import DeadLetter

DEAD_LETTER_TAG = "dead_letters"


def dead_letter(
    key: str, source: str, stage: str, error: BaseException, message: Optional[str] = None
) -> beam.pvalue.TaggedOutput:
    """Wraps an exception as a tagged ``DeadLetter`` output of stage ``stage``."""
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG,
        DeadLetter(
            key=key,
            source=source,
            stage=stage,
            error_type=type(error).__name__,
            message=(message or str(error) or repr(error))[:2000],
        ),
    )


def count(namespace: str, name: str, n: int = 1) -> None:
    """Increments a Beam counter ``namespace/name``."""
    beam.metrics.Metrics.counter(namespace, name).inc(n)
