"""``mediabeam transcribe FILES... --output out.parquet``: speech to text with the streaming ASR model.

Works out of the box with the embedded model (spoken digits and commands, trained by
``mediabeam train-asr``); ``--model`` takes any supported NeMo ``.nemo`` FastConformer CTC or hybrid
RNNT/CTC streaming checkpoint. Files that cannot be decoded or transcribed become rows of
``<output stem>.dead_letters.<ext>``; every input ends up in exactly one of the two files.
"""

import argparse
import json
import os
from typing import Optional, Sequence, Tuple

from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from transforms.asr import ASRModelHandler, TranscribeFiles, WriteTranscripts, dead_letter_path

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv")


def parse_context(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"70,13"`` → ``(70, 13)``; ``None`` stays ``None`` (the model's default)."""
    if value is None:
        return None
    try:
        left, right = (int(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"--att-context {value!r} must look like 70,13 (left,right frames of 80 ms)")
    return left, right


def _files(patterns: Sequence[str]):
    files = []
    for path in expand_inputs(patterns):
        if os.path.isdir(path):
            files.extend(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in sorted(names)
                if name.lower().endswith(AUDIO_SUFFIXES)
            )
        else:
            files.append(path)
    return sorted(dict.fromkeys(files))


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> dict:
    """Builds and runs the transcription pipeline; returns a summary (files, transcripts, dead letters)."""
    parser = argparse.ArgumentParser(prog="mediabeam transcribe", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="audio files, globs or folders")
    parser.add_argument("--model", default=None, help=".nemo model (default: the embedded model)")
    parser.add_argument("--output", required=True, help="out.parquet or out.jsonl")
    parser.add_argument("--att-context", default=None, help="look-ahead as L,R (e.g. 70,13 or 70,0)")
    parser.add_argument("--decoder", choices=("ctc", "rnnt"), default=None, help="hybrid models: which head")
    parser.add_argument("--streaming", action="store_true",
                        help="transcribe through the cache-aware streaming steps (same transcripts)")
    parser.add_argument("--batch-size", type=int, default=16, help="files per model call")
    args, options = parse_job_args(parser, argv)
    if not args.output.endswith((".parquet", ".jsonl")):
        raise ConfigError(f"--output {args.output!r} must end in .parquet or .jsonl")
    if args.model is not None and not os.path.isfile(args.model):
        raise ConfigError(f"--model {args.model!r} does not exist; pass a .nemo file or omit it for the default")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    context = parse_context(args.att_context)
    files = _files(args.files)
    if not files:
        raise ConfigError(f"no audio files found in {args.files}")
    handler = ASRModelHandler(args.model, context, args.decoder, args.streaming, args.batch_size)

    import apache_beam as beam

    pipeline = create_pipeline(options, test_pipeline)
    results = pipeline | "ListFiles" >> beam.Create(files) | "Transcribe" >> TranscribeFiles(handler)
    _ = results | "WriteOutputs" >> WriteTranscripts(os.path.abspath(args.output))
    outcome = pipeline.run()
    outcome.wait_until_finish()
    counters = {
        f"{m.key.metric.namespace}/{m.key.metric.name}": m.committed
        for m in outcome.metrics().query()["counters"]
    }
    summary = {
        "files": len(files),
        "transcripts": counters.get("Transcribe/transcripts", 0),
        "dead_letters": counters.get("DecodeAudio/dead_letters", 0) + counters.get("Transcribe/dead_letters", 0),
        "output": os.path.abspath(args.output),
        "dead_letter_output": dead_letter_path(os.path.abspath(args.output)),
    }
    print(json.dumps(summary))
    return summary
