"""Cache-aware streaming FastConformer: step cost, real-time factor and concurrent streams.

One run, everything side by side on the same machine state:

1. Cache-aware ``step`` vs the buffered baseline (re-encode a sliding 10 s buffer every chunk and
   keep the newest chunk's frames) with the same model at 1.12 s chunks (``[70,13]``): the large
   config and the embedded default model.
2. Large config (17 layers, d 512, 8 heads, random weights): ms per step and real-time factor
   at ``[70,13]`` and ``[70,0]`` on 1 thread.
3. Concurrent real-time streams on 2 threads with batches of B = 1, 8, 32 streams per step:
   ``B × chunk duration / step time``.

Prints a human-readable table and one JSON line. ``--quick`` uses fewer repetitions.
"""

import argparse
import json
import os
import time
from typing import Callable, Tuple

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning burns the other
# thread's core and inflates both wall and CPU time of 2-thread runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from operators.nemo_checkpoint import EMBEDDED_MODEL, load_nemo  # noqa: E402
from operators.streaming_asr import CharVocabulary, EncoderConfig, ModelConfig, StreamingASR, random_model  # noqa: E402

LARGE = EncoderConfig(n_layers=17, d_model=512, n_heads=8, subsampling_conv_channels=256)
MEL_HOP_S = 0.01


