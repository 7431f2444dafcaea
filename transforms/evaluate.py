"""EvaluateTokenizers: every sample through every tokenizer setting of its modalities and back,
measured (``operators/quality``), one ``QualityRow`` per (sample, setting).

A record of this step is one (sample, setting) evaluation, so the sink's accounting
(records = rows + dead letters + filtered) counts evaluations: a sample evaluated at N settings
adds N − 1 records to its shard's read count (a ``ShardStats`` on ``STATS_TAG``), and a sample
with no member for any evaluated tokenizer is ``Filtered``. One failed evaluation is one dead
letter (its message names the tokenizer and setting); the sample's other settings still count.
"""

import functools
from typing import Any, FrozenSet, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from operators.quality.measures import Measurer
from operators.quality.rate import rate_of
from operators.quality.round_trip import ROUND_TRIPS
from operators.tokenizers.base import first_member
from operators.tokenizers.registry import build_tokenizer, tokenizer_modality
from schemas.common import Filtered, MediaSample
from schemas.quality import QualityRow, Setting
from transforms.errors import DEAD_LETTER_TAG, as_dead_letter, count
from transforms.io.read_shards import ShardStats

STAGE = "Evaluate"
STATS_TAG = "stats"
FILTERED_TAG = "filtered"
NO_MEMBER = "no member of an evaluated modality"
TRANSCRIPT_MEMBER = "transcript.txt"
"""A sample's member (``<key>.transcript.txt``) holding a person's transcript of its audio (UTF-8)."""


class EvaluateTokenizersFn(beam.DoFn):
    """Evaluates one sample at every applicable setting (see the module docstring).

    Outputs: ``QualityRow`` (main), ``DeadLetter`` (``DEAD_LETTER_TAG``), ``Filtered``
    (``FILTERED_TAG``) and ``ShardStats`` (``STATS_TAG``).

    Args:
        settings: The configurations to evaluate.
        asr_model: ``.nemo`` file of the recogniser for the ASR measures (None: no ASR).
        x3d: ``(variant, checkpoint or None for seeded random weights)`` of the X3D network for
            the video agreement measure (None: no such measure).
        cnn_model: ``TinyCNN`` state dict for the image agreement measure (None: no such measure).
        retried_sources: Shards re-run by ``--retry-dead-letters``: their read counts come from
            their manifests, which already count every evaluation, so no stats are added for them.
        threads: torch intra-op threads on the worker.
    """

    def __init__(self, settings: Sequence[Setting], asr_model: Optional[str] = None,
                 x3d: Optional[Tuple[str, Optional[str]]] = None, cnn_model: Optional[str] = None,
                 retried_sources: FrozenSet[str] = frozenset(), threads: int = 1):
        self._settings = list(settings)
        self._asr_model = asr_model
        self._x3d = x3d
        self._cnn_model = cnn_model
        self._retried = frozenset(retried_sources)
        self._threads = threads

    def setup(self) -> None:
        self._tokenizers = [build_tokenizer(s.tokenizer, **s.kwargs) for s in self._settings]
        self._modalities = [tokenizer_modality(s.tokenizer) for s in self._settings]
        transcribe = classify = classify_image = None
        if self._asr_model is not None or self._x3d is not None or self._cnn_model is not None:
            import torch

            torch.set_num_threads(self._threads)
        if self._asr_model is not None:
            from operators.asr.nemo_checkpoint import load_nemo

            self._asr = load_nemo(self._asr_model)
            transcribe = self._transcribe
        if self._x3d is not None:
            from operators.quality.machine import x3d_clip_scores
            from operators.video.x3d import build_x3d

            classify = functools.partial(x3d_clip_scores, build_x3d(self._x3d[0], weights=self._x3d[1]).eval())
        if self._cnn_model is not None:
            from operators.compression.split_compute import load_model
            from operators.quality.machine import cnn_image_scores

            classify_image = functools.partial(cnn_image_scores, load_model(self._cnn_model))
        self._measurer = Measurer(transcribe, classify, classify_image)

    def _transcribe(self, wave: np.ndarray) -> str:
        return self._asr.transcribe([np.asarray(wave, np.float32)])[0]

    def process(self, sample: MediaSample) -> Iterator[Any]:
        chosen = [i for i, m in enumerate(self._modalities) if first_member(sample.members, m) is not None]
        if not chosen:
            count(STAGE, "filtered")
            yield beam.pvalue.TaggedOutput(FILTERED_TAG, Filtered(sample.key, sample.source, NO_MEMBER))
            return
        if len(chosen) > 1 and sample.source not in self._retried:
            yield beam.pvalue.TaggedOutput(STATS_TAG, ShardStats(sample.source, len(chosen) - 1))
        human = sample.members.get(TRANSCRIPT_MEMBER)
        human_text = human.decode("utf-8", "replace").strip() if human is not None else None
        for i in chosen:
            setting, modality = self._settings[i], self._modalities[i]
            member, payload = first_member(sample.members, modality)
            try:
                row = self._evaluate(sample, setting, self._tokenizers[i], modality, member, payload, human_text)
            except Exception as err:  # the error policy: one failed evaluation is one dead letter
                count(STAGE, "dead_letters")
                message = f"{setting.tokenizer} {setting.label}: {type(err).__name__}: {err}"
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, as_dead_letter(
                    sample.key, sample.source, STAGE, err, message))
                continue
            count(STAGE, "rows")
            yield row

    def _evaluate(self, sample: MediaSample, setting: Setting, tokenizer: Any, modality: str, member: str,
                  payload: bytes, human_text: Optional[str]) -> QualityRow:
        trip = ROUND_TRIPS[setting.tokenizer](tokenizer, payload)
        rate = rate_of(trip.output.tokens, trip.output.meta)
        figures = self._measurer.measure(modality, trip, human_text if modality == "audio" else None)
        return QualityRow(
            key=sample.key, source=sample.source, member=member, modality=modality,
            tokenizer=setting.tokenizer, tokenizer_version=tokenizer.version, setting=setting.label,
            num_tokens=rate.num_tokens, source_bytes=len(payload), duration_s=rate.duration_s,
            tokens_per_s=rate.tokens_per_s, bits=rate.bits, bits_per_s=rate.bits_per_s, **figures,
        )


class EvaluateTokenizers(beam.PTransform):
    """Samples → ``{"rows", DEAD_LETTER_TAG, "filtered", "stats"}`` (see :class:`EvaluateTokenizersFn`)."""

    def __init__(self, settings: Sequence[Setting], asr_model: Optional[str] = None,
                 x3d: Optional[Tuple[str, Optional[str]]] = None, cnn_model: Optional[str] = None,
                 retried_sources: FrozenSet[str] = frozenset(), threads: int = 1):
        super().__init__()
        self._fn = EvaluateTokenizersFn(settings, asr_model, x3d, cnn_model, retried_sources, threads)

    def expand(self, samples):
        out = samples | "EvaluateSample" >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTER_TAG, FILTERED_TAG, STATS_TAG, main="rows")
        return {"rows": out.rows, DEAD_LETTER_TAG: out[DEAD_LETTER_TAG], "filtered": out[FILTERED_TAG],
                "stats": out[STATS_TAG]}

