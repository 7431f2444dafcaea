"""``mediabeam live-asr``: live transcription of many concurrent audio streams (Beam streaming).

Clients (``mediabeam send``) stream framed PCM chunks over TCP (127.0.0.1 by default), browsers
and apps over WebSocket (``--ws-port``), or recordings are replayed with ``--tail``; each stream's
cache-aware ASR state lives in Beam state; partial transcript deltas and one ``final`` per
utterance (endpointing) come out as JSON lines (stdout, ``--output`` file, back to WebSocket
clients, and with ``--reply`` to TCP clients). Runs locally on the in-process FnApiRunner.
"""

import argparse
import functools
import os
from typing import Optional, Sequence

from operators.asr.endpointing import DEFAULT_ENDPOINTING, EndpointRule
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
    ends = parser.add_argument_group("endpointing (one final event per utterance)")
    ends.add_argument("--endpointing", choices=("on", "off"), default="on",
                      help="end utterances at silences (CTC blank run + no voice); off: a stream is one utterance")
    ends.add_argument("--endpoint-silence", type=float, default=DEFAULT_ENDPOINTING.rule2.min_trailing_silence,
                      help="seconds of trailing silence that end an utterance after speech (sherpa-onnx rule 2)")
    ends.add_argument("--vad", choices=("energy", "silero"), default=DEFAULT_ENDPOINTING.vad,
                      help="voice-activity detector: frame energy, or Silero VAD's trained model (needs "
                           "`pip install --no-deps silero-vad==6.2.3`, or --vad-model)")
    ends.add_argument("--vad-threshold-db", type=float, default=DEFAULT_ENDPOINTING.vad_threshold_db,
                      help="--vad energy: voice threshold, dBFS; quieter frames count as silence")
    ends.add_argument("--speech-threshold", type=float, default=DEFAULT_ENDPOINTING.speech_threshold,
                      help="--vad silero: speech probability at or above which a frame is voice")
    ends.add_argument("--vad-model", default="",
                      help="--vad silero: silero_vad.jit or silero_vad_16k.safetensors (default: the package's)")
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
    endpointing = None
    if args.endpointing == "on":
        if not 0 < args.endpoint_silence <= 60:
            raise ConfigError("--endpoint-silence must be in (0, 60] seconds")
        if not -120 <= args.vad_threshold_db <= 0:
            raise ConfigError("--vad-threshold-db must be in -120..0 (dBFS)")
        if not 0 < args.speech_threshold < 1:
            raise ConfigError("--speech-threshold must be in (0, 1) (a probability; Silero's default is 0.5)")
        if args.vad_model and not os.path.isfile(args.vad_model):
            raise ConfigError(f"--vad-model {args.vad_model!r} does not exist; pass silero_vad.jit or "
                              "silero_vad_16k.safetensors, or omit it for the silero-vad package's")
        endpointing = DEFAULT_ENDPOINTING._replace(rule2=EndpointRule(True, args.endpoint_silence, 0.0),
                                                   vad_threshold_db=args.vad_threshold_db, vad=args.vad,
                                                   speech_threshold=args.speech_threshold, vad_model=args.vad_model)
    factory = functools.partial(load_live_asr, args.model, parse_context(args.att_context), args.decoder,
                                endpointing)
    try:
        rate = factory().sample_rate  # loads the models once here: a bad model or option fails before the job
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        fallback = "--vad energy" if args.vad == "silero" and args.endpointing == "on" else "--endpointing off"
        raise ConfigError(f"{err} (or pass {fallback})") from None
    name = os.path.basename(args.model) if args.model else "asr_default"
    return run_live(args, budgets, options, factory, name, test_pipeline, media="audio", model_rate=rate)
