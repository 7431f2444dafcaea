"""transcribe: speech to text with the streaming FastConformer ASR model, one row per audio record.

Example::

    mediabeam transcribe --input recordings/ --output out/asr
    mediabeam transcribe --input 'audio/shard-{000000..000009}.tar' --output out/asr \\
        --model fastconformer.nemo --att-context 70,13 --decoder ctc

Every input is one shard: a WebDataset tar shard (first audio member of each sample, else
the audio track of its first video member), a folder (every audio file under it, keyed by
its relative path with the extension) or a single audio file. Works out of the box with the
embedded model (spoken digits and commands, trained by ``mediabeam train-asr``);
``--model`` takes a NeMo ``.nemo`` FastConformer CTC or hybrid RNNT/CTC streaming
checkpoint. Clips are batched by length, so a model call pads little.
"""

import argparse
from typing import Any, Dict, List, Optional, Sequence

from operators.asr.embedded_vocabulary import WORDS, describe
from pipelines.asr_flags import check_asr_model, parse_context
from pipelines.common import ConfigError
from pipelines.job import Job, Retry

SAMPLE_RATE = 16000


class Transcribe(Job):
    """The transcribe job (see the module docstring)."""

    name = "transcribe"
    description = __doc__
    input_help = ("tar shards, folders of audio files, audio files, globs or brace ranges "
                  "(each one is a shard of the output)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=None, help=f".nemo model (default: the embedded model; {describe()})")
        parser.add_argument("--att-context", default=None, help="look-ahead as L,R (e.g. 70,13 or 70,0)")
        parser.add_argument("--decoder", choices=("ctc", "rnnt"), default=None,
                            help="hybrid models: which head (default: rnnt for hybrid models)")
        parser.add_argument("--streaming", action="store_true",
                            help="transcribe through the cache-aware streaming steps (same transcripts)")
        parser.add_argument("--batch-size", type=int, default=16, help="most clips per model call")
        parser.add_argument("--batch-seconds", type=float, default=120.0,
                            help="most padded audio seconds per model call (clips x longest clip)")

    def validate(self, args: argparse.Namespace) -> None:
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if args.batch_seconds <= 0:
            raise ConfigError("--batch-seconds must be positive, e.g. 120")
        args.context = parse_context(args.att_context)
        check_asr_model(args.model, "--model", args.context, args.decoder,
                        alternative=" (or omit --model for the embedded model)")

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.asr import TRANSCRIPTS_TABLE

        return TRANSCRIPTS_TABLE

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.asr import ASRModelHandler, TranscribeAudio
        from transforms.errors import DEAD_LETTER_TAG
        from transforms.read_audio import FILTERED_TAG, ReadAudio

        reads = []
        stats = pipeline | "NoShardStats" >> beam.Create([])
        if sources:
            read = pipeline | "ReadAudio" >> ReadAudio(sources, budgets=args.budgets)
            stats = read["stats"] | "CountShardsRead" >> self.count("ShardsRead")
            reads.append(read)
        if retry:
            again = pipeline | "ReadRetriedAudio" >> ReadAudio(retry.sources, keep=retry.keys, budgets=args.budgets)
            _ = again["stats"] | "CountRetriedShardsRead" >> self.count("ShardsRead")  # progress only
            reads.append(again)
        audio = (
            [r["audio"] for r in reads] | "AllAudio" >> beam.Flatten(pipeline=pipeline)
            | "CountRead" >> self.count("Read", size_fn=audio_bytes)
        )
        handler = ASRModelHandler(args.model, args.context, args.decoder, args.streaming, args.batch_size, args.threads)
        transcribed = audio | "Transcribe" >> TranscribeAudio(handler, int(args.batch_seconds * SAMPLE_RATE))
        rows = transcribed["rows"] | "CountTranscribe" >> self.count("Transcribe")
        dead = [*(r[DEAD_LETTER_TAG] for r in reads), transcribed[DEAD_LETTER_TAG]] | "AllDeadLetters" >> beam.Flatten()
        filtered = [r[FILTERED_TAG] for r in reads] | "AllFiltered" >> beam.Flatten(pipeline=pipeline)
        return {"rows": rows, DEAD_LETTER_TAG: dead, "stats": stats, "filtered": filtered}

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "transcripts": sum(m["rows"] for m in manifests),
            "audio_s": round(sum(m.get("audio_s", 0.0) for m in manifests), 3),
            "models": sorted({name for m in manifests for name in m.get("models", [])}),
            **({"embedded_model_words": WORDS} if args.model is None else {}),
        }


def audio_bytes(item: Any) -> int:
    """Decoded bytes of an ``AudioItem`` (for the ``Read`` stage's byte counter)."""
    return int(item.samples.nbytes)


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> Dict[str, Any]:
    """Runs the transcribe job; returns the summary (also in ``summary.json``)."""
    return Transcribe().run(argv, test_pipeline)
