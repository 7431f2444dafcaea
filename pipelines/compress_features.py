"""compress-features: split a model at a layer, compress the features, report rate against quality.

Reads image shards, runs the model up to ``--split-at``, fits codec tables (quantisers and
per-channel priors) over the whole input, codes every sample's features at every requested
rate, decodes them, runs the rest of the model and writes:

* ``features/<shard name>-00000.parquet``: one row per sample and rate (``schemas/features.py``)
  with the stream, bits per element, bytes and the downstream change (top-1 agreement, max |diff|);
* ``__codec/tables.bin``: the codec tables every stream refers to (needed to decode; a resumed
  run or a dead-letter retry reuses them, so every stream of one output decodes with one file);
* ``__job/summary.json`` (with a per-rate table) and ``__job/rate_quality.png``.

Example::

    mediabeam compress-features --input 'data/samples/shard-{000000..000003}.tar' --output out/cf \\
        --split-at block1 --bits 2,4,8 --codebook-sizes 256
"""

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

from operators.compression.quantize import MAX_BITS, MIN_BITS
from pipelines.common import ConfigError
from pipelines.job import Job, Retry

FEATURE_COLUMNS = ["key", "rate", "num_bytes", "bits_per_element", "top1_agree", "max_abs_diff", "num_elements"]


