"""Patch encoders: ``[M, patch_dim]`` float32 patches → ``[M, F]`` features for the tokenizers.

The built-in default needs no weights: the orthonormal 2-D DCT-II of each patch (per channel),
keeping the ``F`` lowest-frequency coefficients in zig-zag order. It is fixed, deterministic and
invertible on the kept band, a reasonable stand-in for a learned encoder's coarse content.

Plug-in encoders load from a local file (nothing is downloaded):

* TorchScript (``torch.jit.save``; ``.pt``/``.pth``/``.ts``): a module mapping a float32
  ``[M, patch_dim]`` tensor to ``[M, F]``.
* A state dict (``torch.save``) or ``.safetensors`` with ``weight [F, patch_dim]`` and optional
  ``bias [F]``: a linear projection.
"""

import os
from typing import Any, Dict, Optional, Protocol, Sequence

import numpy as np


class PatchEncoder(Protocol):
    """What the tokenizers need of an encoder: a ``spec`` saved with the model (enough to
    rebuild it, see :func:`encoder_from_spec`) and ``[M, patch_dim]`` → ``[M, F]`` float32."""

    spec: Dict[str, Any]

    def __call__(self, patches: np.ndarray) -> np.ndarray: ...


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``[n, n]`` (rows are basis vectors)."""
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


class DctPatchEncoder:
    """Low-frequency 2-D DCT coefficients of ``[h, w, channels]`` patches (flattened row-major).

    Args:
        shape: Patch shape ``(h, w)`` or ``(h, w, channels)``.
        features: Coefficients kept (split evenly over channels).
    """

    def __init__(self, shape: Sequence[int], features: int):
        h, w = shape[0], shape[1]
        channels = shape[2] if len(shape) > 2 else 1
        if features % channels or not 0 < features // channels <= h * w:
            raise ValueError(f"features={features} must be a positive multiple of {channels} channels "
                             f"and at most {h * w} per channel")
        per = features // channels
        order = sorted(((u + v, u, v) for u in range(h) for v in range(w)))[:per]
        basis2d = np.einsum("ui,vj->uvij", dct_matrix(h), dct_matrix(w))
        kept = np.stack([basis2d[u, v].reshape(-1) for _, u, v in order])  # [per, h*w]
        full = np.zeros((features, h * w * channels))
        for c in range(channels):
            full[c * per:(c + 1) * per, c::channels] = kept
        self.matrix = full.T.astype(np.float32)  # [patch_dim, F]
        self.spec: Dict[str, Any] = {"kind": "dct", "shape": list(shape), "features": features}

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return np.asarray(patches, np.float32) @ self.matrix


class LinearPatchEncoder:
    """``x @ weight.T + bias`` with weights from a state dict or safetensors file."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, source: str):
        self.weight_t = np.ascontiguousarray(np.asarray(weight, np.float32).T)
        self.bias = None if bias is None else np.asarray(bias, np.float32)
        self.spec = {"kind": "linear", "path": source, "features": int(self.weight_t.shape[1])}

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        out = np.asarray(patches, np.float32) @ self.weight_t
        return out if self.bias is None else out + self.bias


class TorchScriptPatchEncoder:
    """A TorchScript module run on CPU without gradients."""

    def __init__(self, module: Any, source: str):
        self.module = module.eval()
        self.spec = {"kind": "torchscript", "path": source}

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)))
        return out.detach().cpu().numpy().astype(np.float32)


def load_patch_encoder(path: str) -> PatchEncoder:
    """Loads a plug-in encoder from a local TorchScript, state-dict or safetensors file.

    Raises:
        ValueError: If the file is missing or holds neither a TorchScript module nor a
            ``weight`` tensor.
    """
    if not os.path.isfile(path):
        raise ValueError(f"patch encoder file {path!r} does not exist; pass a local file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
    else:
        import torch

        try:
            return TorchScriptPatchEncoder(torch.jit.load(path, map_location="cpu"), path)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tensors = {k: v.numpy() for k, v in state.items()}
    if "weight" not in tensors:
        raise ValueError(f"{path!r} has no 'weight' tensor (found {sorted(tensors)}); expected a "
                         "TorchScript module or a linear layer's state dict")
    return LinearPatchEncoder(tensors["weight"], tensors.get("bias"), path)


def encoder_from_spec(spec: Dict[str, Any], encoder_path: Optional[str] = None) -> PatchEncoder:
    """Rebuilds the encoder a model recorded as ``spec``; ``encoder_path`` overrides it.

    The DCT default is rebuilt from its settings; plug-ins reload from the path in the spec.
    """
    if encoder_path:
        return load_patch_encoder(encoder_path)
    if spec["kind"] == "dct":
        return DctPatchEncoder(spec["shape"], spec["features"])
    return load_patch_encoder(spec["path"])
