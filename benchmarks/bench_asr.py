"""Cache-aware streaming FastConformer: step cost, real-time factor and concurrent streams.

One run, everything side by side on the same machine state:

1. Cache-aware ``step`` vs the buffered baseline (re-encode a sliding 10 s buffer every chunk and
   keep the newest chunk's frames) on the same model at 1.12 s chunks (``[70,13]``).
2. Large config (17 layers, d 512, 8 heads, random weights): ms per step and real-time factor
   at ``[70,13]`` and ``[70,0]`` on 1 thread.
3. Concurrent real-time streams on 2 threads with batches of B = 1, 8, 32 streams per step:
   ``B × chunk duration / step time``.

Prints a human-readable table and one JSON line. ``--quick`` uses fewer repetitions.
"""

import argparse
import json
import time
from typing import Callable

import torch

from operators.streaming_asr import EncoderConfig, ModelConfig, StreamingASR, CharVocabulary, random_model

LARGE = EncoderConfig(n_layers=17, d_model=512, n_heads=8, subsampling_conv_channels=256)
MEL_HOP_S = 0.01


def _timed(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``fn`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


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


def bench_step(op: StreamingASR, batch: int, repeats: int) -> float:
    state, chunk, lengths = _warm_state(op, batch, steps=max(2, 80 // op.chunk_sizes()[0]))
    return _timed(lambda: op.step(chunk, lengths, state), repeats)


def bench_buffered(op: StreamingASR, buffer_s: float, repeats: int) -> float:
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
    step13 = bench_step(look13, 1, repeats)
    buffered = bench_buffered(look13, 10.0, repeats)
    report["cache_vs_buffered_1thread"] = {
        "chunk_s": chunk_s, "cache_aware_ms": step13, "buffered_10s_ms": buffered, "speedup": buffered / step13}
    step0 = bench_step(look0, 1, repeats * 4)
    report["large_1thread"] = {
        "70_13": {"ms_per_step": step13, "audio_ms_per_step": chunk_s * 1e3, "rtf": step13 / (chunk_s * 1e3)},
        "70_0": {"ms_per_step": step0, "audio_ms_per_step": 80.0, "rtf": step0 / 80.0},
    }
    torch.set_num_threads(2)
    streams = {}
    for batch in (1, 8, 32):
        ms = bench_step(look13, batch, max(2, repeats // 2))
        streams[str(batch)] = {"ms_per_step": ms, "realtime_streams": batch * chunk_s * 1e3 / ms}
    report["concurrent_70_13_2threads"] = streams
    report["max_realtime_streams_70_13"] = max(v["realtime_streams"] for v in streams.values())

    print(f"{report['model']} ({params / 1e6:.1f} M parameters)")
    c = report["cache_vs_buffered_1thread"]
    print(f"1.12 s chunk, 1 thread: cache-aware {c['cache_aware_ms']:.1f} ms vs buffered 10 s "
          f"{c['buffered_10s_ms']:.1f} ms -> {c['speedup']:.1f}x")
    for name, row in report["large_1thread"].items():
        print(f"[{name.replace('_', ',')}] 1 thread: {row['ms_per_step']:.1f} ms per {row['audio_ms_per_step']:.0f} ms "
              f"of audio, RTF {row['rtf']:.3f}")
    for batch, row in streams.items():
        print(f"[70,13] 2 threads, B={batch}: {row['ms_per_step']:.1f} ms per step -> "
              f"{row['realtime_streams']:.1f} real-time streams")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