def _ints(value: str, flag: str) -> List[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {value!r} must be comma-separated integers, e.g. 2,4,6,8") from None


class CompressFeatures(Job):
    """The compress-features job (see the module docstring)."""

    name = "compress-features"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=None, help="local TinyCNN state dict (default: the shipped asset)")
        parser.add_argument("--split-at", default="block1", help="layer name to split at (model.named_modules())")
        parser.add_argument("--bits", default="2,4,6,8", help=f"comma-separated uniform bit depths ({MIN_BITS}..{MAX_BITS})")
        parser.add_argument("--codebook-sizes", default="", help="comma-separated codebook sizes, e.g. 16,256")
        parser.add_argument("--codebook-groups", type=int, default=4, help="channel groups per codebook")
        parser.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                            help="one uniform quantiser per channel or one per tensor")
        parser.add_argument("--clip-sigmas", type=float, default=None, help="clip at mean ± k·std; outliers escape")
        parser.add_argument("--precision", type=int, default=None,
                            help="prior precision in bits (12..24; default: the codec's, 20)")

    def validate(self, args: argparse.Namespace) -> None:
        args.bit_depths = _ints(args.bits, "--bits")
        args.sizes = _ints(args.codebook_sizes, "--codebook-sizes")
        if not args.bit_depths and not args.sizes:
            raise ConfigError("give at least one rate with --bits or --codebook-sizes")
        bad = [b for b in args.bit_depths if not MIN_BITS <= b <= MAX_BITS]
        if bad:
            raise ConfigError(f"--bits {bad} out of range; use depths between {MIN_BITS} and {MAX_BITS}")
        if any(not 2 <= k <= 65535 for k in args.sizes):
            raise ConfigError("--codebook-sizes must lie in 2..65535")
        if args.codebook_groups < 1:
            raise ConfigError("--codebook-groups must be at least 1")
        if args.precision is not None and not 12 <= args.precision <= 24:
            raise ConfigError("--precision must be between 12 and 24 bits")
        if args.model is not None and not os.path.isfile(args.model):
            raise ConfigError(f"--model {args.model!r} does not exist; give a local TinyCNN state dict")
        check_model(args)
        if args.precision is None:
            from operators.compression.priors import DEFAULT_PRECISION

            args.precision = DEFAULT_PRECISION

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.features import FEATURES_TABLE

        return FEATURES_TABLE

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.compression.codec import CompressFn, DecompressFn
        from transforms.compression.fit_tables import FitCodecTables
        from transforms.compression.round_trip import RoundTripFn
        from transforms.compression.split_model import (
            ExtractFeaturesFn,
            MeasureQualityFn,
        )
        from transforms.compression.tables_file import WriteTables, load_tables
        from transforms.errors import DEAD_LETTER_TAG

        read = self.read_media(pipeline, sources, args, retry)
        extracted = read.samples | "ExtractFeatures" >> beam.ParDo(
            ExtractFeaturesFn(args.model, args.split_at, args.threads)).with_outputs(DEAD_LETTER_TAG, main="features")
        features = extracted.features | "CountExtract" >> self.count("Extract")
        earlier = load_tables(args.output) if (args.resume or args.retry_dead_letters) else None
        if earlier is not None:
            tables = pipeline | "EarlierTables" >> beam.Create([earlier])
        else:
            tables = (
                features
                | "FitCodecTables" >> FitCodecTables(
                    bits=args.bit_depths, codebook_sizes=args.sizes, granularity=args.granularity,
                    clip_sigmas=args.clip_sigmas, codebook_groups=args.codebook_groups, precision=args.precision)
                | "WriteTables" >> WriteTables(args.output)
            )
        round_trip = RoundTripFn(CompressFn(args.bit_depths, args.sizes, 0), DecompressFn(0),
                                 MeasureQualityFn(args.model, args.split_at, args.threads))
        coded = features | "RoundTrip" >> beam.ParDo(round_trip, beam.pvalue.AsSingleton(tables)).with_outputs(
            DEAD_LETTER_TAG, main="rows")
        dead = (read.dead_letters, extracted[DEAD_LETTER_TAG], coded[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"rows": coded.rows, DEAD_LETTER_TAG: dead, "stats": read.stats}

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        from operators.compression.split_compute import summary_by_rate
        from pipelines import job_output

        rows = job_output.read_product_rows(args.output, manifests, "features", FEATURE_COLUMNS)
        return {
            "split_at": args.split_at,
            "samples": sum(m["rows"] for m in manifests),
            "feature_rows": sum(m.get("feature_rows", 0) for m in manifests),
            "feature_elements": rows[0]["num_elements"] if rows else 0,
            "by_rate": summary_by_rate(rows),
        }

    def after_run(self, args: argparse.Namespace, summary: Dict[str, Any]) -> None:
        if summary["by_rate"]:
            from pipelines.job_output import meta_path
            from pipelines.rate_quality import plot_rate_quality

            path = meta_path(args.output, "rate_quality.png")
            plot_rate_quality(summary["by_rate"], path, f"TinyCNN split at {args.split_at}")
            print(f"rate-quality plot: {path}")


def check_model(args: argparse.Namespace) -> None:
    """Loads the model once and checks the split layer and the codebook groups against it,
    so a bad state dict or layer fails before the pipeline starts."""
    import torch

    from operators.compression.split_compute import INPUT_SIZE, head, load_model

    try:
        model = load_model(args.model)
    except Exception as err:  # noqa: BLE001 - torch.load/load_state_dict raise many types for a bad file
        raise ConfigError(f"--model {args.model!r} is not a TinyCNN state dict ({str(err)[:300]}); "
                          "give the shipped asset or one saved from operators.compression.split_compute.TinyCNN")
    layers = [name for name, _ in model.named_modules() if name]
    if args.split_at not in layers:
        raise ConfigError(f"--split-at {args.split_at!r} is not a layer of the model; choose one of {layers}")
    shape = head(model, args.split_at, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)).shape
    if args.sizes and len(shape) < 2:
        raise ConfigError(f"codebooks need channel vectors; {args.split_at} outputs shape {tuple(shape[1:])}")
    if args.sizes and shape[1] % args.codebook_groups:
        raise ConfigError(f"--codebook-groups {args.codebook_groups} must divide the {shape[1]} channels at {args.split_at}")


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> Dict[str, Any]:
    """Runs the compress-features job; returns the summary (also in ``summary.json``)."""
    return CompressFeatures().run(argv, test_pipeline)