def _timed(fn: Callable[[], None], repeats: int) -> Tuple[float, float]:
    """Median wall and CPU (process) time of ``fn`` in ms, after one warm-up call.

    On a shared machine the wall time includes waiting for other processes; the CPU time is what
    the call itself consumed (summed over its threads).
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1e3)
        cpus.append((time.process_time() - cpu) * 1e3)
    walls.sort()
    cpus.sort()
    return walls[len(walls) // 2], cpus[len(cpus) // 2]


def _warm_state(op: StreamingASR, batch: int, steps: int = 6):
    """A state after ``steps`` full chunks (full attention cache), and the next chunk."""
    _, first, later = op.chunk_sizes()
    gen = torch.Generator().manual_seed(0)
    state = op.initial_state(batch)
    chunk = torch.randn(batch, 80, first, generator=gen)
    _, state = op.step(chunk, torch.full((batch,), first), state)
    for _ in range(steps):
        chunk = torch.randn(batch, 80, later, generator=gen)
        _, state = op.step(chunk, torch.full((batch,), later), state)
    return state, chunk, torch.full((batch,), later)


def bench_step(op: StreamingASR, batch: int, repeats: int) -> Tuple[float, float]:
    state, chunk, lengths = _warm_state(op, batch, steps=max(2, 80 // op.chunk_sizes()[0]))
    return _timed(lambda: op.step(chunk, lengths, state), repeats)


def bench_buffered(op: StreamingASR, buffer_s: float, repeats: int) -> Tuple[float, float]:
    """Baseline: every chunk, re-encode the last ``buffer_s`` seconds and decode the newest chunk."""
    frames = int(round(buffer_s / MEL_HOP_S))
    features = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([frames])
    chunk = op.chunk_sizes()[0]

    def once():
        encoded, valid = op.encode(features, lengths)
        op.model.ctc_head(encoded[:, int(valid[0]) - chunk : int(valid[0])]).argmax(-1)

    return _timed(once, repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    model = random_model(ModelConfig(encoder=LARGE, vocab_size=1024), seed=0)
    params = sum(p.numel() for p in model.parameters())
    vocab = CharVocabulary([f"t{i}" for i in range(1024)])
    look13 = StreamingASR(model, vocab, (70, 13))
    look0 = StreamingASR(model, vocab, (70, 0))
    report = {"model": "17x512 FastConformer CTC, random weights", "parameters": params}

    torch.set_num_threads(1)
    chunk_s = look13.chunk_sizes()[2] * MEL_HOP_S
    step13, step13_cpu = bench_step(look13, 1, repeats)
    buffered, buffered_cpu = bench_buffered(look13, 10.0, repeats)
    report["cache_vs_buffered_1thread"] = {
        "chunk_s": chunk_s, "cache_aware_ms": step13, "buffered_10s_ms": buffered, "speedup": buffered / step13,
        "cache_aware_cpu_ms": step13_cpu, "buffered_10s_cpu_ms": buffered_cpu, "speedup_cpu": buffered_cpu / step13_cpu,
    }
    step0, step0_cpu = bench_step(look0, 1, repeats * 4)
    report["large_1thread"] = {
        "70_13": {"ms_per_step": step13, "cpu_ms_per_step": step13_cpu, "audio_ms_per_step": chunk_s * 1e3,
                  "rtf": step13 / (chunk_s * 1e3), "rtf_cpu": step13_cpu / (chunk_s * 1e3)},
        "70_0": {"ms_per_step": step0, "cpu_ms_per_step": step0_cpu, "audio_ms_per_step": 80.0,
                 "rtf": step0 / 80.0, "rtf_cpu": step0_cpu / 80.0},
    }
    if os.path.exists(EMBEDDED_MODEL):
        small = load_nemo(EMBEDDED_MODEL)
        small_step, small_step_cpu = bench_step(small, 1, repeats * 3)
        small_buf, small_buf_cpu = bench_buffered(small, 10.0, repeats * 3)
        report["cache_vs_buffered_embedded_1thread"] = {
            "parameters": sum(p.numel() for p in small.model.parameters()), "chunk_s": chunk_s,
            "cache_aware_ms": small_step, "buffered_10s_ms": small_buf, "speedup": small_buf / small_step,
            "cache_aware_cpu_ms": small_step_cpu, "buffered_10s_cpu_ms": small_buf_cpu,
            "speedup_cpu": small_buf_cpu / small_step_cpu,
        }
    torch.set_num_threads(2)
    streams = {}
    for batch in (1, 8, 32):
        ms, cpu = bench_step(look13, batch, max(2, repeats // 2))
        # Two cores: a step that uses C ms of CPU time can at best take C / 2 ms of wall time.
        streams[str(batch)] = {"ms_per_step": ms, "cpu_ms_per_step": cpu,
                               "realtime_streams": batch * chunk_s * 1e3 / ms,
                               "realtime_streams_cpu": batch * chunk_s * 1e3 / (cpu / 2)}
    report["concurrent_70_13_2threads"] = streams
    report["max_realtime_streams_70_13"] = max(v["realtime_streams"] for v in streams.values())
    report["max_realtime_streams_70_13_cpu"] = max(v["realtime_streams_cpu"] for v in streams.values())

    print(f"{report['model']} ({params / 1e6:.1f} M parameters); wall ms (CPU ms)")
    c = report["cache_vs_buffered_1thread"]
    print(f"1.12 s chunk, 1 thread: cache-aware {c['cache_aware_ms']:.1f} ({c['cache_aware_cpu_ms']:.1f}) vs "
          f"buffered 10 s {c['buffered_10s_ms']:.1f} ({c['buffered_10s_cpu_ms']:.1f}) -> "
          f"{c['speedup']:.1f}x ({c['speedup_cpu']:.1f}x)")
    if "cache_vs_buffered_embedded_1thread" in report:
        e = report["cache_vs_buffered_embedded_1thread"]
        print(f"embedded model ({e['parameters'] / 1e6:.2f} M), 1.12 s chunk, 1 thread: cache-aware "
              f"{e['cache_aware_ms']:.2f} ({e['cache_aware_cpu_ms']:.2f}) vs buffered 10 s {e['buffered_10s_ms']:.2f} "
              f"({e['buffered_10s_cpu_ms']:.2f}) -> {e['speedup']:.1f}x ({e['speedup_cpu']:.1f}x)")
    for name, row in report["large_1thread"].items():
        print(f"[{name.replace('_', ',')}] 1 thread: {row['ms_per_step']:.1f} ({row['cpu_ms_per_step']:.1f}) per "
              f"{row['audio_ms_per_step']:.0f} ms of audio, RTF {row['rtf']:.3f} ({row['rtf_cpu']:.3f})")
    for batch, row in streams.items():
        print(f"[70,13] 2 threads, B={batch}: {row['ms_per_step']:.1f} ({row['cpu_ms_per_step']:.1f}) per step -> "
              f"{row['realtime_streams']:.1f} ({row['realtime_streams_cpu']:.1f}) real-time streams")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
