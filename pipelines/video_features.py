"""video-features: video shards in, per-frame CoX3D predictions (Parquet) out.

Each video is decoded (streamed, never whole in memory) at ``--fps`` and ``--size`` and
stepped frame by frame through the continual X3D network: after the network's delay, every
frame yields the scores of the clip that ends at it, at one frame's worth of compute. The
progress line counts frames, so a long video shows progress long before its rows are written.

Example::

    mediabeam video-features --input 'data/samples/shard-{000000..000003}.tar' \\
        --output out/video --weights X3D_S.pyth --fps 6 --size 160
"""

import argparse
import functools
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from pipelines.common import ConfigError
from pipelines.job import Job, Retry

MODELS = ("s", "m", "tiny")
VIDEOS_PER_PART = 16
"""Videos per Parquet part: a 12-minute video at 6 fps with 400 classes is ~7 MB of scores."""


def parse_size(value: str) -> Tuple[int, int]:
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


def model_name(args: argparse.Namespace) -> str:
    """Name recorded in every row, e.g. ``co_x3d_s-w16@X3D_S.pyth``."""
    weights = os.path.basename(args.weights) if args.weights else "random"
    return f"co_x3d_{args.model}-w{args.window}@{weights}"


class VideoFeatures(Job):
    """The video-features job (see the module docstring)."""

    name = "video-features"
    description = __doc__
    progress_stage, progress_unit = "Frames", "frames"

    def __init__(self, decode: Optional[Callable[..., Iterable]] = None):
        super().__init__()
        self._decode = decode

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fps", type=float, default=6.0, help="frames per second decoded (X3D-S was trained at 6)")
        parser.add_argument("--size", default="160", help="frame size: N (square) or WxH; X3D-S uses 160, X3D-M 224")
        parser.add_argument("--model", default="s", choices=MODELS, help="X3D variant ('tiny' is for smoke tests)")
        parser.add_argument("--weights", default=None,
                            help="local pytorchvideo checkpoint (X3D_S.pyth / X3D_M.pyth); loaded with weights_only")
        parser.add_argument("--random-weights", action="store_true",
                            help="run with seeded random weights instead of --weights (benchmarks, smoke tests)")
        parser.add_argument("--window", type=int, default=16,
                            help="frames the head pool and the causal SE average over (16, 64, ...)")
        parser.add_argument("--num-classes", type=int, default=400, help="classes of the checkpoint's head")
        parser.add_argument("--max-seconds", type=float, default=None, help="decode at most this much of each video")

    def validate(self, args: argparse.Namespace) -> None:
        if args.fps <= 0:
            raise ConfigError(f"--fps {args.fps} must be positive, e.g. 6")
        if args.window < 1:
            raise ConfigError(f"--window {args.window} must be at least 1 (16 or 64 are typical)")
        if args.num_classes < 1:
            raise ConfigError("--num-classes must be at least 1")
        if args.max_seconds is not None and args.max_seconds <= 0:
            raise ConfigError("--max-seconds must be positive")
        if (args.weights is None) == (not args.random_weights):
            raise ConfigError("give exactly one of --weights PATH (a local X3D checkpoint) or --random-weights")
        if args.weights is not None and not os.path.isfile(args.weights):
            raise ConfigError(f"--weights {args.weights!r} is not a file; download X3D_S.pyth beforehand")
        if args.weights is not None and args.model == "tiny":
            raise ConfigError("--model tiny has no checkpoint; use --random-weights")
        args.frame_size = parse_size(args.size)
        try:
            stepper_factory(args)()
        except Exception as err:  # noqa: BLE001 - any checkpoint the network cannot take is a configuration error
            raise ConfigError(
                f"--weights {args.weights!r} cannot be loaded into X3D-{args.model} with --num-classes "
                f"{args.num_classes}: {str(err)[:300]}; check the variant and the checkpoint's classes"
            )

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.video import VIDEO_FRAMES_TABLE

        return VIDEO_FRAMES_TABLE

    def writers(self, args: argparse.Namespace) -> List[Any]:
        from transforms.io.writers import ParquetWriter

        return [ParquetWriter(rows_per_file=VIDEOS_PER_PART)]

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.continual_video import (
            FILTERED_TAG,
            FRAMES_TAG,
            ContinualVideoSamples,
        )
        from transforms.errors import DEAD_LETTER_TAG

        width, height = args.frame_size
        decode = self._decode or default_decode(args.budgets)
        read = self.read_media(pipeline, sources, args, retry)
        stepped = read.samples | "StepVideos" >> ContinualVideoSamples(
            stepper_factory(args), model_name(args), args.fps, width, height, decode=decode,
            max_seconds=args.max_seconds, threads=args.threads)
        _ = stepped[FRAMES_TAG] | "CountFrames" >> self.count("Frames")
        dead = (read.dead_letters, stepped[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"rows": stepped["rows"], DEAD_LETTER_TAG: dead, "stats": read.stats, "filtered": stepped[FILTERED_TAG]}

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "model": model_name(args),
            "videos": sum(m["rows"] for m in manifests),
            "frames": sum(m.get("frames", 0) for m in manifests),
            "skipped_no_video": sum(m.get("filtered", 0) for m in manifests),
        }


def stepper_factory(args: argparse.Namespace) -> Callable[[], Any]:
    """The picklable factory of the network's ``StreamStepper`` that every worker calls once."""
    from operators.video.co_x3d import co_x3d_stepper

    return functools.partial(co_x3d_stepper, args.model, args.window, args.num_classes, args.weights)


def default_decode(budgets: Any) -> Callable[..., Iterable]:
    """``iter_video_frames`` held to the run's ``media_seconds`` and ``video_frames`` budgets."""
    from operators.media.video import iter_video_frames

    return functools.partial(iter_video_frames, media_seconds=budgets.media_seconds, video_frames=budgets.video_frames)


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None,
        decode: Optional[Callable[..., Iterable]] = None) -> Dict[str, Any]:
    """Runs the video-features job; returns the summary (also in ``summary.json``).

    Args:
        decode: ``iter_video_frames``-like decoder (tests inject fakes; default: ffmpeg).
    """
    return VideoFeatures(decode).run(argv, test_pipeline)
