"""Residual vector quantisation: stage ``s`` quantises what stages ``0..s-1`` left unexplained."""

from typing import Sequence, Tuple

import numpy as np

from operators.kernels import nearest
from operators.kernels.device import resolve


def rvq_encode(
    x: np.ndarray, codebooks: Sequence, device: str = "auto"
) -> Tuple[np.ndarray, np.ndarray]:
    """Encodes ``x [N, D]`` with residual codebooks; returns ``(codes [N, S] int64, residual)``.

    Args:
        x: Vectors to quantise.
        codebooks: ``S`` codebooks, each ``[K_s, D]`` (or a ``PackedCodebook`` on the CPU path).
        device: ``"auto"`` (GPU when numba.cuda sees one), ``"cpu"`` or ``"cuda"``.
    """
    if resolve(device) == "cuda":
        from operators.kernels import cuda_rvq

        return cuda_rvq.rvq_encode(x, [_raw(cb) for cb in codebooks])
    residual = np.array(x, dtype=np.float32, copy=True)
    codes = np.empty((residual.shape[0], len(codebooks)), np.int64)
    for s, cb in enumerate(codebooks):
        idx, _ = nearest.assign(residual, cb)
        codes[:, s] = idx
        residual -= _raw(cb)[idx]
    return codes, residual


def rvq_decode(codes: np.ndarray, codebooks: Sequence) -> np.ndarray:
    """Sums the selected codewords of every stage: the inverse of ``rvq_encode`` up to residual."""
    codes = np.asarray(codes)
    out = np.zeros((codes.shape[0], _raw(codebooks[0]).shape[1]), np.float32)
    for s, cb in enumerate(codebooks):
        out += _raw(cb)[codes[:, s]]
    return out


def rvq_encode_reference(x: np.ndarray, codebooks: Sequence[np.ndarray]) -> np.ndarray:
    """Plain numpy reference for ``rvq_encode`` codes."""
    residual = np.asarray(x, np.float64).copy()
    codes = []
    for cb in codebooks:
        idx, _ = nearest.assign_reference(residual, cb)
        codes.append(idx)
        residual -= np.asarray(cb, np.float64)[idx]
    return np.stack(codes, axis=1)


def _raw(cb) -> np.ndarray:
    return cb.codebook if isinstance(cb, nearest.PackedCodebook) else np.asarray(cb, np.float32)
