"""What ``live-asr`` and ``live-video`` share: flags, checks, budgets and the streaming graph."""

import argparse
import os
import sys
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.common import ConfigError, create_pipeline
from pipelines.job_flags import parse_budgets
from schemas.budgets import DEFAULT_BUDGETS, Budgets
from transforms.errors import DEAD_LETTER_TAG
from transforms.live.pollers import SourceSpec, close_pollers
from transforms.live.sink import WriteLiveEvents, error_event
from transforms.live.source import ReadLiveFrames
from transforms.live.streams import LiveStreams

LIVE_BUDGETS = ("live_frame_bytes", "live_queued_bytes", "live_streams", "live_pending_chunks",
                "live_pending_bytes", "live_connections", "live_client_bytes_per_second", "live_reply_bytes",
                "frame_pixels")
INTERRUPTED = 130  # exit status after Ctrl-C, as shells report SIGINT


def add_live_flags(parser: argparse.ArgumentParser) -> None:
    """Source, sink, stream-handling, budget and bounded-run flags."""
    src = parser.add_argument_group("source")
    src.add_argument("--host", default="127.0.0.1", help="listen address (loopback only by default)")
    src.add_argument("--port", type=int, default=8765, help="listen port (0: any free port, printed)")
    src.add_argument("--tail", default=None, help="replay .mbl recordings from this file or folder instead of TCP")
    src.add_argument("--ws-port", type=int, default=0,
                     help="also serve WebSocket clients on this port, on --host (0: off; see docs/live.md)")
    src.add_argument("--bundle-seconds", type=float, default=0.3,
                     help="how long one bundle keeps polling while frames arrive; each poll's frames are processed "
                          "at once, state is committed and idle timers fire between bundles (0: one poll per bundle)")
    src.add_argument("--http-port", type=int, default=0,
                     help="serve the browser page (microphone / camera) on this port, on --host; needs --ws-port "
                          "(0: off)")
    out = parser.add_argument_group("sink")
    out.add_argument("--output", default="-", help="JSON-lines events file ('-': stdout)")
    out.add_argument("--reply", action="store_true", help="also send each event back to the stream's client")
    streams = parser.add_argument_group("streams")
    streams.add_argument("--idle-timeout", type=float, default=30.0, help="seconds before an idle stream is finalised")
    streams.add_argument("--num-shards", type=int, default=1, help="stream shards (parallelism when distributed)")
    streams.add_argument("--max-batch", type=int, default=64, help="most streams in one batched model step")
    streams.add_argument("--threads", type=int, default=1,
                         help="PyTorch threads per worker (1 is fastest on shared cores; 0: PyTorch's default)")
    defaults = ", ".join(f"{name}={getattr(DEFAULT_BUDGETS, name)}" for name in LIVE_BUDGETS)
    streams.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                         help=f"override an untrusted-input budget, repeatable (live ones: {defaults}; "
                              "see docs/security.md)")
    bounded = parser.add_argument_group("bounded runs")
    bounded.add_argument("--max-idle-seconds", type=float, default=0.0,
                         help="stop after this long without a frame, then drain for --idle-timeout (0: never)")
    bounded.add_argument("--stop-after", type=float, default=0.0,
                         help="stop after this many seconds, then drain for --idle-timeout (0: never)")


