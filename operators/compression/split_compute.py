"""Split computing: run a torch model up to a named layer, code the features, run the rest.

Works on any ``nn.Module`` through forward hooks on ``model.named_modules()``: ``head``
captures the named layer's output (and stops there), ``tail`` runs the model with that
layer's output replaced by given features. ``mpq_table`` reports, per bit depth, the bytes
per sample and the downstream change (top-1 agreement, max output difference) in the spirit
of machine-perceptual-quality studies.

The default model (``TinyCNN``) needs no download: its fixed-seed weights are written by
``python -m operators.compression.split_compute`` into ``operators/assets/tiny_cnn.pt`` after a short
training run on synthetic images, so its top-1 decisions are not arbitrary.
"""

import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from operators.asset_paths import asset_path
from operators.compression.codec import FeatureCodec, bits_per_element

DEFAULT_WEIGHTS = asset_path("tiny_cnn.pt")
INPUT_SIZE = 32
NUM_CLASSES = 8


class TinyCNN(nn.Module):
    """A 32×32 RGB classifier small enough to ship: conv stem, two strided blocks, linear head.

    Layer names usable as split points: ``stem``, ``block1``, ``block2``, ``pool``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, 3, 32, 32]`` images in ``[0, 1]`` to class logits ``[B, num_classes]``."""
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


