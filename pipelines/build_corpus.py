"""build-corpus: sharded media in, a tokenized corpus (Parquet / WebDataset) out.

Example::

    mediabeam build-corpus --input 'data/samples/shard-{000000..000003}.tar' --output out/demo
    mediabeam build-corpus --input shards/ --output out/c --tokenizer jpeg,opus \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    mediabeam build-corpus --input shards/ --output out/c --resume --retry-dead-letters

The job runs unchanged on the in-process runner, ``multi_processing`` workers and portable
runners (Flink, Spark, Beam's job service, Dataflow); records cross stages as NumPy arrays
and plain Python values, never torch tensors (see ``.notes/scale.md``). While it runs, a
progress line (shards and samples done, rate, ETA) goes to stderr; at the end it writes
``summary.json``, ``report.json`` and ``report.html`` into ``--output``.
"""

import argparse
import ast
import json
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from operators.tokenizers.registry import (
    DEFAULT_TOKENIZER_FOR_MODALITY,
    TOKENIZERS,
    build_tokenizer,
    tokenizer_modality,
)
from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from pipelines.operability import ProgressMonitor, output_progress, run_pipeline, stage_throughput
from pipelines.report import write_report
from transforms.errors import DEAD_LETTER_TAG
from transforms.io.read_shards import ReadMediaShards, ShardStats
from transforms.io.retry import KeepKeys, LoadCorpusRows, dead_letter_keys
from transforms.io.write_shards import (
    FORMATS,
    WriteCorpusShards,
    manifest_path,
    read_manifests,
    shard_stem,
    write_atomic,
)
from transforms.progress import CountDeadLetters, CountStage, member_bytes
from transforms.tokenize import TokenizerModelHandler, TokenizeSamples


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
    parser.add_argument("--retry-dead-letters", action="store_true",
                        help="re-run only the dead letters of finished shards and merge the outcome into "
                             "their output (implies --resume for unfinished shards)")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between two progress lines on stderr")
    parser.add_argument("--no-report", action="store_true", help="skip report.json / report.html")
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
    if args.progress_interval <= 0:
        raise ConfigError("--progress-interval must be a positive number of seconds")
    bad_formats = [f for f in _csv(args.format) if f not in FORMATS]
    if bad_formats or not _csv(args.format):
        raise ConfigError(f"--format {args.format!r}: choose from {FORMATS}")
    sources = expand_inputs(args.input)
    stems = Counter(shard_stem(s) for s in sources)
    clashes = sorted(s for s, n in stems.items() if n > 1)
    if clashes:
        raise ConfigError(f"inputs share output names {clashes}; give shards unique base names")
    return sources


Retry = Dict[str, Tuple[int, Set[str]]]


def build_graph(
    pipeline: beam.Pipeline, sources: Sequence[str], args: argparse.Namespace,
    handlers: Dict[str, TokenizerModelHandler], retry: Optional[Retry] = None,
    origin_s: Optional[float] = None, progress_dir: Optional[str] = None,
) -> Dict[str, beam.PCollection]:
    """Adds the corpus job to ``pipeline``; returns rows, dead letters and manifests.

    Args:
        sources: Shards processed whole.
        retry: Finished shards to retry: source → (its manifest's record count, the keys of
            its dead letters). Only those keys are re-read and tokenized; the shard's kept rows
            are loaded from the output and the shard is written again with both.
        origin_s: Epoch seconds the run started (for the per-stage throughput metrics).
        progress_dir: Folder for live progress files (see ``transforms.progress``).
    """
    origin = time.time() if origin_s is None else origin_s
    flush_s = min(5.0, args.progress_interval / 2)

    def counter(stage: str, **kwargs) -> beam.ParDo:
        return beam.ParDo(CountStage(stage, origin, progress_dir=progress_dir, flush_every_s=flush_s, **kwargs))

    reader_kwargs = {"max_member_bytes": int(args.max_member_mb * 2**20)}
    samples, dead, stats, kept_rows = [], [], [], []
    if sources:
        read = pipeline | "ReadMediaShards" >> ReadMediaShards(list(sources), **reader_kwargs)
        samples.append(read.samples)
        dead.append(read[DEAD_LETTER_TAG])
        stats.append(read.shard_stats | "CountShardsRead" >> counter("ShardsRead"))
    if retry:
        keep = KeepKeys({source: keys for source, (_, keys) in retry.items()})
        again = pipeline | "ReadRetriedShards" >> ReadMediaShards(sorted(retry), **reader_kwargs)
        again.shard_stats | "CountRetriedShardsRead" >> counter("ShardsRead")  # progress only
        samples.append(again.samples | "KeepRetriedSamples" >> beam.ParDo(keep))
        dead.append(again[DEAD_LETTER_TAG] | "KeepRetriedDeadLetters" >> beam.ParDo(keep))
        stats.append(
            pipeline
            | "RetriedShardRecords" >> beam.Create([ShardStats(s, n) for s, (n, _) in sorted(retry.items())])
        )
        kept_rows.append(
            pipeline
            | "ListRetriedShards" >> beam.Create(sorted(retry))
            | "LoadKeptRows" >> beam.ParDo(LoadCorpusRows(args.output))
        )
    counted = (
        samples | "AllSamples" >> beam.Flatten()
        | "CountRead" >> counter("Read", size_fn=member_bytes)
    )
    tokenized = counted | "TokenizeSamples" >> TokenizeSamples(handlers)
    new_rows = tokenized["rows"] | "CountTokenize" >> counter("Tokenize")
    rows = [new_rows, *kept_rows] | "AllRows" >> beam.Flatten()
    dead_letters = (
        [*dead, tokenized[DEAD_LETTER_TAG]] | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.ParDo(CountDeadLetters())
    )
    manifests = (
        {"rows": rows, DEAD_LETTER_TAG: dead_letters, "stats": stats | "AllShardStats" >> beam.Flatten()}
        | "WriteCorpusShards" >> WriteCorpusShards(args.output, args.rows_per_shard, _csv(args.format))
        | "CountWrite" >> counter("Write")
    )
    return {"rows": rows, DEAD_LETTER_TAG: dead_letters, "manifests": manifests}


