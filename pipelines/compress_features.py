"""``mediabeam compress-features``: split a model at a layer, compress the features, report.

Reads image shards, runs the model up to ``--split-at``, fits codec tables (quantisers and
per-channel priors) over the whole input, codes every sample's features at every requested
rate, decodes them, runs the rest of the model and writes:

* ``features/<shard>.parquet``: one row per sample and rate (``schemas/features.py``) with the
  stream, bits per element, bytes and the downstream change (top-1 agreement, max |diff|);
* ``tables.bin``: the codec tables every stream refers to (needed to decode);
* ``dead_letters.parquet``; ``summary.json`` (per-rate table) and ``rate_quality.png``.
"""

import argparse
import json
import time
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
import torch
from apache_beam.io.filesystems import FileSystems

from operators.compression.priors import DEFAULT_PRECISION
from operators.compression.quantize import MAX_BITS, MIN_BITS
from operators.compression.split_compute import DEFAULT_WEIGHTS, INPUT_SIZE, TinyCNN, head, summary_by_rate
from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from transforms.compress import (
    CompressFeatures,
    DecompressFeatures,
    ExtractFeaturesFn,
    FitCodecTables,
    MeasureQualityFn,
    WriteCompressedFeatures,
)
from transforms.errors import DEAD_LETTER_TAG
from transforms.io.read_shards import ReadMediaShards
from transforms.io.write_shards import shard_stem, write_atomic


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags (Beam options pass through)."""
    parser = argparse.ArgumentParser(prog="mediabeam compress-features", description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="image shards: paths, globs, {000..009} ranges, folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="local TinyCNN state dict (default: the shipped asset)")
    parser.add_argument("--split-at", default="block1", help="layer name to split at (model.named_modules())")
    parser.add_argument("--bits", default="2,4,6,8", help="comma-separated uniform bit depths (2..8)")
    parser.add_argument("--codebook-sizes", default="", help="comma-separated codebook sizes, e.g. 16,256")
    parser.add_argument("--codebook-groups", type=int, default=4, help="channel groups per codebook")
    parser.add_argument("--granularity", choices=("channel", "tensor"), default="channel")
    parser.add_argument("--clip-sigmas", type=float, default=None, help="clip at mean ± k·std; outliers escape")
    parser.add_argument("--precision", type=int, default=DEFAULT_PRECISION, help="prior precision in bits (12..24)")
    return parser


def _ints(value: str, flag: str) -> List[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {value!r} must be comma-separated integers, e.g. 2,4,6,8") from None


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    """Checks flags before anything runs; returns the parsed rates and expanded inputs."""
    bits = _ints(args.bits, "--bits")
    sizes = _ints(args.codebook_sizes, "--codebook-sizes")
    if not bits and not sizes:
        raise ConfigError("give at least one rate with --bits or --codebook-sizes")
    bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise ConfigError(f"--bits {bad} out of range; use depths between {MIN_BITS} and {MAX_BITS}")
    if any(not 2 <= k <= 65535 for k in sizes):
        raise ConfigError("--codebook-sizes must lie in 2..65535")
    layers = [name for name, _ in TinyCNN().named_modules() if name]
    if args.split_at not in layers:
        raise ConfigError(f"--split-at {args.split_at!r} is not a layer of the model; choose one of {layers}")
    shape = head(TinyCNN(), args.split_at, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)).shape
    if sizes and len(shape) < 2:
        raise ConfigError(f"codebooks need channel vectors; {args.split_at} outputs shape {shape[1:]}")
    if sizes and shape[1] % args.codebook_groups:
        raise ConfigError(f"--codebook-groups {args.codebook_groups} must divide the {shape[1]} channels at {args.split_at}")
    model = args.model or DEFAULT_WEIGHTS
    if not FileSystems.exists(model):
        raise ConfigError(f"--model {model!r} does not exist; give a local TinyCNN state dict")
    if not 12 <= args.precision <= 24:
        raise ConfigError("--precision must be between 12 and 24 bits")
    sources = expand_inputs(args.input)
    stems = [shard_stem(s) for s in sources]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ConfigError(f"inputs share output names {clashes}; give shards unique base names")
    return {"bits": bits, "sizes": sizes, "sources": sources}


def build_graph(pipeline: beam.Pipeline, sources: Sequence[str], args: argparse.Namespace, bits: Sequence[int],
                sizes: Sequence[int]) -> Dict[str, beam.PCollection]:
    """Adds the job to ``pipeline``; returns the rows and dead-letter PCollections."""
    read = pipeline | "ReadMediaShards" >> ReadMediaShards(list(sources))
    extracted = read.samples | "ExtractFeatures" >> beam.ParDo(ExtractFeaturesFn(args.model, args.split_at)).with_outputs(
        DEAD_LETTER_TAG, main="features"
    )
    features = extracted.features
    tables = features | "FitCodecTables" >> FitCodecTables(
        bits=bits,
        codebook_sizes=sizes,
        granularity=args.granularity,
        clip_sigmas=args.clip_sigmas,
        codebook_groups=args.codebook_groups,
        precision=args.precision,
    )
    compressed = features | "CompressFeatures" >> CompressFeatures(tables, bits, sizes)
    decoded = compressed.compressed | "DecompressFeatures" >> DecompressFeatures(tables)
    rows = decoded.decoded | "MeasureQuality" >> beam.ParDo(MeasureQualityFn(args.model, args.split_at))
    dead = (
        read[DEAD_LETTER_TAG],
        extracted[DEAD_LETTER_TAG],
        compressed[DEAD_LETTER_TAG],
        decoded[DEAD_LETTER_TAG],
    ) | "AllDeadLetters" >> beam.Flatten()
    {"rows": rows, DEAD_LETTER_TAG: dead, "tables": tables} | "WriteCompressedFeatures" >> WriteCompressedFeatures(args.output)
    return {"rows": rows, DEAD_LETTER_TAG: dead}


def plot_rate_quality(by_rate: Dict[str, Dict[str, float]], path: str, title: str) -> None:
    """Writes the rate–quality plot: top-1 agreement and max |diff| against bits/element."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for prefix, marker, label in (("u", "o-", "uniform"), ("vq", "s--", "codebook")):
        keys = [k for k in by_rate if k.startswith(prefix)]
        if not keys:
            continue
        xs = [by_rate[k]["bits_per_element"] for k in keys]
        left.plot(xs, [by_rate[k]["top1_agreement"] for k in keys], marker, label=label)
        right.semilogy(xs, [max(by_rate[k]["max_abs_diff"], 1e-12) for k in keys], marker, label=label)
        for k, x in zip(keys, xs):
            left.annotate(k, (x, by_rate[k]["top1_agreement"]), fontsize=7)
    left.set(xlabel="bits per element", ylabel="top-1 agreement", ylim=(0, 1.05))
    right.set(xlabel="bits per element", ylabel="max |output difference|")
    left.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(output: str, sources: Sequence[str], split_at: str, wall_s: float) -> Dict[str, Any]:
    """Reads this run's tables back (one per input shard) and aggregates them per rate."""
    columns = ["key", "rate", "num_bytes", "bits_per_element", "top1_agree", "max_abs_diff", "num_elements"]
    rows: List[Dict[str, Any]] = []
    for source in sources:
        path = FileSystems.join(output, "features", shard_stem(source) + ".parquet")
        if FileSystems.exists(path):
            rows.extend(pq.read_table(path, columns=columns).to_pylist())
    dead = pq.read_table(FileSystems.join(output, "dead_letters.parquet")).to_pylist()
    stages: Dict[str, int] = {}
    for d in dead:
        stages[d["stage"]] = stages.get(d["stage"], 0) + 1
    return {
        "split_at": split_at,
        "samples": len({r["key"] for r in rows}),
        "rows": len(rows),
        "dead_letters": len(dead),
        "dead_letters_by_stage": stages,
        "feature_elements": rows[0]["num_elements"] if rows else 0,
        "by_rate": summary_by_rate(rows),
        "wall_s": round(wall_s, 3),
        "output": output,
    }


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> Dict[str, Any]:
    """Runs the job; returns (and writes ``summary.json``) the per-rate summary."""
    args, options = parse_job_args(build_parser(), argv)
    config = validate(args)
    start = time.perf_counter()
    pipeline = create_pipeline(options, test_pipeline)
    build_graph(pipeline, config["sources"], args, config["bits"], config["sizes"])
    pipeline.run().wait_until_finish()
    summary = summarize(args.output, config["sources"], args.split_at, time.perf_counter() - start)
    write_atomic(FileSystems.join(args.output, "summary.json"), json.dumps(summary, indent=1).encode())
    if summary["by_rate"]:
        plot_rate_quality(
            summary["by_rate"], FileSystems.join(args.output, "rate_quality.png"), f"TinyCNN split at {args.split_at}"
        )
    print(json.dumps(summary, indent=1))
    return summary
