"""``mediabeam live-asr``: live transcription of many concurrent audio streams (Beam streaming).

Clients (``mediabeam send``) stream framed PCM chunks over TCP (127.0.0.1 by default) or
recordings are replayed with ``--tail``; each stream's cache-aware ASR state lives in Beam
state; partial and final transcript deltas come out as JSON lines (stdout, ``--output``
file, and with ``--reply`` back to the client). Runs locally on the in-process FnApiRunner.
"""

import argparse
import functools
import os
from typing import Optional, Sequence

from operators.asr.stream_engine import load_live_asr
from pipelines.asr_flags import parse_context
from pipelines.common import ConfigError, parse_job_args
from pipelines.live_common import add_live_flags, check_live_flags, run_live


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None):
    """Parses flags, checks them and runs the live pipeline until its source ends; returns the result."""
    parser = argparse.ArgumentParser(prog="mediabeam live-asr", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help=".nemo model (default: the embedded model)")
    parser.add_argument("--att-context", default=None, help="look-ahead L,R (70,13 → 1.12 s chunks)")
    parser.add_argument("--decoder", choices=("ctc", "rnnt"), default=None, help="hybrid models: which head")
    add_live_flags(parser)
    args, options = parse_job_args(parser, argv)
    budgets = check_live_flags(args)
    if args.model is None:
        from operators.asr.nemo_checkpoint import EMBEDDED_MODEL

        if not os.path.isfile(EMBEDDED_MODEL):
            raise ConfigError(f"the embedded model {EMBEDDED_MODEL} is missing; "
                              "run `mediabeam train-asr` or pass --model")
    elif not os.path.isfile(args.model):
        raise ConfigError(f"--model {args.model!r} does not exist; pass a .nemo file or omit it for the default")
    factory = functools.partial(load_live_asr, args.model, parse_context(args.att_context), args.decoder)
    name = os.path.basename(args.model) if args.model else "asr_default"
    return run_live(args, budgets, options, factory, name, test_pipeline)
