"""k-means update kernel: per-centroid feature sums and counts, parallel with per-thread partials.

Sums are kept in fixed point: every feature is rounded to ``floor(x · scale + 0.5)`` as an int64 and
added exactly. Integer addition is associative, so the sums are bit-identical whatever the split
into threads, bundles or workers, which is what makes a distributed k-means deterministic.
``scale`` is a power of two chosen from the data (``fixed_point_scale``) so that ``|x|·scale``
stays near 2**20 (about 6 significant digits) with room for 2**40 additions.

Each thread accumulates into its own ``[K, D]`` partial (no atomics, no false sharing); the
partials are then added.
"""

from typing import Tuple

import numba
import numpy as np
from numba import njit, prange

from operators.kernels.device import resolve

FIXED_POINT_BITS = 20


def fixed_point_scale(sample: np.ndarray) -> float:
    """Power-of-two scale that maps the largest ``|value|`` of ``sample`` to about 2**20."""
    peak = float(np.max(np.abs(sample))) if np.size(sample) else 1.0
    peak = peak if np.isfinite(peak) and peak > 0 else 1.0
    return float(2.0 ** (FIXED_POINT_BITS - int(np.ceil(np.log2(peak)))))


@njit(parallel=True, cache=True)
def _partial_sums(x, idx, k, scale, chunks):
    n, dim = x.shape
    sums = np.zeros((chunks, k, dim), np.int64)
    counts = np.zeros((chunks, k), np.int64)
    step = (n + chunks - 1) // chunks
    for c in prange(chunks):
        for i in range(c * step, min(n, (c + 1) * step)):
            j = idx[i]
            counts[c, j] += 1
            for d in range(dim):
                sums[c, j, d] += np.int64(np.floor(np.float64(x[i, d]) * scale + 0.5))
    return sums.sum(axis=0), counts.sum(axis=0)


def update_sums(
    x: np.ndarray, idx: np.ndarray, k: int, scale: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(sums [K, D] int64 in units of 1/scale, counts [K] int64)`` grouped by ``idx``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if len(idx) != len(x):
        raise ValueError(f"idx has {len(idx)} entries for {len(x)} rows")
    if len(idx) and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"idx values must lie in [0, {k})")
    chunks = max(1, min(numba.get_num_threads(), len(x) // 4096))
    return _partial_sums(x, idx, k, float(scale), chunks)


def accumulate(
    x: np.ndarray, idx: np.ndarray, k: int, scale: float, device: str = "auto"
) -> Tuple[np.ndarray, np.ndarray]:
    """``update_sums`` on the chosen device (``"auto"``: the GPU when present, else the CPU)."""
    if resolve(device) == "cuda":
        from operators.kernels import cuda_kmeans

        return cuda_kmeans.update_sums(x, idx, k, scale)
    return update_sums(x, idx, k, scale)


def update_sums_reference(
    x: np.ndarray, idx: np.ndarray, k: int, scale: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference for ``update_sums``."""
    sums = np.zeros((k, x.shape[1]), np.int64)
    np.add.at(sums, idx, np.floor(x.astype(np.float64) * scale + 0.5).astype(np.int64))
    return sums, np.bincount(idx, minlength=k).astype(np.int64)
