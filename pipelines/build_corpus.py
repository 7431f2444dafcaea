"""build-corpus: sharded media in, a tokenized corpus (Parquet / WebDataset) out.

Example::

    mediabeam build-corpus --input 'data/samples/shard-{000000..000003}.tar' --output out/demo
    mediabeam build-corpus --input shards/ --output out/c --tokenizer jpeg,opus \\
        --runner FnApiRunner --direct_num_workers 2 --direct_running_mode multi_processing
"""

import argparse
import ast
import json
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from operators.registry import DEFAULT_TOKENIZER_FOR_MODALITY, TOKENIZERS, build_tokenizer, tokenizer_modality
from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from transforms.errors import DEAD_LETTER_TAG
from transforms.read_shards import ReadMediaShards
from transforms.tokenize import TokenizerModelHandler, TokenizeSamples
from transforms.write_shards import FORMATS, WriteCorpusShards, manifest_path, read_manifests, shard_stem, write_atomic


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags (Beam's options are parsed separately)."""
    parser = argparse.ArgumentParser(prog="mediabeam build-corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="tar shards, globs, brace ranges (shard-{000000..000009}.tar) or folders")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--tokenizer", default="auto",
                        help=f"comma-separated tokenizers, at most one per modality, from {sorted(TOKENIZERS)}; "
                             f"'auto' picks {DEFAULT_TOKENIZER_FOR_MODALITY} for --modalities")
    parser.add_argument("--modalities", default="image,video,audio",
                        help="modalities tokenized with --tokenizer auto (image, video, audio)")
    parser.add_argument("--tokenizer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="keyword argument for a tokenizer, e.g. jpeg.size=128 (repeatable)")
    parser.add_argument("--rows-per-shard", type=int, default=10_000, help="most rows per output part")
    parser.add_argument("--format", default="parquet", help=f"comma-separated output formats from {FORMATS}")
    parser.add_argument("--batch-size", type=int, default=32, help="largest tokenizer batch")
    parser.add_argument("--max-member-mb", type=float, default=2048, help="largest member read, in MB")
    parser.add_argument("--resume", action="store_true",
                        help="skip input shards whose output manifest already exists")
    return parser


def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def resolve_tokenizers(args: argparse.Namespace) -> Dict[str, TokenizerModelHandler]:
    """Maps modality → ModelHandler from the flags; bad names fail with the valid choices."""
    if args.tokenizer == "auto":
        modalities = _csv(args.modalities)
        unknown = [m for m in modalities if m not in DEFAULT_TOKENIZER_FOR_MODALITY]
        if unknown or not modalities:
            raise ConfigError(
                f"--modalities {args.modalities!r}: unknown modality {unknown}; "
                f"choose from {sorted(DEFAULT_TOKENIZER_FOR_MODALITY)}"
            )
        names = [DEFAULT_TOKENIZER_FOR_MODALITY[m] for m in modalities]
    else:
        names = _csv(args.tokenizer)
    options: Dict[str, Dict[str, Any]] = {}
    for option in args.tokenizer_option:
        try:
            target, value = option.split("=", 1)
            name, key = target.split(".", 1)
        except ValueError:
            raise ConfigError(f"--tokenizer-option {option!r} must look like NAME.KEY=VALUE, e.g. jpeg.size=128")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        options.setdefault(name, {})[key] = parsed
    handlers: Dict[str, TokenizerModelHandler] = {}
    for name in names:
        if name not in TOKENIZERS:
            raise ConfigError(f"--tokenizer {name!r} is unknown; choose from {sorted(TOKENIZERS)}")
        modality = tokenizer_modality(name)
        if modality in handlers:
            raise ConfigError(f"--tokenizer lists two tokenizers for {modality}; keep one per modality")
        kwargs = options.pop(name, {})
        try:
            build_tokenizer(name, **kwargs)  # constructors are cheap and validate their options
        except (TypeError, ValueError) as err:
            raise ConfigError(f"--tokenizer-option for {name!r} is invalid: {err}")
        handlers[modality] = TokenizerModelHandler(name, kwargs, args.batch_size)
    if options:
        raise ConfigError(f"--tokenizer-option names tokenizers not in use: {sorted(options)}")
    return handlers


def validate(args: argparse.Namespace) -> List[str]:
    """Checks every flag before the pipeline starts; returns the input shards to process."""
    if args.rows_per_shard < 1 or args.batch_size < 1:
        raise ConfigError("--rows-per-shard and --batch-size must be at least 1")
    bad_formats = [f for f in _csv(args.format) if f not in FORMATS]
    if bad_formats or not _csv(args.format):
        raise ConfigError(f"--format {args.format!r}: choose from {FORMATS}")
    sources = expand_inputs(args.input)
    stems = Counter(shard_stem(s) for s in sources)
    clashes = sorted(s for s, n in stems.items() if n > 1)
    if clashes:
        raise ConfigError(f"inputs share output names {clashes}; give shards unique base names")
    return sources


def build_graph(
    pipeline: beam.Pipeline, sources: Sequence[str], args: argparse.Namespace,
    handlers: Dict[str, TokenizerModelHandler],
) -> Dict[str, beam.PCollection]:
    """Adds the corpus job to ``pipeline``; returns rows, dead letters and manifests."""
    read = pipeline | "ReadMediaShards" >> ReadMediaShards(
        list(sources), max_member_bytes=int(args.max_member_mb * 2**20)
    )
    tokenized = read.samples | "TokenizeSamples" >> TokenizeSamples(handlers)
    dead = (read[DEAD_LETTER_TAG], tokenized[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
    manifests = {"rows": tokenized["rows"], DEAD_LETTER_TAG: dead, "stats": read.shard_stats} | (
        "WriteCorpusShards" >> WriteCorpusShards(args.output, args.rows_per_shard, _csv(args.format))
    )
    return {"rows": tokenized["rows"], DEAD_LETTER_TAG: dead, "manifests": manifests}


def summarize(manifests: List[Dict[str, Any]], wall_s: float) -> Dict[str, Any]:
    """Totals over shard manifests: counts per modality and stage, tokens, bytes, throughput."""
    total: Dict[str, Any] = {"shards": len(manifests), "wall_s": round(wall_s, 3)}
    for field in ("records", "rows", "dead_letters", "tokens", "source_bytes"):
        total[field] = sum(m[field] for m in manifests)
    for field in ("rows_by_modality", "dead_letters_by_stage", "dead_letters_by_type", "tokens_by_modality"):
        agg: Counter = Counter()
        for m in manifests:
            agg.update(m[field])
        total[field] = dict(sorted(agg.items()))
    total["records_per_s"] = round(total["records"] / wall_s, 2) if wall_s > 0 else None
    total["mb_per_s"] = round(total["source_bytes"] / 2**20 / wall_s, 3) if wall_s > 0 else None
    return total


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> Dict[str, Any]:
    """Runs the job and returns (and writes ``summary.json``) the run summary."""
    args, options = parse_job_args(build_parser(), argv)
    sources = validate(args)
    handlers = resolve_tokenizers(args)
    todo = sources
    if args.resume:
        todo = [s for s in sources if not FileSystems.exists(manifest_path(args.output, s))]
        print(f"resume: {len(sources) - len(todo)} of {len(sources)} shards already done")
    start = time.perf_counter()
    if todo:
        pipeline = create_pipeline(options, test_pipeline)
        build_graph(pipeline, todo, args, handlers)
        pipeline.run().wait_until_finish()
    wall = time.perf_counter() - start
    done_now = set(todo)
    manifests = [m for m in read_manifests(args.output) if m["source"] in done_now]
    summary = summarize(manifests, wall)
    summary["skipped_by_resume"] = len(sources) - len(todo)
    summary["output"] = args.output
    write_atomic(FileSystems.join(args.output, "summary.json"), json.dumps(summary, indent=1).encode())
    print(json.dumps(summary, indent=1))
    print(f"corpus written to {args.output}/corpus (summary: {args.output}/summary.json)")
    return summary
