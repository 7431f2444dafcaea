"""``numba.cuda`` residual-VQ encode with the same contract as ``rvq.rvq_encode``.

The residual stays on the device between stages: each stage runs the nearest-centroid kernel
and then a subtract kernel (one thread per residual element).
"""

from typing import Sequence, Tuple

import numpy as np
from numba import cuda

from operators.kernels import cuda_nearest

BLOCK = 256


def _subtract(residual, codebook, idx):
    """residual [N, D] f32 -= codebook[idx] (idx [N] i32)."""
    e = cuda.grid(1)
    n, dim = residual.shape
    if e < n * dim:
        i = e // dim
        d = e % dim
        residual[i, d] -= codebook[idx[i], d]


subtract_kernel = cuda.jit(_subtract)

PTX_SIGNATURES = {
    _subtract: "void(float32[:, ::1], float32[:, ::1], int32[::1])",
}


def rvq_encode(x: np.ndarray, codebooks: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """GPU version of ``rvq.rvq_encode``: ``(codes [N, S] int64, residual [N, D] float32)``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    residual = cuda.to_device(x)
    codes = np.empty((n, len(codebooks)), np.int64)
    d_idx = cuda.device_array(n, np.int32)
    d_dist = cuda.device_array(n, np.float32)
    for s, cb in enumerate(codebooks):
        c = np.ascontiguousarray(cb, dtype=np.float32)
        norms = cuda.to_device(np.einsum("kd,kd->k", c, c).astype(np.float32))
        d_cb = cuda.to_device(c)
        if n:
            grid = (n + cuda_nearest.BLOCK - 1) // cuda_nearest.BLOCK
            cuda_nearest.nearest_kernel[grid, cuda_nearest.BLOCK](residual, d_cb, norms, d_idx, d_dist)
            subtract_kernel[(n * x.shape[1] + BLOCK - 1) // BLOCK, BLOCK](residual, d_cb, d_idx)
        codes[:, s] = d_idx.copy_to_host()
    return codes, residual.copy_to_host()
