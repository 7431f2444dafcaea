"""Tokenize: routes samples by modality and runs tokenizers through Beam's RunInference."""

import hashlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from operators.tokenizers.base import Tokenizer, first_member
from operators.tokenizers.registry import build_tokenizer
from schemas.common import DeadLetter, MediaSample
from schemas.corpus import CorpusRow
from transforms.errors import DEAD_LETTER_TAG, SplitDeadLetters, as_dead_letter, count, dead_letter
from transforms.progress import member_bytes

STAGE = "Tokenize"
ROUTE_STAGE = "RouteByModality"
MODALITY_ORDER = ("video", "image", "audio")


def _opt(meta: Dict[str, Any], name: str, kind: type) -> Optional[Any]:
    value = meta.get(name)
    return None if value is None else kind(value)


def tokenize_sample(tokenizer: Tokenizer, sample: MediaSample) -> Union[CorpusRow, DeadLetter]:
    """Tokenizes the sample's first member of the tokenizer's modality; errors become rows."""
    found = first_member(sample.members, tokenizer.modality)
    if found is None:
        return DeadLetter(
            sample.key, sample.source, STAGE, "NoMediaMember",
            f"no {tokenizer.modality} member among {sorted(sample.members)}",
        )
    ext, payload = found
    try:
        out = tokenizer.encode(payload)
    except Exception as err:  # the error policy: any failure of one record is a dead letter
        return as_dead_letter(sample.key, sample.source, STAGE, err)
    tokens = np.ascontiguousarray(out.tokens, dtype=np.int32)
    meta = out.meta
    return CorpusRow(
        key=sample.key,
        source=sample.source,
        modality=tokenizer.modality,
        member=ext,
        tokenizer=tokenizer.name,
        tokenizer_version=tokenizer.version,
        tokens=tokens.reshape(-1),
        token_shape=tuple(int(d) for d in tokens.shape),
        duration_s=_opt(meta, "duration_s", float),
        width=_opt(meta, "width", int),
        height=_opt(meta, "height", int),
        num_frames=_opt(meta, "num_frames", int),
        sample_rate=_opt(meta, "sample_rate", int),
        source_bytes=len(payload),
        sha1=hashlib.sha1(payload).hexdigest(),
    )


class TokenizerModelHandler(ModelHandler[MediaSample, Union[CorpusRow, DeadLetter], Tokenizer]):
    """RunInference handler for any tokenizer in ``operators.tokenizers.registry``.

    The handler is small picklable configuration; ``load_model`` builds the tokenizer on the
    worker. Per-record failures come back as ``DeadLetter`` results instead of failing the
    whole batch, so one bad file never takes its batch-mates down with it.

    Args:
        tokenizer: Registry name (``jpeg``, ``avc``, ``opus``, ...).
        tokenizer_kwargs: Keyword arguments for the tokenizer's factory.
        max_batch_size: Largest batch handed to one ``run_inference`` call.
    """

    def __init__(
        self, tokenizer: str, tokenizer_kwargs: Optional[Dict[str, Any]] = None, max_batch_size: int = 32
    ):
        super().__init__()
        self._name = tokenizer
        self._kwargs = dict(tokenizer_kwargs or {})
        self._max_batch_size = max_batch_size

    def load_model(self) -> Tokenizer:
        return build_tokenizer(self._name, **self._kwargs)

    def run_inference(
        self, batch: Sequence[MediaSample], model: Tokenizer, inference_args: Optional[Dict[str, Any]] = None
    ) -> Iterable[Union[CorpusRow, DeadLetter]]:
        return [tokenize_sample(model, sample) for sample in batch]

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        # A fixed size: Beam's adaptive sizing (min < max) fits a regression after every
        # batch and keeps codec batches at 2-3 items, costing more than the batches save.
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}

    def get_num_bytes(self, batch: Sequence[MediaSample]) -> int:
        # Beam's default pickles every batch of raw media once more just for this metric.
        return sum(member_bytes(sample) for sample in batch)

    def get_metrics_namespace(self) -> str:
        return f"Tokenize-{self._name}"


class RouteByModality(beam.DoFn):
    """Sends each sample to exactly one modality: the first (video, image, audio) it has a
    member of and a tokenizer for; samples with none become dead letters."""

    def __init__(self, modalities: Sequence[str]):
        self._modalities = [m for m in MODALITY_ORDER if m in modalities]

    def process(self, sample: MediaSample) -> Iterator:
        for modality in self._modalities:
            if first_member(sample.members, modality) is not None:
                yield beam.pvalue.TaggedOutput(modality, sample)
                return
        err = ValueError(
            f"sample has no member of a tokenized modality {self._modalities}; "
            f"members: {sorted(sample.members)}"
        )
        yield dead_letter(sample.key, sample.source, ROUTE_STAGE, err)


class SplitResults(SplitDeadLetters):
    """Separates RunInference results into corpus rows and dead letters, counting rows per
    modality and tokens."""

    def __init__(self):
        super().__init__(STAGE)

    def count_row(self, row: CorpusRow) -> None:
        count(STAGE, f"rows_{row.modality}")
        count(STAGE, "tokens", int(row.tokens.size))


class TokenizeSamples(beam.PTransform):
    """Tokenizes samples with one tokenizer per modality.

    Returns a dict with ``"rows"`` (``CorpusRow``) and ``"dead_letters"``.

    Args:
        tokenizers: Modality to ``TokenizerModelHandler``.
    """

    def __init__(self, tokenizers: Dict[str, TokenizerModelHandler]):
        super().__init__()
        self._handlers = dict(tokenizers)

    def expand(self, samples):
        modalities = sorted(self._handlers)
        routed = samples | "RouteByModality" >> beam.ParDo(RouteByModality(modalities)).with_outputs(
            DEAD_LETTER_TAG, *modalities
        )
        results: List = []
        for modality in modalities:
            results.append(
                routed[modality]
                | f"Tokenize{modality.capitalize()}" >> RunInference(self._handlers[modality])
            )
        split = (
            results
            | "FlattenResults" >> beam.Flatten()
            | "SplitResults" >> beam.ParDo(SplitResults()).with_outputs(DEAD_LETTER_TAG, main="rows")
        )
        dead = (routed[DEAD_LETTER_TAG], split[DEAD_LETTER_TAG]) | "FlattenDeadLetters" >> beam.Flatten()
        return {"rows": split.rows, DEAD_LETTER_TAG: dead}
