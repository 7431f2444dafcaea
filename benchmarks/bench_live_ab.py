"""Live ASR latency of two or more job variants, interleaved: checkouts or flags side by side.

A shared host's speed moves by up to 2x within minutes, more than most changes to the live
job, so one run of each variant compares the host's moments, not the variants. This starts
each variant's ``mediabeam live-asr`` in turn (order reversed every other round), runs the same
levels as ``bench_live.py`` against it, and repeats; it prints one JSON line per run, with the
host's steal share (``/proc/stat``: time the hypervisor gave to other machines, which latency
follows), then per variant the medians over all runs and over the quiet ones (steal share
under ``--quiet-steal``).

A variant is ``NAME=CHECKOUT`` or ``NAME=CHECKOUT@FLAGS``: a source tree (``.`` for this
one; e.g. ``git worktree add /tmp/before HEAD~1``) and extra ``live-asr`` flags, split on
spaces, for flags that the checkout knows:

    .venv/bin/python benchmarks/bench_live_ab.py "before=/tmp/before" "now=." --rounds 8
    .venv/bin/python benchmarks/bench_live_ab.py "b0=.@--bundle-seconds 0" "b03=.@--bundle-seconds 0.3"

Every variant runs with ``--att-context 70,1 --endpoint-silence 0.32`` (run C of
docs/benchmarks.md) unless ``--base-flags`` says otherwise. Needs espeak-ng.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from bench_live import conversations, run_level, start_job

FIGURES = ("partial_p95_ms", "speech_end_to_final_p50_ms", "speech_end_to_final_p95_ms")


def parse_variant(text: str) -> Tuple[str, str, List[str]]:
    """``NAME=CHECKOUT[@FLAGS]`` → (name, checkout folder, extra flags)."""
    name, sep, rest = text.partition("=")
    checkout, _, flags = rest.partition("@")
    if not sep or not name or not checkout:
        raise SystemExit(f"variant {text!r}: write NAME=CHECKOUT or NAME=CHECKOUT@FLAGS")
    folder = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(folder, "pipelines", "cli.py")):
        raise SystemExit(f"variant {name}: {folder} is not a mediabeam checkout (no pipelines/cli.py)")
    return name, folder, flags.split()


def summarise(runs: List[dict], levels: List[str], quiet_steal: float) -> Dict[str, dict]:
    """Per level, the median of each figure over all runs and over the runs with little steal."""
    out: Dict[str, dict] = {}
    for level in levels:
        rows = [run[level] for run in runs]
        quiet = [row for row in rows if row.get("host_steal_share") is not None
                 and row["host_steal_share"] < quiet_steal]
        out[level] = {"runs": len(rows), "quiet_runs": len(quiet)}
        for figure in FIGURES:
            out[level][figure] = _median([row.get(figure) for row in rows])
            out[level][f"quiet_{figure}"] = _median([row.get(figure) for row in quiet])
    return out


def _median(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=CHECKOUT or NAME=CHECKOUT@FLAGS (two or more)")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each variant")
    parser.add_argument("--levels", default="tcp:32,ws:32", help="TRANSPORT:STREAMS, comma-separated")
    parser.add_argument("--base-flags", default="--att-context 70,1 --endpoint-silence 0.32",
                        help="live-asr flags of every variant")
    parser.add_argument("--piece-seconds", type=float, default=0.16, help="audio per client message")
    parser.add_argument("--quiet-steal", type=float, default=0.03, help="steal share under which a run is quiet")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    if len(variants) < 2 or len({name for name, _, _ in variants}) < len(variants):
        raise SystemExit("give two or more variants with distinct names")
    levels = args.levels.split(",")
    talks = conversations(8)
    runs: Dict[str, List[dict]] = {name: [] for name, _, _ in variants}
    seed = 0
    for round_ in range(args.rounds):
        for name, checkout, flags in variants if round_ % 2 == 0 else variants[::-1]:
            with tempfile.TemporaryDirectory() as workdir:
                proc, tcp, ws = start_job(args.base_flags.split() + flags, os.path.join(workdir, "live.log"), checkout)
                try:
                    run_level("tcp", (tcp, ws), 1, talks, args.piece_seconds, seed=999)  # warm-up
                    run = {}
                    for level in levels:
                        transport, streams = level.split(":")
                        seed += 1
                        run[level] = run_level(transport, (tcp, ws), int(streams), talks, args.piece_seconds, seed)
                finally:
                    proc.kill()
                    proc.wait()
            runs[name].append(run)
            print(json.dumps({"at": time.strftime("%H:%M:%S"), "variant": name, **{
                level: {k: run[level].get(k) for k in ("host_steal_share", *FIGURES, "finals_received",
                                                       "finals_expected")} for level in levels}}), flush=True)
    report = {name: summarise(runs[name], levels, args.quiet_steal) for name in runs}
    print(json.dumps({"medians": report}))
    return report


if __name__ == "__main__":
    main()
