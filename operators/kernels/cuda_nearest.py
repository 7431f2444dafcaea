"""``numba.cuda`` nearest-centroid assignment with the same contract as ``nearest.assign``.

One thread per point. A block of ``BLOCK`` threads walks the codebook in tiles of ``TK``
centroids × ``TD`` features staged in shared memory; each thread keeps its ``TK`` dot products
in registers (a local array with a constant size) and a running minimum / argmin, so the
``N × K`` distance matrix is never built, as on the CPU.
"""

from typing import Tuple

import numpy as np
from numba import cuda, float32, int32

BLOCK = 128
TK = 32
TD = 32


def _nearest(x, codebook, norms, out_idx, out_dist):
    """x [N, D] f32, codebook [K, D] f32, norms [K] f32 → out_idx [N] i32, out_dist [N] f32."""
    tile = cuda.shared.array((TK, TD), float32)
    acc = cuda.local.array(TK, float32)
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    n, dim = x.shape
    k_total = codebook.shape[0]
    best = float32(np.inf)
    best_j = int32(0)
    for k0 in range(0, k_total, TK):
        for k in range(TK):
            acc[k] = float32(0.0)
        for d0 in range(0, dim, TD):
            for e in range(t, TK * TD, BLOCK):
                kk = e // TD
                dd = e % TD
                if k0 + kk < k_total and d0 + dd < dim:
                    tile[kk, dd] = codebook[k0 + kk, d0 + dd]
                else:
                    tile[kk, dd] = float32(0.0)
            cuda.syncthreads()
            if i < n:
                for dd in range(TD):
                    if d0 + dd < dim:
                        xv = x[i, d0 + dd]
                        for k in range(TK):
                            acc[k] += xv * tile[k, dd]
            cuda.syncthreads()
        if i < n:
            for k in range(TK):
                if k0 + k < k_total:
                    dist = norms[k0 + k] - (acc[k] + acc[k])
                    if dist < best:
                        best = dist
                        best_j = int32(k0 + k)
    if i < n:
        out_idx[i] = best_j
        out_dist[i] = best


nearest_kernel = cuda.jit(_nearest)

PTX_SIGNATURES = {
    _nearest: "void(float32[:, ::1], float32[:, ::1], float32[::1], int32[::1], float32[::1])",
}


def assign(x: np.ndarray, codebook: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """GPU version of ``nearest.assign``: ``(index [N] int64, squared distance [N] float32)``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(codebook, dtype=np.float32)
    n = x.shape[0]
    norms = np.einsum("kd,kd->k", c, c).astype(np.float32)
    d_idx = cuda.device_array(n, np.int32)
    d_dist = cuda.device_array(n, np.float32)
    if n:
        grid = (n + BLOCK - 1) // BLOCK
        nearest_kernel[grid, BLOCK](cuda.to_device(x), cuda.to_device(c), cuda.to_device(norms), d_idx, d_dist)
    dist = d_dist.copy_to_host() + np.einsum("nd,nd->n", x, x)
    return d_idx.copy_to_host().astype(np.int64), np.maximum(dist, 0.0).astype(np.float32)
