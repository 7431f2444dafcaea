"""Transcription in Beam: the ASR operator behind RunInference, over length-bucketed batches."""

import os
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo
from operators.asr.streaming import StreamingASR
from schemas.asr import AudioItem, TranscriptRow
from schemas.common import DeadLetter
from transforms.bucketing import BucketedRunInference
from transforms.errors import DEAD_LETTER_TAG, SplitDeadLetters, as_dead_letter

STAGE = "Transcribe"


class ASRModelHandler(ModelHandler[AudioItem, Union[TranscriptRow, DeadLetter], StreamingASR]):
    """RunInference handler for the streaming FastConformer operator.

    Small picklable configuration; ``load_model`` reads the ``.nemo`` archive on the worker.

    Args:
        model_path: ``.nemo`` archive (default: the embedded model).
        att_context: ``[L, R]`` look-ahead (default: the model's first context).
        decoder: ``ctc`` or ``rnnt`` (default: RNNT for hybrid models).
        streaming: Transcribe through the cache-aware steps instead of the offline forward
            (same transcripts; exercises the streaming path).
        max_batch_size: Largest batch of files per ``run_inference`` call.
        threads: Torch threads per worker process (None: leave torch's setting).
    """

    def __init__(
        self,
        model_path: Optional[str] = None,
        att_context: Optional[Sequence[int]] = None,
        decoder: Optional[str] = None,
        streaming: bool = False,
        max_batch_size: int = 16,
        threads: Optional[int] = None,
    ):
        super().__init__()
        self._path = model_path or EMBEDDED_MODEL
        self._att_context = tuple(att_context) if att_context else None
        self._decoder = decoder
        self._streaming = streaming
        self._max_batch_size = max_batch_size
        self._threads = threads

    def load_model(self) -> StreamingASR:
        if self._threads:
            torch.set_num_threads(self._threads)
        return load_nemo(self._path, self._att_context, self._decoder)

    def _row(self, item: AudioItem, text: str, tokens: Sequence[int], model: StreamingASR) -> TranscriptRow:
        return TranscriptRow(
            key=item.key,
            source=item.source,
            text=text,
            tokens=[int(t) for t in tokens],
            duration_s=len(item.samples) / model.config.mel.sample_rate,
            model=os.path.basename(self._path),
            att_context=f"{model.att_context[0]},{model.att_context[1]}",
            decoder=model.decoder,
            streaming=self._streaming,
        )

    def _transcribe(self, items: Sequence[AudioItem], model: StreamingASR):
        features, frames = model.features([np.asarray(item.samples, dtype=np.float32) for item in items])
        run = model.transcribe_features_streaming if self._streaming else model.transcribe_features
        ids = run(features, frames)
        return [self._row(item, model.vocabulary.decode(t), t, model) for item, t in zip(items, ids)]

    def run_inference(
        self, batch: Sequence[AudioItem], model: StreamingASR, inference_args: Optional[Dict[str, Any]] = None
    ) -> Iterable[Union[TranscriptRow, DeadLetter]]:
        try:
            return self._transcribe(batch, model)
        except Exception:  # noqa: BLE001 - isolate the failing record(s): retry one by one
            results = []
            for item in batch:
                try:
                    results.extend(self._transcribe([item], model))
                except Exception as err:  # noqa: BLE001 - the error policy: one bad clip is a dead letter
                    results.append(as_dead_letter(item.key, item.source, STAGE, err))
            return results

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_num_bytes(self, batch: Sequence[AudioItem]) -> int:
        """Payload bytes of a batch, summed from the arrays (Beam's default pickles the batch)."""
        return sum(int(np.asarray(item.samples).nbytes) for item in batch)

    def get_metrics_namespace(self) -> str:
        return STAGE


def audio_length(item: AudioItem) -> int:
    """Length of a clip in samples (the bucketing length)."""
    return len(item.samples)


class TranscribeAudio(beam.PTransform):
    """``AudioItem`` → ``{"rows": TranscriptRow, DEAD_LETTER_TAG: DeadLetter}``.

    Clips are batched by length (``transforms.bucketing``), so a model call pads little.

    Args:
        handler: The ASR handler (its ``max_batch_size`` caps clips per call).
        max_batch_samples: Cap on a batch's padded size (clips × longest clip, in samples).
        max_padding: Cap on a batch's padding fraction.
    """

    def __init__(self, handler: ASRModelHandler, max_batch_samples: int, max_padding: float = 0.2):
        super().__init__()
        self._handler = handler
        self._max_batch_samples = max_batch_samples
        self._max_padding = max_padding

    def expand(self, audio):
        split = (
            audio
            | "RunASR" >> BucketedRunInference(
                self._handler, audio_length, self._max_batch_samples, max_padding=self._max_padding
            )
            | "SplitTranscripts" >> beam.ParDo(SplitDeadLetters(STAGE, "transcripts")).with_outputs(
                DEAD_LETTER_TAG, main="rows"
            )
        )
        return {"rows": split.rows, DEAD_LETTER_TAG: split[DEAD_LETTER_TAG]}
