"""``numba.cuda`` k-means update with the same fixed-point contract as ``kmeans.update_sums``.

One thread per point adds ``round(x · scale)`` into int64 sums with atomics. Integer atomics are
order independent, so the GPU sums are bit-identical to the CPU kernel's.
"""

from typing import Tuple

import math

import numpy as np
from numba import cuda, int64

BLOCK = 128


def _update(x, idx, scale, sums, counts):
    """x [N, D] f32, idx [N] i64, scale f64 → sums [K, D] i64 and counts [K] i64 (accumulated)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        j = idx[i]
        cuda.atomic.add(counts, j, int64(1))
        for d in range(x.shape[1]):
            cuda.atomic.add(sums, (j, d), int64(math.floor(x[i, d] * scale + 0.5)))


update_kernel = cuda.jit(_update)

PTX_SIGNATURES = {
    _update: "void(float32[:, ::1], int64[::1], float64, int64[:, ::1], int64[::1])",
}


def update_sums(
    x: np.ndarray, idx: np.ndarray, k: int, scale: float
) -> Tuple[np.ndarray, np.ndarray]:
    """GPU version of ``kmeans.update_sums``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    sums = cuda.to_device(np.zeros((k, x.shape[1]), np.int64))
    counts = cuda.to_device(np.zeros(k, np.int64))
    if len(x):
        grid = (len(x) + BLOCK - 1) // BLOCK
        update_kernel[grid, BLOCK](cuda.to_device(x), cuda.to_device(idx), float(scale), sums, counts)
    return sums.copy_to_host(), counts.copy_to_host()
