"""Tiny generated inputs and models for the batch-job tests (transcribe, video-features,
compress-features): a few kilobytes each, so every job test runs in seconds."""

import glob
import io
import json
import os
import subprocess
import wave
from dataclasses import replace
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq

LABELS = list(" abcdefghijk")


def tiny_asr_model(path: str) -> str:
    """Saves a seeded 2-layer FastConformer CTC ``.nemo`` that emits some tokens; returns ``path``."""
    import torch

    from operators.asr.model import random_model, small_config
    from operators.asr.nemo_checkpoint import save_nemo

    model = random_model(replace(small_config(), vocab_size=len(LABELS)), seed=21)
    with torch.no_grad():
        model.decoder.decoder_layers[0].bias[-1] = -2.0  # emit some tokens
    save_nemo(path, model, labels=LABELS)
    return path


def wav_bytes(seconds: float, seed: int = 0, freq: float = 300.0) -> bytes:
    """A 16 kHz mono 16-bit WAV: a tone plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    samples = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_file(path: str, data: bytes) -> str:
    """Writes ``data`` to ``path`` (creating folders); returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def video_bytes(path: str, seconds: float, size=(48, 40), rate: int = 10) -> bytes:
    """A small H.264 MP4 of ffmpeg's test pattern (written to ``path`` and returned)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
           f"testsrc=size={size[0]}x{size[1]}:rate={rate}:duration={seconds}", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-threads", "1", "-movflags", "+faststart", path]
    subprocess.run(cmd, check=True)
    with open(path, "rb") as f:
        return f.read()


def png_bytes(image: np.ndarray) -> bytes:
    """``[3, H, W]`` floats in [0, 1] as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_rows(out: str, table: str) -> List[Dict]:
    """Every product row of ``table`` under ``out`` (parts in name order)."""
    return [row for f in sorted(glob.glob(os.path.join(out, table, "*.parquet"))) for row in pq.read_table(f).to_pylist()]


def read_dead_letters(out: str) -> List[Dict]:
    """Every dead letter under ``out``."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "__dead_letters", "*.jsonl"))):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def read_manifests(out: str) -> Dict[str, Dict]:
    """Shard manifests under ``out`` by source."""
    manifests = {}
    for path in glob.glob(os.path.join(out, "__manifests", "*.json")):
        with open(path) as f:
            manifest = json.load(f)
        manifests[manifest["source"]] = manifest
    return manifests


def check_accounting(out: str, sources) -> Dict[str, Dict]:
    """Every input shard is done and its records are its rows + dead letters + filtered."""
    manifests = read_manifests(out)
    assert sorted(manifests) == sorted(sources)
    for m in manifests.values():
        assert m["records"] == m["rows"] + m["dead_letters"] + m["filtered"], m
    return manifests
