"""Cache-aware streaming FastConformer: step cost, real-time factor and concurrent streams.

One run, everything side by side on the same machine state:

1. Cache-aware ``step`` vs the buffered baseline (re-encode a sliding 10 s buffer every chunk and
   keep the newest chunk's frames) with the same model at 1.12 s chunks (``[70,13]``), 1 thread:
   the large config and the embedded default model, for one stream (B = 1) and for B = 8
   streams served together (ms per stream per chunk). At B = 1 the large model's step is bound
   by streaming its fp32 weights from memory for 14 new frames; batching amortises the weights
   for both methods, leaving the work ratio.
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

from operators.asr.config import EncoderConfig, ModelConfig  # noqa: E402
from operators.asr.model import random_model  # noqa: E402
from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo  # noqa: E402
from operators.asr.streaming import StreamingASR  # noqa: E402
from operators.asr.vocabulary import CharVocabulary  # noqa: E402

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


def bench_buffered(op: StreamingASR, buffer_s: float, repeats: int, batch: int = 1) -> Tuple[float, float]:
    """Baseline: every chunk, re-encode the last ``buffer_s`` seconds of each of ``batch`` streams
    and decode the newest chunk."""
    frames = int(round(buffer_s / MEL_HOP_S))
    features = torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(1))
    lengths = torch.full((batch,), frames)
    chunk = op.chunk_sizes()[0]

    def once():
        encoded, valid = op.encode(features, lengths)
        op.model.ctc_head(encoded[:, int(valid[0]) - chunk : int(valid[0])]).argmax(-1)

    return _timed(once, repeats)


def compare(op: StreamingASR, batches, repeats: int) -> dict:
    """Cache-aware step vs buffered 10 s re-encode for each batch size, in ms per stream."""
    out = {}
    for batch in batches:
        step, step_cpu = bench_step(op, batch, repeats)
        buffered, buffered_cpu = bench_buffered(op, 10.0, max(2, repeats // batch), batch)
        out[f"B{batch}"] = {
            "streams": batch, "cache_aware_ms": step / batch, "buffered_10s_ms": buffered / batch,
            "speedup": buffered / step, "cache_aware_cpu_ms": step_cpu / batch,
            "buffered_10s_cpu_ms": buffered_cpu / batch, "speedup_cpu": buffered_cpu / step_cpu,
        }
    return out


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
    report["chunk_s"] = chunk_s
    report["cache_vs_buffered_1thread"] = compare(look13, (1, 8), repeats)
    step13, step13_cpu = (report["cache_vs_buffered_1thread"]["B1"][k] for k in ("cache_aware_ms", "cache_aware_cpu_ms"))
    step0, step0_cpu = bench_step(look0, 1, repeats * 4)
    report["large_1thread"] = {
        "70_13": {"ms_per_step": step13, "cpu_ms_per_step": step13_cpu, "audio_ms_per_step": chunk_s * 1e3,
                  "rtf": step13 / (chunk_s * 1e3), "rtf_cpu": step13_cpu / (chunk_s * 1e3)},
        "70_0": {"ms_per_step": step0, "cpu_ms_per_step": step0_cpu, "audio_ms_per_step": 80.0,
                 "rtf": step0 / 80.0, "rtf_cpu": step0_cpu / 80.0},
    }
    if os.path.exists(EMBEDDED_MODEL):
        small = load_nemo(EMBEDDED_MODEL)
        report["cache_vs_buffered_embedded_1thread"] = {
            "parameters": sum(p.numel() for p in small.model.parameters()), **compare(small, (1, 8), repeats * 3)}
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
    for name in ("cache_vs_buffered_1thread", "cache_vs_buffered_embedded_1thread"):
        for batch, c in report.get(name, {}).items():
            if batch.startswith("B"):
                print(f"{'large' if name == 'cache_vs_buffered_1thread' else 'embedded'} model, 1.12 s chunk, 1 thread, "
                      f"{c['streams']} stream(s): cache-aware {c['cache_aware_ms']:.2f} ({c['cache_aware_cpu_ms']:.2f}) vs "
                      f"buffered 10 s {c['buffered_10s_ms']:.2f} ({c['buffered_10s_cpu_ms']:.2f}) ms per stream -> "
                      f"{c['speedup']:.1f}x ({c['speedup_cpu']:.1f}x)")
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
