"""``mediabeam live-video``: continual (CoX3D) per-frame predictions for live video streams.

Clients send one encoded frame (JPEG/PNG) per chunk (``mediabeam send video.mp4`` decodes
and encodes them); each stream's continual state lives in Beam state; one ``prediction``
event per network output (top classes and scores) and a ``final`` event per stream.
"""

import argparse
import functools
import os
import sys
from typing import Optional, Sequence

from operators.video.stream_engine import live_co_x3d
from pipelines.common import ConfigError, parse_job_args
from pipelines.live_common import add_live_flags, check_live_flags, run_live


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None):
    """Parses flags, checks them and runs the live pipeline until its source ends; returns the result."""
    parser = argparse.ArgumentParser(prog="mediabeam live-video", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", choices=("s", "m", "tiny"), default="s", help="X3D variant")
    parser.add_argument("--window", type=int, default=16, help="temporal pool window (frames)")
    parser.add_argument("--weights", default=None,
                        help="local X3D checkpoint (none: random weights, a warning is printed)")
    parser.add_argument("--num-classes", type=int, default=400, help="classes of the model's output layer")
    parser.add_argument("--size", type=int, default=160, help="frames are resized to SIZE×SIZE")
    parser.add_argument("--top-k", type=int, default=5, help="classes (and scores) reported per prediction")
    add_live_flags(parser)
    args, options = parse_job_args(parser, argv)
    budgets = check_live_flags(args)
    if args.window < 1 or args.size < 8 or args.top_k < 1 or args.num_classes < 1:
        raise ConfigError("--window ≥ 1, --size ≥ 8, --top-k ≥ 1 and --num-classes ≥ 1 are needed")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise ConfigError(f"--weights {args.weights!r} does not exist; pass a local X3D checkpoint")
    if args.weights is None:
        print("mediabeam live-video: WARNING: no --weights given, the model has RANDOM weights and its "
              "predictions are meaningless (pass --weights CHECKPOINT for real predictions)", file=sys.stderr)
    factory = functools.partial(live_co_x3d, args.variant, args.window, args.num_classes, args.weights,
                                args.size, args.top_k, max_pixels=budgets.frame_pixels)
    return run_live(args, budgets, options, factory, f"co_x3d_{args.variant}-w{args.window}", test_pipeline,
                    media="video", model_rate=0)
