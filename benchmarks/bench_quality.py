"""The quality measures side by side with their reference implementations, on the same inputs:
SSIM and PSNR (ours, NumPy) vs scikit-image, WER (ours, pure Python) vs jiwer. Prints the values
(they must agree) and the time per call (best of ``--repeats``), then one JSON line.

    .venv/bin/python benchmarks/bench_quality.py [--size 256] [--repeats 5]
"""

import argparse
import json
import time

import jiwer
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from operators.quality.image import psnr, ssim
from operators.quality.text import word_errors


def best_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, min(times) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side (RGB)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (args.size, args.size, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    vocab = ["zero", "one", "two", "three", "stop", "go", "left", "right"]
    ref = " ".join(rng.choice(vocab, 2000))
    hyp = " ".join(rng.choice(vocab, 1900))
    cases = {
        "ssim": (lambda: ssim(a, b), lambda: structural_similarity(a, b, data_range=255, channel_axis=-1)),
        "psnr": (lambda: psnr(a, b), lambda: peak_signal_noise_ratio(a, b, data_range=255)),
        "wer": (lambda: word_errors(ref, hyp).wer, lambda: jiwer.wer(ref, hyp)),
    }
    figures = {}
    print(f"{'measure':8} {'ours':>12} {'reference':>12} {'ours ms':>9} {'ref ms':>9}")
    for name, (ours, reference) in cases.items():
        mine, mine_ms = best_ms(ours, args.repeats)
        theirs, theirs_ms = best_ms(reference, args.repeats)
        figures[name] = {"ours": mine, "reference": theirs, "ours_ms": round(mine_ms, 2), "reference_ms": round(theirs_ms, 2)}
        print(f"{name:8} {mine:12.6f} {theirs:12.6f} {mine_ms:9.2f} {theirs_ms:9.2f}")
    print(json.dumps({"size": args.size, "words": 2000, **figures}))


if __name__ == "__main__":
    main()
