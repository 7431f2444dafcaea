"""Fits the default learned-tokenizer models shipped in ``operators/assets`` (no download).

Generates synthetic training media with NumPy and Pillow (harmonic tones with vibrato, chirps,
noise bursts and silences; images of shapes, gradients and stripes), writes them to a folder,
and runs ``mediabeam fit-tokenizer`` on it for both modalities. The same seed gives the same
media and, the fit being deterministic, the same codebooks. A progress line on stderr names the
stage, the time elapsed and a rough ETA (from per-clip and per-image costs measured on 2 cores).

Usage::

    mediabeam make-tokenizer-assets                  # → operators/assets/{semantic_audio,dual_image}
    mediabeam make-tokenizer-assets --output /tmp/assets --clips 8 --images 16
"""

import argparse
import contextlib
import datetime
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy as np
from PIL import Image

from operators.asset_paths import ASSETS_DIR as ASSETS
from pipelines import fit_tokenizer
from pipelines.tools.make_samples import draw_random_shapes, wav_bytes

# Fit cost (fixed seconds, seconds per unit) measured on the shared 2-core box with 12 iterations:
# the ETA's starting point, rescaled by how fast the finished stages ran against it.
AUDIO_FIT_S = (14.0, 0.23)  # unit: one second of synthetic audio
IMAGE_FIT_S = (3.0, 0.8)  # unit: one synthetic image


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


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class StageProgress:
    """Prints ``make-tokenizer-assets: [2/3] fit semantic-audio, stage 0:01:10, total 0:01:12,
    ETA ~0:02:05`` when each stage starts, every ``interval_s`` while it runs, and at the end.

    The ETA is the rest of the current stage's estimate plus the later stages' estimates, all
    scaled by actual / estimated time of the stages already finished (how fast this machine is
    today). A stage past its estimate says so instead of showing a made-up ETA.

    Args:
        stages: ``(name, estimated seconds)`` per stage, in order.
        interval_s: Seconds between two lines within a stage.
        stream: Where lines go (stderr by default, so stdout keeps the fit summaries).
    """

    def __init__(self, stages: Sequence[Tuple[str, float]], interval_s: float = 30.0,
                 stream: Optional[TextIO] = None):
        self.stages, self._interval, self._stream = list(stages), interval_s, stream or sys.stderr
        self._began = time.time()
        self._finished: List[Tuple[float, float]] = []  # (estimate, actual) of finished stages
        self.lines: List[str] = []

    def _speed(self) -> float:
        estimated = sum(e for e, _ in self._finished if e > 0)
        return sum(a for e, a in self._finished if e > 0) / estimated if estimated else 1.0

    def _print(self, index: int, stage_began: float) -> None:
        name, estimate = self.stages[index]
        now, speed = time.time(), self._speed()
        current = max(estimate * speed - (now - stage_began), 0.0) if estimate > 0 else 0.0
        later = speed * sum(e for _, e in self.stages[index + 1:])
        past = estimate > 0 and now - stage_began > estimate * speed
        eta = f"past this stage's estimate, then ~{_clock(later)}" if past else f"ETA ~{_clock(current + later)}"
        line = (f"make-tokenizer-assets: [{index + 1}/{len(self.stages)}] {name}, stage "
                f"{_clock(now - stage_began)}, total {_clock(now - self._began)}, {eta}")
        self.lines.append(line)
        print(line, file=self._stream, flush=True)

    @contextlib.contextmanager
    def stage(self, index: int) -> Iterator[None]:
        """Runs the ``with`` block as stage ``index``, printing lines from a background thread."""
        began, stop = time.time(), threading.Event()
        self._print(index, began)

        def beat() -> None:
            while not stop.wait(self._interval):
                self._print(index, began)

        thread = threading.Thread(target=beat, name="StageProgress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        self._finished.append((self.stages[index][1], time.time() - began))
        if index == len(self.stages) - 1:
            line = f"make-tokenizer-assets: done in {_clock(time.time() - self._began)}"
            self.lines.append(line)
            print(line, file=self._stream, flush=True)


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Generates media and fits both default models; returns the two fit summaries."""
    p = argparse.ArgumentParser(prog="mediabeam make-tokenizer-assets", description=__doc__.split("\n")[0])
    p.add_argument("--output", default=ASSETS, help="assets folder (default: operators/assets)")
    p.add_argument("--clips", type=int, default=24, help="synthetic audio clips")
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per clip")
    p.add_argument("--images", type=int, default=96, help="synthetic images")
    p.add_argument("--seed", type=int, default=0, help="seed of media and fits")
    p.add_argument("--progress-interval", type=float, default=30.0, help="seconds between progress lines")
    args, beam_args = p.parse_known_args(argv)
    progress = StageProgress([
        (f"write {args.clips} clips and {args.images} images", 0.0),
        ("fit semantic-audio codebooks", AUDIO_FIT_S[0] + AUDIO_FIT_S[1] * args.clips * args.seconds),
        ("fit dual-image codebooks", IMAGE_FIT_S[0] + IMAGE_FIT_S[1] * args.images),
    ], args.progress_interval)
    with tempfile.TemporaryDirectory() as work:
        media = os.path.join(work, "media")
        with progress.stage(0):
            write_fit_media(media, args.clips, args.images, args.seconds, args.seed)
        common = ["--input", media, "--seed", str(args.seed), "--iterations", "12", "--float16", *beam_args]
        with progress.stage(1):
            audio = fit_tokenizer.run(common + [
                "--modality", "audio", "--codebook-size", "256", "--acoustic-codebook-size", "128",
                "--acoustic-stages", "2", "--output", os.path.join(args.output, "semantic_audio")])
        with progress.stage(2):
            image = fit_tokenizer.run(common + [
                "--modality", "image", "--codebook-size", "256", "--output", os.path.join(args.output, "dual_image")])
    for folder in ("semantic_audio", "dual_image"):  # keep only the model files in the package
        for job_files in ("features", "__manifests", "__dead_letters", "__job"):
            shutil.rmtree(os.path.join(args.output, folder, job_files), ignore_errors=True)
    return {"audio": audio, "image": image}
