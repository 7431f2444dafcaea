"""Transcription transforms: decode audio files, run the ASR operator through RunInference."""

import json
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, RunInference

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo
from operators.asr.streaming import StreamingASR
from operators.media.decode import decode_audio
from schemas.asr import ASR_SCHEMA, AudioItem, TranscriptRow
from schemas.common import DeadLetter
from transforms.errors import DEAD_LETTER_TAG, SplitDeadLetters, as_dead_letter, count, dead_letter
from transforms.io.write_shards import dead_letter_table, parquet_bytes, write_atomic

DECODE_STAGE = "DecodeAudio"
STAGE = "Transcribe"


class DecodeAudioFn(beam.DoFn):
    """Path → ``AudioItem`` (16 kHz mono float32); undecodable files become dead letters."""

    def __init__(self, sample_rate: int = 16000, max_seconds: Optional[float] = None):
        self._rate = sample_rate
        self._max_seconds = max_seconds

    def process(self, path: str) -> Iterator:
        key = os.path.splitext(os.path.basename(path))[0]
        try:
            samples = decode_audio(path, sample_rate=self._rate, max_seconds=self._max_seconds)
        except Exception as err:  # the error policy: a bad file is a dead letter, not a failed job
            count(DECODE_STAGE, "dead_letters")
            yield dead_letter(key, path, DECODE_STAGE, err)
            return
        count(DECODE_STAGE, "files")
        yield AudioItem(key, path, samples)


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
    """

    def __init__(
        self,
        model_path: Optional[str] = None,
        att_context: Optional[Sequence[int]] = None,
        decoder: Optional[str] = None,
        streaming: bool = False,
        max_batch_size: int = 16,
    ):
        super().__init__()
        self._path = model_path or EMBEDDED_MODEL
        self._att_context = tuple(att_context) if att_context else None
        self._decoder = decoder
        self._streaming = streaming
        self._max_batch_size = max_batch_size

    def load_model(self) -> StreamingASR:
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
        except Exception:  # isolate the failing record(s): retry one by one
            results = []
            for item in batch:
                try:
                    results.extend(self._transcribe([item], model))
                except Exception as err:
                    results.append(as_dead_letter(item.key, item.source, STAGE, err))
            return results

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_metrics_namespace(self) -> str:
        return STAGE


class TranscribeFiles(beam.PTransform):
    """Audio file paths → ``{"rows": TranscriptRow, DEAD_LETTER_TAG: DeadLetter}``."""

    def __init__(self, handler: ASRModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, paths):
        decoded = paths | "DecodeAudio" >> beam.ParDo(DecodeAudioFn()).with_outputs(DEAD_LETTER_TAG, main="audio")
        split = (
            decoded.audio
            | "RunASR" >> RunInference(self._handler)
            | "SplitTranscripts" >> beam.ParDo(SplitDeadLetters(STAGE, "transcripts")).with_outputs(DEAD_LETTER_TAG, main="rows")
        )
        dead = (decoded[DEAD_LETTER_TAG], split[DEAD_LETTER_TAG]) | "FlattenDeadLetters" >> beam.Flatten()
        return {"rows": split.rows, DEAD_LETTER_TAG: dead}


def transcript_table(rows: Sequence[TranscriptRow]) -> pa.Table:
    """Builds an ``ASR_SCHEMA`` table (rows sorted by key for reproducible files)."""
    rows = sorted(rows, key=lambda r: (r.key, r.source))
    return pa.table({name: [getattr(r, name) for r in rows] for name in ASR_SCHEMA.names}, schema=ASR_SCHEMA)


def _jsonl(records: Sequence[Dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


class WriteTableFn(beam.DoFn):
    """Writes all rows of one kind to one file, atomically (Parquet or JSON lines by suffix)."""

    def __init__(self, path: str, dead_letters: bool):
        self._path = path
        self._dead = dead_letters

    def process(self, rows: Sequence[Any]) -> Iterator[str]:
        table = dead_letter_table(rows) if self._dead else transcript_table(rows)
        if self._path.endswith(".jsonl"):
            data = _jsonl(table.to_pylist())
        else:
            data = parquet_bytes(table)
        write_atomic(self._path, data)
        yield self._path


def dead_letter_path(output: str) -> str:
    """``out.parquet`` → ``out.dead_letters.parquet`` (same format as the output)."""
    stem, ext = os.path.splitext(output)
    return f"{stem}.dead_letters{ext}"


class WriteTranscripts(beam.PTransform):
    """Writes transcripts to ``output`` and dead letters next to it; yields the written paths."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, results):
        written = []
        for tag, path, dead in (("rows", self._output, False), (DEAD_LETTER_TAG, dead_letter_path(self._output), True)):
            written.append(
                results[tag]
                | f"Collect{'DeadLetters' if dead else 'Transcripts'}" >> beam.combiners.ToList()
                | f"Write{'DeadLetters' if dead else 'Transcripts'}" >> beam.ParDo(WriteTableFn(path, dead))
            )
        return written | "FlattenWritten" >> beam.Flatten()
