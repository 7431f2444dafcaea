"""build-corpus: sharded media in, a tokenized corpus (Parquet / WebDataset) out.

Examples::

    mediabeam build-corpus --input 'data/samples/shard-{000000..000003}.tar' --output out/demo
    mediabeam build-corpus --input shards/ --output out/c --tokenizer jpeg,opus \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    mediabeam build-corpus --input shards/ --output out/c --retry-dead-letters

The job runs unchanged on the in-process runner, ``multi_processing`` workers and portable
runners (Flink, Spark, Beam's job service, Dataflow); records cross stages as NumPy arrays
and plain Python values, never torch tensors (see ``docs/scale.md``). The corpus lands in
``<output>/corpus/*.parquet``; the common flags, progress line, ``summary.json`` and
``report.html`` are those of every batch job (``docs/jobs.md``).
"""

import argparse
from typing import Any, Dict, List, Sequence

from operators.tokenizers.registry import DEFAULT_TOKENIZER_FOR_MODALITY, TOKENIZERS, tokenizer_modality
from pipelines.common import ConfigError
from pipelines.job import Job, Retry
from pipelines.summary import sum_counters
from pipelines.tokenizer_options import csv, resolve

FORMAT_CHOICES = ("parquet", "webdataset")  # the sink's writers; format_writers() checks it again


class BuildCorpus(Job):
    """The corpus job: read shards, tokenize each sample with its modality's tokenizer, write."""

    name = "build-corpus"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokenizer", default="auto",
                            help=f"comma-separated tokenizers, at most one per modality, from {sorted(TOKENIZERS)}; "
                                 f"'auto' picks {DEFAULT_TOKENIZER_FOR_MODALITY} for --modalities")
        parser.add_argument("--modalities", default="image,video,audio",
                            help="modalities tokenized with --tokenizer auto (image, video, audio)")
        parser.add_argument("--tokenizer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                            help="keyword argument of a tokenizer's constructor, e.g. jpeg.size=128 (repeatable)")
        parser.add_argument("--rows-per-shard", type=int, default=10_000, help="most rows per output Parquet part")
        parser.add_argument("--format", default="parquet",
                            help=f"comma-separated output formats from {FORMAT_CHOICES}")
        parser.add_argument("--batch-size", type=int, default=32, help="largest tokenizer batch")

    def validate(self, args: argparse.Namespace) -> None:
        if args.rows_per_shard < 1 or args.batch_size < 1:
            raise ConfigError("--rows-per-shard and --batch-size must be at least 1")
        formats = csv(args.format)
        if not formats or any(f not in FORMAT_CHOICES for f in formats):
            raise ConfigError(f"--format {args.format!r}: choose from {FORMAT_CHOICES}")
        if args.retry_dead_letters and "parquet" not in formats:
            raise ConfigError("--retry-dead-letters reloads kept rows from the Parquet parts: keep parquet in --format")
        overridden = {name.split("=", 1)[0].strip() for name in args.budget}
        args.tokenizers = resolve(args.tokenizer, args.modalities, args.tokenizer_option,
                                  {name: getattr(args.budgets, name) for name in overridden})

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.tables import CORPUS_TABLE

        return CORPUS_TABLE

    def writers(self, args: argparse.Namespace) -> List[Any]:
        from transforms.io.writers import format_writers

        return format_writers(csv(args.format), args.rows_per_shard)

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.errors import DEAD_LETTER_TAG
        from transforms.tokenize import TokenizerModelHandler, TokenizeSamples

        handlers = {tokenizer_modality(name): TokenizerModelHandler(name, kwargs, args.batch_size)
                    for name, kwargs in args.tokenizers}
        read = self.read_media(pipeline, sources, args, retry)
        tokenized = read.samples | "TokenizeSamples" >> TokenizeSamples(handlers)
        rows = tokenized["rows"] | "CountTokenize" >> self.count("Tokenize")
        dead = (read.dead_letters, tokenized[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"rows": rows, DEAD_LETTER_TAG: dead, "stats": read.stats}

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        extras: Dict[str, Any] = {
            "tokens": sum(int(m.get("tokens", 0)) for m in manifests),
            "source_bytes": sum(int(m.get("source_bytes", 0)) for m in manifests),
        }
        for field in ("rows_by_modality", "tokens_by_modality"):
            extras[field] = sum_counters(manifests, field)
        extras["tokenizers"] = sorted({t for m in manifests for t in m.get("tokenizers", [])})
        return extras


def build_parser() -> argparse.ArgumentParser:
    """The job's flags (common and own; Beam's options are parsed separately)."""
    return BuildCorpus().parser()


def run(argv=None, test_pipeline=None) -> Dict[str, Any]:
    """Runs build-corpus; returns the summary (also in ``<output>/__job/summary.json``)."""
    return BuildCorpus().run(argv, test_pipeline)
