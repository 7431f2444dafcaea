"""Live ASR latency and concurrency over loopback TCP (one run, bounded in time).

Starts ``mediabeam live-asr --reply`` (FnApiRunner, in a subprocess) once per model, then
for 1, 8 and 32 concurrent real-time streams (``--levels``) sends 1.12 s PCM chunks
(``[70, 13]``), each stream starting at a random phase, and measures per partial event the
latency from the moment the chunk's last sample was sent to the moment the event arrives
back at the client. One chunk completes one model step, so every chunk has one event.

Reports p50/p95/p99 per level and the largest level whose p95 stays under one chunk duration
(real time sustained; past the last level the count is doubled while it keeps up, and the
gap between the last level that keeps up and the first that does not is bisected twice), for
the default model (the embedded one; random weights of its shape
if it is missing) and the large random-weight configuration (17 layers, d 512, 8 heads).
Prints one JSON line at the end.

    .venv/bin/python benchmarks/bench_live.py [--levels 1,8,32] [--chunks 5] [--skip-large]

The live job runs with its defaults (1 PyTorch thread, 1 shard) on this machine's cores,
shared with the benchmark's client threads.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, save_nemo
from operators.asr.stream_engine import random_live_asr
from pipelines.tools.send import audio_frames, connect
from schemas.live import encode_frame

CHUNK_SECONDS = 1.12
RATE = 16000


def _start_pipeline(model: str, log_path: str):
    """Starts the live job on a free port; returns (process, port)."""
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "pipelines.cli", "live-asr", "--model", model, "--port", "0", "--reply",
           "--output", os.devnull, "--idle-timeout", "15", "--max-idle-seconds", "6", "--stop-after", "900"]
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        with open(log_path) as handle:
            for line in handle:
                if "listening on" in line:
                    return proc, int(line.rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise RuntimeError(f"live-asr exited: {open(log_path).read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("live-asr did not start listening within 180 s")


def _stream(port: int, sid: str, audio: np.ndarray, start_delay: float, latencies: List[float],
            missing: List[int], timeout: float) -> None:
    """Sends one stream in real time and records the latency of every partial event."""
    time.sleep(start_delay)
    sent: Dict[int, float] = {}
    got: Dict[int, float] = {}
    done = threading.Event()
    with connect("127.0.0.1", port) as sock:

        def reader() -> None:
            buffer = b""
            sock.settimeout(0.2)
            while not done.is_set():
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    continue
                if not data:
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    if event["event"] == "partial":
                        got.setdefault(event["seq"], time.time())
                    elif event["event"] == "final":
                        done.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        begin = time.monotonic()
        for frame in audio_frames(audio, sid, CHUNK_SECONDS):
            # Real time: a chunk leaves once its last sample would have been captured.
            wait = begin + (frame.seq + 1) * CHUNK_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sock.sendall(encode_frame(frame))
            sent[frame.seq] = time.time()
        done.wait(timeout)
        done.set()
        thread.join()
    for seq, at in sent.items():
        if seq in got:
            latencies.append(got[seq] - at)
        else:
            missing.append(seq)


def _level(port: int, streams: int, chunks: int, seed: int) -> Dict[str, object]:
    rng = np.random.default_rng(seed)
    latencies: List[float] = []
    missing: List[int] = []
    threads = []
    for i in range(streams):
        audio = (rng.standard_normal(int(chunks * CHUNK_SECONDS * RATE)) * 0.1).astype(np.float32)
        delay = random.Random(seed + i).uniform(0, CHUNK_SECONDS) if streams > 1 else 0.0
        threads.append(threading.Thread(target=_stream, args=(
            port, f"bench-{seed}-{i}", audio, delay, latencies, missing, 60.0 + 5 * streams)))
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = np.array(latencies) * 1000
    result = {"streams": streams, "events": len(latencies), "missing": len(missing),
              "wall_s": round(time.time() - start, 1)}
    if len(values):
        result.update({f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)})
    result["real_time"] = bool(len(values) and not missing and result["p95_ms"] < CHUNK_SECONDS * 1000)
    return result


def _bench_model(name: str, model_path: str, levels: List[int], chunks: int, workdir: str,
                 search_up_to: int) -> Dict[str, object]:
    """Runs the levels; while the largest level still keeps up, doubles it (up to ``search_up_to``)."""
    proc, port = _start_pipeline(model_path, os.path.join(workdir, f"{name}.log"))
    try:
        _level(port, 1, 2, seed=999)  # warm-up: model load, first steps
        results = [_level(port, n, chunks, seed=n) for n in levels]
        while results[-1]["real_time"] and results[-1]["streams"] * 2 <= search_up_to:
            results.append(_level(port, results[-1]["streams"] * 2, chunks, seed=len(results)))
        for _ in range(2):  # narrow the gap between the last level that kept up and the first that did not
            ok = max([r["streams"] for r in results if r["real_time"]], default=0)
            bad = min([r["streams"] for r in results if not r["real_time"]], default=0)
            middle = (ok + bad) // 2
            if not ok or not bad or middle in (ok, bad):
                break
            results.append(_level(port, middle, chunks, seed=len(results)))
        results.sort(key=lambda r: r["streams"])
    finally:
        proc.wait(timeout=300)
    sustained = max([r["streams"] for r in results if r["real_time"]], default=0)
    tried = [r["streams"] for r in results]
    first_fail = min([r["streams"] for r in results if not r["real_time"]], default=None)
    note = f"{sustained} sustained; " + (f"p95 > chunk at {first_fail}" if first_fail else
                                         f"not exceeded up to {max(tried)} (the search cap)")
    return {"model": name, "levels": results, "sustained_real_time_streams": sustained, "sustained_note": note}


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--chunks", type=int, default=5, help="1.12 s chunks per stream")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--search-up-to", type=int, default=128,
                        help="double the stream count past the levels while p95 stays under a chunk")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]
    report = {"chunk_s": CHUNK_SECONDS, "runner": "FnApiRunner (in-process), loopback TCP", "models": []}
    with tempfile.TemporaryDirectory() as workdir:
        default = EMBEDDED_MODEL
        if not os.path.isfile(default):
            default = os.path.join(workdir, "default_shape_random.nemo")
            engine = random_live_asr(n_layers=4, d_model=128, n_heads=4, subsampling_channels=32)
            save_nemo(default, engine.asr.model, labels=list("abcdefghijk "))
            report["default_model"] = "embedded model missing: random weights of its shape (4 x 128, 4 heads)"
        else:
            report["default_model"] = EMBEDDED_MODEL
        report["models"].append(_bench_model("default", default, levels, args.chunks, workdir, args.search_up_to))
        print(json.dumps(report["models"][-1]), flush=True)
        if not args.skip_large:
            large = os.path.join(workdir, "large_random.nemo")
            engine = random_live_asr(n_layers=17, d_model=512, n_heads=8, subsampling_channels=256)
            save_nemo(large, engine.asr.model, labels=list("abcdefghijk "))
            del engine
            report["models"].append(_bench_model("large_17x512_random", large, levels, args.chunks, workdir,
                                              args.search_up_to))
            print(json.dumps(report["models"][-1]), flush=True)
    target = next(r for r in report["models"][0]["levels"] if r["streams"] == 8) if 8 in levels else None
    if target is not None:
        report["target_p95_under_300ms_at_8_default"] = bool(target.get("p95_ms", 1e9) < 300)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