def plan(args: argparse.Namespace, sources: List[str]) -> Tuple[List[str], Retry]:
    """Splits the inputs into shards to process whole and finished shards to retry, from the
    manifests and dead letters already under ``--output`` (``--resume``,
    ``--retry-dead-letters``)."""
    if not (args.resume or args.retry_dead_letters):
        return list(sources), {}
    todo = [s for s in sources if not FileSystems.exists(manifest_path(args.output, s))]
    retry: Retry = {}
    if args.retry_dead_letters:
        finished = {m["source"]: m for m in read_manifests(args.output)}
        keys = dead_letter_keys(args.output, [s for s in sources if s not in todo])
        retry = {s: (int(finished[s]["records"]), k) for s, k in keys.items() if s in finished}
    print(
        f"resume: {len(sources) - len(todo)} of {len(sources)} shards already done"
        + (f"; retrying {sum(len(k) for _, k in retry.values())} dead letters of {len(retry)} shards"
           if args.retry_dead_letters else "")
    )
    return todo, retry


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


def _remove_tree(directory: str) -> None:
    if FileSystems.exists(directory):
        FileSystems.delete([directory])


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> Dict[str, Any]:
    """Runs the job and returns (and writes ``summary.json``) the run summary; also writes
    ``report.json`` / ``report.html`` unless ``--no-report``."""
    args, options = parse_job_args(build_parser(), argv)
    sources = validate(args)
    handlers = resolve_tokenizers(args)
    todo, retry = plan(args, sources)
    start, wall_start = time.perf_counter(), time.time()
    metrics: Dict[str, Any] = {"counters": {}, "distributions": {}}
    if todo or retry:
        progress_dir = FileSystems.join(args.output, "_progress")
        _remove_tree(progress_dir)
        pipeline = create_pipeline(options, test_pipeline)
        build_graph(pipeline, todo, args, handlers, retry=retry, origin_s=wall_start, progress_dir=progress_dir)
        running = [*todo, *retry]
        done = output_progress(args.output, running, wall_start - 1, progress_dir)
        metrics = run_pipeline(pipeline, ProgressMonitor(len(running), done, args.progress_interval))
        _remove_tree(progress_dir)
    wall = time.perf_counter() - start
    done_now = set(todo) | set(retry)
    manifests = [m for m in read_manifests(args.output) if m["source"] in done_now]
    summary = summarize(manifests, wall)
    summary["skipped_by_resume"] = len(sources) - len(done_now)
    if args.retry_dead_letters:
        retried = sum(len(k) for _, k in retry.values())
        still_dead = sum(m["dead_letters"] for m in manifests if m["source"] in retry)
        summary["retried_dead_letters"] = retried
        summary["recovered_by_retry"] = retried - still_dead
    summary["stage_throughput"] = stage_throughput(metrics)
    summary["output"] = args.output
    write_atomic(FileSystems.join(args.output, "summary.json"), json.dumps(summary, indent=1).encode())
    print(json.dumps(summary, indent=1))
    print(f"corpus written to {args.output}/corpus (summary: {args.output}/summary.json)")
    if not args.no_report:
        write_report(args.output, summary, summary["stage_throughput"], metrics)
        print(f"report: {args.output}/report.html")
    return summary
