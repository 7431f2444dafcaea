"""BuildDocuments: every sample becomes one document (all its members), a dead letter or a
filtered row; tokenizers run through Beam's RunInference."""

from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from operators.corpus.documents import DocumentBuilder
from operators.corpus.filters import DocumentFilters
from operators.corpus.templates import NotKept, Template
from operators.corpus.text_tokens import build_text_tokenizer
from operators.corpus.vocabulary import Vocabulary
from operators.tokenizers.registry import build_tokenizer
from schemas.common import DeadLetter, Filtered, MediaSample
from schemas.documents import DocumentRow, part_kind
from transforms.errors import DEAD_LETTER_TAG, SplitDeadLetters, as_dead_letter, count
from transforms.progress import member_bytes

STAGE = "Tokenize"
FILTERED_TAG = "filtered"
Result = Union[DocumentRow, DeadLetter, Filtered]


def document_result(builder: DocumentBuilder, sample: MediaSample) -> Result:
    """The sample's ``DocumentRow``; ``Filtered`` when it is deliberately not kept; any other
    failure is a ``DeadLetter`` (the error policy: one bad record never fails its batch)."""
    try:
        doc = builder.build(sample.members)
    except NotKept as kept:
        return Filtered(sample.key, sample.source, kept.reason)
    except Exception as err:  # the error policy: any failure of one record is a dead letter
        return as_dead_letter(sample.key, sample.source, STAGE, err)
    return DocumentRow(sample.key, sample.source, doc.template, doc.modality, doc.tokens, doc.parts,
                       doc.part_tokens, doc.duration_s, doc.width, doc.height, doc.source_bytes, doc.media_sha1)


class DocumentModelHandler(ModelHandler[MediaSample, Result, DocumentBuilder]):
    """RunInference handler whose "model" is every tokenizer of the corpus plus its vocabulary.

    Small picklable configuration; ``load_model`` builds the tokenizers on the worker and
    checks that they are exactly the ones the vocabulary names (same versions), so a worker
    with other model files fails loudly instead of writing ids that mean something else.

    Args:
        tokenizers: ``[(registry name, constructor kwargs)]``, one per modality.
        text_tokenizer: Path of a ``tokenizer.json``, or None for UTF-8 bytes.
        vocabulary: ``Vocabulary.to_json()`` of the corpus.
        template: ``Template.to_json()``, or None to pick one per sample's modality mix.
        filters: ``DocumentFilters.to_json()`` (thresholds that are set; empty: keep all).
        max_batch_size: Samples per ``run_inference`` call.
    """

    def __init__(self, tokenizers: Sequence[Tuple[str, Dict[str, Any]]], text_tokenizer: Optional[str],
                 vocabulary: Dict[str, Any], template: Optional[Dict[str, Any]],
                 filters: Optional[Dict[str, Any]] = None, max_batch_size: int = 32):
        super().__init__()
        self._tokenizers = [(name, dict(kwargs)) for name, kwargs in tokenizers]
        self._text = text_tokenizer
        self._vocabulary = vocabulary
        self._template = template
        self._filters = dict(filters or {})
        self._max_batch_size = max_batch_size

    def load_model(self) -> DocumentBuilder:
        vocabulary = Vocabulary.from_json(self._vocabulary)
        media = {}
        for name, kwargs in self._tokenizers:
            tokenizer = build_tokenizer(name, **kwargs)
            media[tokenizer.modality] = tokenizer
        text = build_text_tokenizer(self._text)
        for token_range in vocabulary.ranges:
            tokenizer = text if token_range.kind == "text" else media[token_range.kind]
            if (tokenizer.name, str(tokenizer.version)) != (token_range.tokenizer, token_range.version):
                raise RuntimeError(f"this worker's {token_range.kind} tokenizer is {tokenizer.name}@{tokenizer.version}"
                                   f" but the corpus vocabulary names {token_range.tokenizer}@{token_range.version}")
        template = Template.from_json(self._template) if self._template else None
        filters = DocumentFilters(**self._filters) if self._filters else None
        return DocumentBuilder(vocabulary, media, text, template, filters)

    def run_inference(self, batch: Sequence[MediaSample], model: DocumentBuilder,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[Result]:
        return [document_result(model, sample) for sample in batch]

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        # A fixed size: Beam's adaptive sizing (min < max) keeps codec batches at 2-3 items.
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}

    def get_num_bytes(self, batch: Sequence[MediaSample]) -> int:
        # Beam's default pickles every batch of raw media once more just for this metric.
        return sum(member_bytes(sample) for sample in batch)

    def get_metrics_namespace(self) -> str:
        return "BuildDocuments"


class SplitDocuments(SplitDeadLetters):
    """Documents to the main output, ``Filtered`` to ``FILTERED_TAG``, dead letters to theirs
    (counted as ``built``, ``filtered`` and ``dead_letters``)."""

    def __init__(self):
        super().__init__(STAGE, rows_counter="built")

    def process(self, result: Result) -> Iterator:
        if isinstance(result, Filtered):
            count(STAGE, "filtered")
            yield beam.pvalue.TaggedOutput(FILTERED_TAG, result)
            return
        yield from super().process(result)


class CountDocuments(beam.DoFn):
    """Counts the documents that are written (after dedup): per modality, tokens, tokens per
    part kind (``Tokenize/rows_image``, ``Tokenize/tokens``, ``Tokenize/tokens_text`` ...)."""

    def process(self, row: DocumentRow) -> Iterator[DocumentRow]:
        count(STAGE, f"rows_{row.modality}")
        count(STAGE, "tokens", int(row.tokens.size))
        for part, n in zip(row.parts, row.part_tokens):
            count(STAGE, f"tokens_{part_kind(part)}", int(n))
        yield row


class BuildDocuments(beam.PTransform):
    """``MediaSample`` → ``{"rows": DocumentRow, "dead_letters": DeadLetter, "filtered": Filtered}``.

    Args:
        handler: The corpus's ``DocumentModelHandler``.
    """

    def __init__(self, handler: DocumentModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, samples):
        split = (samples
                 | "TokenizeDocuments" >> RunInference(self._handler)
                 | "SplitDocuments" >> beam.ParDo(SplitDocuments()).with_outputs(
                     DEAD_LETTER_TAG, FILTERED_TAG, main="rows"))
        return {"rows": split.rows, DEAD_LETTER_TAG: split[DEAD_LETTER_TAG], FILTERED_TAG: split[FILTERED_TAG]}
