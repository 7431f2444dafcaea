"""Live shard state per bundle: the append-only log vs the whole shard in one value (one run).

A live shard of ``--streams`` speech streams of the embedded ASR model is stepped through
``--bundles`` bundles; each bundle steps ``--touched`` of them (rotating), as the source's
polls do. After every bundle, the shard's state is written three ways, side by side:

* **whole shard** (the reference, the previous design): the book and every stream's state,
  with its attention key/value cache, coded as one ``ReadModifyWriteState`` value;
* **log, key/value stored**: ``ShardStateLog`` records of the touched streams, states with the
  key/value cache;
* **log** (ours): ``ShardStateLog`` records, states without the key/value cache (``LiveASR``
  rebuilds it before each step).

Per bundle it reports the bytes written to the bag (the mean, rewrites of the log included),
the time to code them (replaying the log included), and the time of Beam's state cache
measuring what it then holds (``statecache.get_deep_size``, which the SDK calls on every
write; it starts with a fixed cost of about a millisecond). Times are medians over the bundles,
best of ``--repeats`` passes. Ends with one JSON line.

    .venv/bin/python benchmarks/bench_live_state.py [--streams 32] [--touched 12] [--bundles 40]
"""

import argparse
import json
import statistics
import time
from typing import Dict, List

import numpy as np
from apache_beam.runners.worker.statecache import get_deep_size

from operators.asr.endpointing import DEFAULT_ENDPOINTING, EndpointRule
from operators.asr.stream_engine import load_live_asr
from transforms.live.coder import NumpyTreeCoder
from transforms.live.state_log import RECORD_CODER, ShardStateLog


def _with_kv(engine, state: dict) -> dict:
    """The state as stored before: with the attention key/value cache."""
    import torch

    att = torch.from_numpy(state["asr/cache_last_channel"])
    return {**state, "asr/cache_last_kv": engine.asr.model.encoder.kv_cache_from(att).numpy()}


def _book(streams: int, bundle: int) -> dict:
    return {"streams": {f"s{i}": {"next": bundle, "seen": float(bundle)} for i in range(streams)}, "closed": {}}


def run(args) -> Dict[str, Dict[str, float]]:
    engine = load_live_asr(att_context=[70, 1], endpointing=DEFAULT_ENDPOINTING._replace(
        rule2=EndpointRule(True, 0.32, 0.0)))
    rng = np.random.default_rng(0)
    piece = int(0.16 * engine.sample_rate)
    states = [engine.init_state() for _ in range(args.streams)]
    history: List[List[int]] = []
    snapshots: List[List[dict]] = []
    for bundle in range(args.bundles):
        touched = [(bundle * args.touched + k) % args.streams for k in range(args.touched)]
        audio = [(0.1 * rng.standard_normal(piece)).astype(np.float32) for _ in touched]
        _, new = engine.step(audio, [states[i] for i in touched])
        for i, state in zip(touched, new):
            states[i] = state
        history.append(touched)
        snapshots.append(list(states))
    coder = NumpyTreeCoder()
    results = {}
    for name in ("whole shard", "log, key/value stored", "log"):
        kv = name != "log"
        prepared = [{i: _with_kv(engine, snapshot[i]) if kv else snapshot[i]
                     for i in (range(args.streams) if name == "whole shard" else touched)}
                    for touched, snapshot in zip(history, snapshots)]
        best = None
        for _ in range(args.repeats):
            written, code_ms, measure_ms = [], [], []
            log_records: List = []
            for bundle, streams in enumerate(prepared):
                book = _book(args.streams, bundle)
                start = time.perf_counter()
                if name == "whole shard":
                    held = [{"book": book, "engines": {f"s{i}": state for i, state in streams.items()}}]
                    coded = [coder.encode(held[0])]
                else:
                    shard = ShardStateLog(log_records)
                    for i, state in streams.items():
                        shard[f"s{i}"] = state
                    rewrite, records = shard.commit(book)
                    coded = [RECORD_CODER.encode(record) for record in records]
                    log_records = list(records) if rewrite else log_records + records
                    held = log_records
                code_ms.append((time.perf_counter() - start) * 1e3)
                written.append(sum(len(c) for c in coded))
                start = time.perf_counter()
                get_deep_size(held)
                measure_ms.append((time.perf_counter() - start) * 1e3)
            figures = {"bytes_per_bundle": statistics.mean(written), "code_ms": statistics.median(code_ms),
                       "cache_measure_ms": statistics.median(measure_ms)}
            best = figures if best is None else {k: min(best[k], v) for k, v in figures.items()}
        results[name] = best
    return results


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--touched", type=int, default=12, help="streams stepped per bundle")
    parser.add_argument("--bundles", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = run(args)
    print(f"{args.streams} streams, {args.touched} stepped per bundle, median of {args.bundles} bundles, "
          f"best of {args.repeats} passes")
    print(f"{'state written as':<24} {'MB per bundle':>14} {'code ms':>9} {'cache measure ms':>17}")
    for name, figures in results.items():
        print(f"{name:<24} {figures['bytes_per_bundle'] / 1e6:>14.2f} {figures['code_ms']:>9.2f} "
              f"{figures['cache_measure_ms']:>17.2f}")
    report = {"streams": args.streams, "touched": args.touched, "bundles": args.bundles, "results": results}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
