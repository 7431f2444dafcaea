"""Fits the default learned-tokenizer models shipped in ``operators/assets`` (no download).

Generates synthetic training media with NumPy and Pillow (harmonic tones with vibrato, chirps,
noise bursts and silences; images of shapes, gradients and stripes), writes them to a folder,
and runs ``mediabeam fit-tokenizer`` on it for both modalities. The same seed gives the same
media and, the fit being deterministic, the same codebooks.

Usage::

    mediabeam make-tokenizer-assets                  # → operators/assets/{semantic_audio,dual_image}
    mediabeam make-tokenizer-assets --output /tmp/assets --clips 8 --images 16
"""

import argparse
import io
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence

import numpy as np
from PIL import Image

from operators.asset_paths import ASSETS_DIR as ASSETS
from pipelines import fit_tokenizer
from pipelines.tools.make_samples import draw_random_shapes, wav_bytes


def synthetic_clip(rng: np.random.Generator, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Events one after another: harmonic notes with vibrato, chirps, noise bursts, silence."""
    out = np.zeros(int(seconds * sample_rate), np.float64)
    pos = 0
    while pos < out.size:
        n = min(out.size - pos, int(rng.uniform(0.2, 1.2) * sample_rate))
        t = np.arange(n) / sample_rate
        kind = rng.integers(4)
        if kind == 0:
            f0 = rng.uniform(90, 400) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            x = sum(np.sin(h * phase) / h ** rng.uniform(0.7, 1.5) for h in range(1, int(rng.integers(3, 12))))
        elif kind == 1:
            f0, f1 = rng.uniform(200, 3000, 2)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
        elif kind == 2:
            x = rng.normal(0, 1, n)
            x = np.convolve(x, np.ones(int(rng.integers(1, 12))) / 12, mode="same")
        else:
            x = np.zeros(n)
        env = np.minimum(1, np.minimum(t, t[::-1]) * 40)
        out[pos:pos + n] = x / max(1e-9, np.abs(x).max()) * env * rng.uniform(0.05, 0.6)
        pos += n
    return (out + rng.normal(0, 0.002, out.size)).astype(np.float32)


def synthetic_picture(rng: np.random.Generator, size: int = 160) -> bytes:
    """A PNG with a gradient or stripes background and a few filled shapes."""
    y, x = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.integers(0, 256, (2, 3))
    if rng.random() < 0.5:
        w = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) % 1.0
    else:
        w = (np.sin(2 * np.pi * (x * rng.integers(1, 8) + y * rng.integers(0, 4))) > 0).astype(float)
    base = (c0[None, None] * (1 - w[..., None]) + c1[None, None] * w[..., None]).astype(np.uint8)
    image = Image.fromarray(base)
    draw_random_shapes(image, rng, int(rng.integers(1, 6)), grow=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_fit_media(directory: str, clips: int, images: int, seconds: float, seed: int) -> None:
    """Writes ``clip_NNNN.wav`` and ``image_NNNN.png`` files into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(clips):
        with open(os.path.join(directory, f"clip_{i:04d}.wav"), "wb") as f:
            f.write(wav_bytes(synthetic_clip(rng, seconds), 16000))
    for i in range(images):
        with open(os.path.join(directory, f"image_{i:04d}.png"), "wb") as f:
            f.write(synthetic_picture(rng))


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Generates media and fits both default models; returns the two fit summaries."""
    p = argparse.ArgumentParser(prog="mediabeam make-tokenizer-assets", description=__doc__.split("\n")[0])
    p.add_argument("--output", default=ASSETS, help="assets folder (default: operators/assets)")
    p.add_argument("--clips", type=int, default=24, help="synthetic audio clips")
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per clip")
    p.add_argument("--images", type=int, default=96, help="synthetic images")
    p.add_argument("--seed", type=int, default=0, help="seed of media and fits")
    args, beam_args = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as work:
        media = os.path.join(work, "media")
        write_fit_media(media, args.clips, args.images, args.seconds, args.seed)
        common = ["--input", media, "--seed", str(args.seed), "--iterations", "12", "--float16", *beam_args]
        audio = fit_tokenizer.run(common + [
            "--modality", "audio", "--codebook-size", "256", "--acoustic-codebook-size", "128",
            "--acoustic-stages", "2", "--output", os.path.join(args.output, "semantic_audio")])
        image = fit_tokenizer.run(common + [
            "--modality", "image", "--codebook-size", "256", "--output", os.path.join(args.output, "dual_image")])
    for folder in ("semantic_audio", "dual_image"):  # keep only the model files in the package
        shutil.rmtree(os.path.join(args.output, folder, "dead_letters"), ignore_errors=True)
        summary = os.path.join(args.output, folder, "summary.json")
        if os.path.exists(summary):
            os.remove(summary)
    return {"audio": audio, "image": image}
