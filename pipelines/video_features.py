"""video-features: video shards in, per-frame CoX3D predictions (Parquet) out.

Each video is decoded (streamed, never whole in memory) at ``--fps`` and ``--size`` and
stepped frame by frame through the continual X3D network: after the network's delay, every
frame yields the scores of the clip that ends at it, at one frame's worth of compute.

Example::

    mediabeam video-features --input 'data/samples/shard-{000000..000003}.tar' \\
        --output out/video --weights X3D_S.pyth --fps 6 --size 160
"""

import argparse
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam

from operators.video.x3d import VARIANTS, co_x3d_stepper
from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from transforms.continual_video import SKIPPED_TAG, ContinualVideoSamples, WriteVideoFrames
from transforms.errors import DEAD_LETTER_TAG
from transforms.io.read_shards import ReadMediaShards
from transforms.io.write_shards import read_manifests, write_atomic


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags (Beam's options are parsed separately)."""
    parser = argparse.ArgumentParser(prog="mediabeam video-features", description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="tar shards, globs, brace ranges (shard-{000000..000009}.tar) or folders")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--fps", type=float, default=6.0, help="frames per second decoded (X3D-S was trained at 6)")
    parser.add_argument("--size", default="160", help="frame size: N (square) or WxH; X3D-S uses 160, X3D-M 224")
    parser.add_argument("--model", default="s", choices=VARIANTS, help="X3D variant ('tiny' is for smoke tests)")
    parser.add_argument("--weights", default=None,
                        help="local pytorchvideo checkpoint (X3D_S.pyth / X3D_M.pyth); loaded with weights_only")
    parser.add_argument("--random-weights", action="store_true",
                        help="run with seeded random weights instead of --weights (benchmarks, smoke tests)")
    parser.add_argument("--window", type=int, default=16,
                        help="frames the head pool and the causal SE average over (16, 64, ...)")
    parser.add_argument("--num-classes", type=int, default=400, help="classes of the checkpoint's head")
    parser.add_argument("--max-seconds", type=float, default=None, help="decode at most this much of each video")
    parser.add_argument("--max-member-mb", type=float, default=2048, help="largest member read, in MB")
    return parser


def parse_size(value: str) -> tuple:
    """``"160"`` → ``(160, 160)``; ``"320x180"`` → ``(320, 180)`` (width, height)."""
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8 or any(p % 2 for p in parts):
        raise ConfigError(f"--size {value!r}: give N or WxH with even sizes >= 8, e.g. 160 or 224x224")
    return parts[0], parts[1]


def validate(args: argparse.Namespace) -> List[str]:
    """Checks every flag before the pipeline starts; returns the input shards."""
    if args.fps <= 0:
        raise ConfigError(f"--fps {args.fps} must be positive, e.g. 6")
    if args.window < 1:
        raise ConfigError(f"--window {args.window} must be at least 1 (16 or 64 are typical)")
    if args.num_classes < 1:
        raise ConfigError("--num-classes must be at least 1")
    if (args.weights is None) == (not args.random_weights):
        raise ConfigError("give exactly one of --weights PATH (a local X3D checkpoint) or --random-weights")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise ConfigError(f"--weights {args.weights!r} is not a file; download X3D_S.pyth beforehand")
    if args.weights is not None and args.model == "tiny":
        raise ConfigError("--model tiny has no checkpoint; use --random-weights")
    parse_size(args.size)
    return expand_inputs(args.input)


def model_name(args: argparse.Namespace) -> str:
    """Name recorded in every row, e.g. ``co_x3d_s-w16@X3D_S.pyth``."""
    weights = os.path.basename(args.weights) if args.weights else "random"
    return f"co_x3d_{args.model}-w{args.window}@{weights}"


def build_graph(pipeline: beam.Pipeline, sources: Sequence[str], args: argparse.Namespace,
                decode: Optional[Callable[..., Iterable]] = None) -> Dict[str, beam.PCollection]:
    """Adds the job to ``pipeline``; returns rows, dead letters and manifests."""
    width, height = parse_size(args.size)
    factory = functools.partial(co_x3d_stepper, args.model, args.window, args.num_classes, args.weights)
    read = pipeline | "ReadMediaShards" >> ReadMediaShards(list(sources), int(args.max_member_mb * 2**20))
    stepped = read.samples | "ContinualVideoSamples" >> ContinualVideoSamples(
        factory, model_name(args), args.fps, width, height, decode=decode, max_seconds=args.max_seconds
    )
    dead = (read[DEAD_LETTER_TAG], stepped[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
    manifests = {"rows": stepped.rows, DEAD_LETTER_TAG: dead, SKIPPED_TAG: stepped[SKIPPED_TAG],
                 "stats": read.shard_stats} | "WriteVideoFrames" >> WriteVideoFrames(args.output)
    return {"rows": stepped.rows, DEAD_LETTER_TAG: dead, "manifests": manifests}


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> Dict[str, Any]:
    """Runs the job; returns (and writes ``summary.json``) totals over the shards."""
    args, options = parse_job_args(build_parser(), argv)
    sources = validate(args)
    start = time.perf_counter()
    pipeline = create_pipeline(options, test_pipeline)
    build_graph(pipeline, sources, args)
    pipeline.run().wait_until_finish()
    wall = time.perf_counter() - start
    done = set(sources)
    manifests = [m for m in read_manifests(args.output) if m["source"] in done]
    summary: Dict[str, Any] = {"shards": len(manifests), "wall_s": round(wall, 3), "model": model_name(args)}
    for field in ("records", "videos", "skipped_no_video", "rows", "dead_letters"):
        summary[field] = sum(m[field] for m in manifests)
    summary["rows_per_s"] = round(summary["rows"] / wall, 2) if wall > 0 else None
    write_atomic(os.path.join(args.output, "summary.json"), json.dumps(summary, indent=1).encode())
    print(json.dumps(summary, indent=1))
    return summary