def check_live_flags(args: argparse.Namespace) -> Budgets:
    """Raises ``ConfigError`` for flags that cannot work, saying how to fix them; returns the budgets."""
    if args.tail is None and not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} must be in 0..65535")
    if args.tail is not None and not os.path.exists(args.tail):
        raise ConfigError(f"--tail {args.tail!r} does not exist; pass a .mbl recording or a folder of them")
    if not 0 <= args.bundle_seconds <= 60:
        raise ConfigError(f"--bundle-seconds {args.bundle_seconds} must be between 0 and 60 (seconds; default 0.3)")
    if args.threads < 0:
        raise ConfigError("--threads must be 0 (PyTorch's default) or more")
    for name in ("num_shards", "max_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.idle_timeout <= 0:
        raise ConfigError("--idle-timeout must be positive (seconds)")
    if args.reply and args.tail is not None:
        raise ConfigError("--reply needs the TCP source; drop it with --tail")
    if not 0 <= args.ws_port < 65536:
        raise ConfigError(f"--ws-port {args.ws_port} must be in 1..65535 (0: no WebSocket endpoint)")
    if args.ws_port and args.tail is not None:
        raise ConfigError("--ws-port needs the live listener; drop it with --tail")
    if args.ws_port and args.ws_port == args.port:
        raise ConfigError(f"--ws-port {args.ws_port} is also --port; give the WebSocket endpoint its own port")
    if not 0 <= args.http_port < 65536:
        raise ConfigError(f"--http-port {args.http_port} must be in 1..65535 (0: no page)")
    if args.http_port and not args.ws_port:
        raise ConfigError("--http-port needs --ws-port (the page streams over the WebSocket endpoint)")
    if args.http_port and args.http_port in (args.port, args.ws_port):
        raise ConfigError(f"--http-port {args.http_port} is taken by --port or --ws-port; give the page its own port")
    if args.output != "-" and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise ConfigError(f"--output {args.output!r}: its folder does not exist")
    return parse_budgets(args.budget)


def source_spec(args: argparse.Namespace, budgets: Budgets, media: str = "audio",
                model_rate: int = 16000) -> SourceSpec:
    """The source of the job's flags (``media``/``model_rate``: what WebSocket clients send)."""
    kind, address = ("tail", os.path.abspath(args.tail)) if args.tail else ("tcp", f"{args.host}:{args.port}")
    ws_address = f"{args.host}:{args.ws_port}" if args.ws_port else ""
    http_address = f"{args.host}:{args.http_port}" if args.http_port else ""
    # Bounded runs drain past the idle timeout, so open streams are finalised before the end.
    return SourceSpec(kind, address, budgets, args.idle_timeout, args.max_idle_seconds, args.stop_after,
                      bundle_seconds=args.bundle_seconds, drain_seconds=args.idle_timeout + 0.5,
                      ws_address=ws_address, media=media,
                      model_rate=model_rate, http_address=http_address)


def run_live(args: argparse.Namespace, budgets: Budgets, options: PipelineOptions,
             engine_factory: Callable[[], Any], model: str,
             test_pipeline: Optional[beam.Pipeline] = None, media: str = "audio",
             model_rate: int = 16000) -> PipelineResult:
    """Builds source → per-stream inference → JSON sink (events and error events), runs it
    and returns the finished run's result (metrics: ``LiveSource/*``, ``LiveStreams/*``).

    Ctrl-C stops the job: the listener is closed and the process exits with status 130 and
    one line, not a traceback.
    """
    options.view_as(StandardOptions).streaming = True
    pipeline = create_pipeline(options, test_pipeline)
    frames = pipeline | "ReadLiveFrames" >> ReadLiveFrames(source_spec(args, budgets, media, model_rate))
    results = frames["chunks"] | "LiveStreams" >> LiveStreams(
        engine_factory, model, num_shards=args.num_shards, idle_seconds=args.idle_timeout, budgets=budgets,
        max_batch=args.max_batch, threads=args.threads or None)
    # Two sink branches instead of a Flatten: the FnApiRunner runs a stage after a Flatten only
    # once the unbounded source has finished, which would hold every event until the end.
    for label, dead in (("Source", frames[DEAD_LETTER_TAG]), ("Streams", results[DEAD_LETTER_TAG])):
        _ = (
            dead
            | f"{label}ErrorEvents" >> beam.Map(error_event)
            | f"Write{label}ErrorEvents" >> WriteLiveEvents(args.output, args.reply)
        )
    _ = results["events"] | "WriteEvents" >> WriteLiveEvents(args.output, args.reply)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except KeyboardInterrupt:
        close_pollers()
        print(f"mediabeam live ({model}): interrupted (Ctrl-C); open streams were not finalised", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    return result

