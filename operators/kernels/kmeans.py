"""k-means update kernel: per-centroid feature sums and counts, deterministic and parallel.

Sums are kept in fixed point: every feature is rounded to ``floor(x · scale + 0.5)`` as an int64 and
added exactly. Integer addition is associative, so the sums are bit-identical whatever the split
into threads, bundles or workers, and on every host (AVX2 or AVX-512), which is what makes a
distributed k-means deterministic. ``scale`` is a power of two chosen from the data
(``fixed_point_scale``) so that ``|x|·scale`` stays near 2**20 (about 6 significant digits) with
room for 2**40 additions.

Small tables (``[K, D]`` partials of at most ``PARTIALS_BUDGET`` bytes per thread): each thread
sums a contiguous slice of the rows into its own partial (a sequential read of ``x``, no atomics,
no false sharing), and the partials are added. Large tables: each thread owns a contiguous range
of centroids (with about as many rows each), streams over all rows and adds those of its
centroids straight into the result, instead of allocating and adding up per-thread partials
(100 MB at K=8192, D=768 with two threads).
The float → int64 rounding is vectorised on every target: ``floor`` is ``vroundpd``; with
AVX-512DQ the conversion is ``vcvttpd2qq``; without it (AVX2) LLVM would convert one element at a
time, at half the speed of the whole update, so there the integer-valued double ``f``
(``|f| < 2^51``) becomes an int64 by adding ``1.5·2^52`` and subtracting the bit pattern of that
constant. Rows beyond that range (or non-finite) take the plain conversion. Both give the same
integers.
"""

from typing import Tuple

import numba
import numpy as np
from numba import njit, prange

from operators.kernels import cpu
from operators.kernels.bits import reinterpret
from operators.kernels.device import resolve

FIXED_POINT_BITS = 20
PARTIALS_BUDGET = 4 << 20  # bytes of per-thread [K, D] partial sums before switching to owned ranges
_MAGIC = 6755399441055744.0  # 1.5 · 2^52: adding it puts an integer |f| < 2^51 in the low mantissa bits
_MAGIC_BITS = np.int64(0x4338000000000000)
_NATIVE_CONVERT = "avx512dq" in cpu.compile_features()  # a compile-time constant in the kernels


def fixed_point_scale(sample: np.ndarray) -> float:
    """Power-of-two scale that maps the largest ``|value|`` of ``sample`` to about 2**20."""
    peak = float(np.max(np.abs(sample))) if np.size(sample) else 1.0
    peak = peak if np.isfinite(peak) and peak > 0 else 1.0
    return float(2.0 ** (FIXED_POINT_BITS - int(np.ceil(np.log2(peak)))))


@njit(cache=True, inline="always")
def _add_row(sums, j, x, i, scale):
    """``sums[j] += floor(x[i]·scale + 0.5)`` as int64.

    Without AVX-512DQ, the vectorisable conversion gives ``v = f`` exactly when ``|f| < 2^51``, and
    otherwise (huge, infinite or NaN ``f``) a ``v`` outside ``[−2^51, 2^51)``; one such lane flags
    the row, whose values are then swapped for the plain conversion (int64 additions wrap, so this
    is exact).
    """
    dim = x.shape[1]
    if _NATIVE_CONVERT:
        for d in range(dim):
            sums[j, d] += np.int64(np.floor(np.float64(x[i, d]) * scale + 0.5))
        return
    half = np.int64(1 << 51)
    bad = np.int64(0)
    for d in range(dim):
        v = reinterpret(np.floor(np.float64(x[i, d]) * scale + 0.5) + _MAGIC) - _MAGIC_BITS
        bad |= (v + half) >> 52
        sums[j, d] += v
    if bad != 0:
        for d in range(dim):
            f = np.floor(np.float64(x[i, d]) * scale + 0.5)
            sums[j, d] += np.int64(f) - (reinterpret(f + _MAGIC) - _MAGIC_BITS)


@njit(parallel=True, cache=True)
def _partial_sums(x, idx, k, scale, chunks):
    """Chunk ``c`` of the rows is summed into partial ``c``; the partials are then added."""
    n = x.shape[0]
    sums = np.zeros((chunks * k, x.shape[1]), np.int64)  # partial c in rows [c·k, (c + 1)·k)
    step = (n + chunks - 1) // chunks
    counts = np.zeros((chunks, k), np.int64)
    for c in prange(chunks):
        for i in range(c * step, min(n, (c + 1) * step)):
            counts[c, idx[i]] += 1
            _add_row(sums, c * k + idx[i], x, i, scale)
    return sums.reshape(chunks, k, x.shape[1]).sum(axis=0), counts.sum(axis=0)


@njit(parallel=True, cache=True)
def _owned_sums(x, idx, k, scale, bounds):
    """Thread ``p`` streams over all rows and adds those of centroids ``[bounds[p], bounds[p + 1])``."""
    sums = np.zeros((k, x.shape[1]), np.int64)
    for p in prange(len(bounds) - 1):
        lo, hi = bounds[p], bounds[p + 1]
        for i in range(x.shape[0]):
            j = idx[i]
            if lo <= j < hi:
                _add_row(sums, j, x, i, scale)
    return sums


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
    parts = max(1, min(numba.get_num_threads(), len(x) // 4096))
    if parts * k * x.shape[1] * 8 <= PARTIALS_BUDGET:
        return _partial_sums(x, idx, k, float(scale), parts)
    counts = np.bincount(idx, minlength=k).astype(np.int64)
    ends = np.searchsorted(np.cumsum(counts), np.arange(1, parts) * len(x) / parts)  # ~equal rows per part
    bounds = np.concatenate([[0], np.minimum(ends + 1, k), [k]]).astype(np.int64)
    return _owned_sums(x, idx, k, float(scale), bounds), counts


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