def synthetic_images(n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Labelled ``[n, 3, 32, 32]`` float32 images: class = colour (4) × stripe direction (2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    colours = np.array([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.2, 0.2, 1], [1, 1, 0.2]], np.float32)
    grid = np.arange(INPUT_SIZE, dtype=np.float32)
    images = np.empty((n, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, label in enumerate(labels):
        period = rng.uniform(4, 10)
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * grid / period + phase)
        stripes = np.tile(wave, (INPUT_SIZE, 1)) if label % 2 else np.tile(wave[:, None], (1, INPUT_SIZE))
        images[i] = colours[label // 2][:, None, None] * stripes[None] + rng.normal(0, 0.1, (3, INPUT_SIZE, INPUT_SIZE))
    return np.clip(images, 0, 1).astype(np.float32), labels


def train_default_model(steps: int = 300, seed: int = 0) -> TinyCNN:
    """Trains ``TinyCNN`` on ``synthetic_images`` (deterministic, about a minute on 1 CPU)."""
    torch.manual_seed(seed)
    model = TinyCNN()
    images, labels = synthetic_images(2048, seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def load_model(path: Optional[str] = None) -> TinyCNN:
    """Loads ``TinyCNN`` from a local state dict (default: the shipped asset)."""
    path = path or DEFAULT_WEIGHTS
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights at {path}; run `python -m operators.compression.split_compute` to create them")
    model = TinyCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n]
        raise ValueError(f"model has no layer {layer!r}; split points: {names}")
    return modules[layer]


class _Stop(Exception):
    """Raised by the capture hook to skip the layers after the split point."""


def head(model: nn.Module, layer: str, x: torch.Tensor) -> np.ndarray:
    """Runs ``model`` on ``x`` up to ``layer`` and returns that layer's output as float32."""
    captured: List[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _Stop

    handle = _module(model, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"layer {layer!r} was not called during the forward pass")
    return captured[0].detach().float().numpy()


def forward_with_features(model: nn.Module, layer: str, x: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Full forward pass returning ``(features at layer, output)``."""
    captured: List[torch.Tensor] = []
    handle = _module(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        handle.remove()
    return captured[0].float().numpy(), output.float().numpy()


def tail(model: nn.Module, layer: str, x: torch.Tensor, features: np.ndarray) -> np.ndarray:
    """Runs ``model`` with ``layer``'s output replaced by ``features`` ([B, ...] float).

    ``x`` only has to have the right batch size and shape: the layers before the split run
    on it but their result is discarded (hooks work on any model, where a graph split would
    need a traceable one).
    """
    replacement = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    handle = _module(model, layer).register_forward_hook(lambda _m, _i, out: replacement.to(out.dtype))
    try:
        with torch.no_grad():
            return model(x).float().numpy()
    finally:
        handle.remove()


class RateQuality(NamedTuple):
    """One row of the machine-perceptual-quality table.

    Attributes:
        bits: Bit depth.
        bytes_per_sample: Mean compressed size of one sample's features.
        bits_per_element: Mean bits per feature element.
        top1_agreement: Fraction of samples whose argmax output is unchanged.
        max_abs_diff: Largest absolute output difference over the samples.
    """

    bits: int
    bytes_per_sample: float
    bits_per_element: float
    top1_agreement: float
    max_abs_diff: float


def sample_quality(reference: np.ndarray, output: np.ndarray) -> Tuple[bool, float]:
    """``(top-1 unchanged, max |difference|)`` of one sample's outputs."""
    same = int(np.argmax(reference)) == int(np.argmax(output))
    return same, float(np.max(np.abs(reference - output))) if reference.size else 0.0


def mpq_table(
    model: nn.Module, layer: str, images: np.ndarray, codec: FeatureCodec, bits: Sequence[int]
) -> List[RateQuality]:
    """Codes each sample's features at each bit depth and measures the downstream change.

    Args:
        model: Any torch model.
        layer: Split point (``model.named_modules()`` name).
        images: ``[B, ...]`` model inputs.
        codec: Codec to use (with tables for shared-prior rates, or inline).
        bits: Bit depths to evaluate.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    features, reference = forward_with_features(model, layer, x)
    rows = []
    for b in bits:
        streams = [codec.encode(f, bits=b) for f in features]
        decoded = np.stack([codec.decode(s) for s in streams])
        output = tail(model, layer, x, decoded)
        quality = [sample_quality(r, o) for r, o in zip(reference, output)]
        rows.append(
            RateQuality(
                bits=b,
                bytes_per_sample=float(np.mean([len(s) for s in streams])),
                bits_per_element=float(np.mean([bits_per_element(s, features[0].size) for s in streams])),
                top1_agreement=float(np.mean([q[0] for q in quality])),
                max_abs_diff=float(max(q[1] for q in quality)),
            )
        )
    return rows


def format_table(rows: Sequence[RateQuality]) -> str:
    """Markdown table of ``mpq_table`` rows."""
    lines = ["| bits | bytes/sample | bits/element | top-1 agreement | max abs diff |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.bits} | {r.bytes_per_sample:.1f} | {r.bits_per_element:.3f} | {r.top1_agreement:.3f} | {r.max_abs_diff:.4g} |"
        for r in rows
    ]
    return "\n".join(lines)


def summary_by_rate(rows: Sequence[Dict]) -> Dict[str, Dict[str, float]]:
    """Aggregates per-record dicts (``rate``, ``num_bytes``, ``bits_per_element``,
    ``top1_agree``, ``max_abs_diff``) into per-rate means / maxima."""
    out: Dict[str, Dict[str, float]] = {}
    for rate in sorted({r["rate"] for r in rows}, key=lambda k: (k[0], int(k.lstrip("uvq")))):
        group = [r for r in rows if r["rate"] == rate]
        out[rate] = {
            "records": len(group),
            "bytes_per_sample": float(np.mean([r["num_bytes"] for r in group])),
            "bits_per_element": float(np.mean([r["bits_per_element"] for r in group])),
            "top1_agreement": float(np.mean([r["top1_agree"] for r in group])),
            "max_abs_diff": float(max(r["max_abs_diff"] for r in group)),
        }
    return out


if __name__ == "__main__":
    os.makedirs(os.path.dirname(DEFAULT_WEIGHTS), exist_ok=True)
    trained = train_default_model()
    test_images, test_labels = synthetic_images(512, seed=1)
    with torch.no_grad():
        accuracy = (trained(torch.from_numpy(test_images)).argmax(1).numpy() == test_labels).mean()
    torch.save(trained.state_dict(), DEFAULT_WEIGHTS)
    print(f"wrote {DEFAULT_WEIGHTS} ({os.path.getsize(DEFAULT_WEIGHTS)} bytes), held-out accuracy {accuracy:.3f}")
