"""Fused nearest-centroid assignment on the CPU (the hot loop of every k-means / VQ tokenizer).

``assign(x, codebook)`` returns, for each row of ``x``, the index of the nearest centroid and the
squared distance to it, without ever building the ``N × K`` distance matrix. It uses
``||x − c||² = ||x||² + ||c||² − 2 x·c`` and only needs ``||c||² − 2 x·c`` for the argmin.

Blocking, as in a GEMM micro-kernel:

* Centroids are packed once into panels of ``TW = 64`` centroids, ``[K/64, D, 64]``, so one step
  of the inner loop loads four 16-float vectors (one cache line each).
* The micro-kernel keeps a ``P = 6`` points × 64 centroids tile of dot products in 24 of the 32
  AVX-512 registers and walks the feature dimension in chunks of at most ``DC = 128`` floats,
  so the centroid panel chunk (``DC × 64`` floats = 32 KiB) stays in L1 while ``MT = 8`` point
  tiles reuse it (each centroid load feeds 6 FMAs, each point broadcast feeds 4).
* After each panel the tile is turned into ``||c||² − 2 x·c`` and merged into a running per-lane
  minimum and argmin (vector compare + select).
* Each thread takes a group of up to 16 blocks of ``P·MT`` points and runs all of them against
  one L2-sized chunk of panels (≤ 1 MiB) before moving to the next chunk, so a large codebook
  (25 MiB at K=8192, D=768) comes from memory once per group, not once per block. The 64 lanes
  are reduced to one running best per point after each chunk.

Numba's auto-vectoriser does not find this register blocking by itself, so the micro-kernel is
written as an ``@intrinsic`` emitting explicit ``<16 x float>`` LLVM IR (FMA + select). The
outer loops are ordinary ``prange`` Numba code, parallel over blocks of points.
"""

from typing import Tuple, Union

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels.device import resolve

LANES = 16
VECTORS = 4
TW = LANES * VECTORS
P = 6
MT = 8
DC = 128
L2_BUDGET = 1 << 20
MAX_GROUP = 16


def _vector_ptr(builder, base, offset, vty):
    return builder.bitcast(builder.gep(base, [offset]), vty.as_pointer())


def _splat(builder, value, vty, ivty):
    lanes = vty.count
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(vty, None), ir.Constant(ivty, [0] * lanes))


@intrinsic
def _dot_tile(typingctx, x, i0, panels, kb, d0, d1, acc):
    """acc[p, :] += x[i0 + p, d0:d1] · panels[kb, d0:d1, :] for the P×TW tile (in registers)."""
    sig = types.void(x, i0, panels, kb, d0, d1, acc)

    def codegen(context, builder, signature, args):
        x_, i0_, c_, kb_, d0_, d1_, acc_ = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vty, ivty = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
        xa = context.make_array(signature.args[0])(context, builder, x_)
        ca = context.make_array(signature.args[2])(context, builder, c_)
        aa = context.make_array(signature.args[6])(context, builder, acc_)
        dim = builder.extract_value(xa.shape, 1)
        width = ir.Constant(i64, TW)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v16f32"
        )
        xbase = builder.gep(xa.data, [builder.mul(i0_, dim)])
        cbase = builder.gep(ca.data, [builder.mul(builder.mul(kb_, dim), width)])
        slots = []
        for p in range(P):
            row = []
            for w in range(VECTORS):
                slot = cgutils.alloca_once(builder, vty)
                ptr = _vector_ptr(builder, aa.data, ir.Constant(i64, p * TW + w * LANES), vty)
                builder.store(builder.load(ptr, align=4), slot)
                row.append(slot)
            slots.append(row)
        with cgutils.for_range_slice(builder, d0_, d1_, ir.Constant(i64, 1), inc=True) as (d, _):
            crow = builder.gep(cbase, [builder.mul(d, width)])
            cv = [
                builder.load(_vector_ptr(builder, crow, ir.Constant(i64, w * LANES), vty), align=4)
                for w in range(VECTORS)
            ]
            for p in range(P):
                xs = builder.load(
                    builder.gep(xbase, [builder.add(builder.mul(ir.Constant(i64, p), dim), d)])
                )
                xv = _splat(builder, xs, vty, ivty)
                for w in range(VECTORS):
                    builder.store(builder.call(fma, [xv, cv[w], builder.load(slots[p][w])]), slots[p][w])
        for p in range(P):
            for w in range(VECTORS):
                ptr = _vector_ptr(builder, aa.data, ir.Constant(i64, p * TW + w * LANES), vty)
                builder.store(builder.load(slots[p][w]), ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _min_update(typingctx, acc, norms, kb, best, best_idx):
    """best/best_idx[p, lane] ← min over panel kb of norms − 2·acc (strict <: first index wins)."""
    sig = types.void(acc, norms, kb, best, best_idx)

    def codegen(context, builder, signature, args):
        acc_, n_, kb_, bv_, bi_ = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vty, ivty = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
        aa = context.make_array(signature.args[0])(context, builder, acc_)
        na = context.make_array(signature.args[1])(context, builder, n_)
        ba = context.make_array(signature.args[3])(context, builder, bv_)
        ia = context.make_array(signature.args[4])(context, builder, bi_)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v16f32"
        )
        minus2 = ir.Constant(vty, [-2.0] * LANES)
        k0 = builder.mul(kb_, ir.Constant(i64, TW))
        for w in range(VECTORS):
            start = builder.add(k0, ir.Constant(i64, w * LANES))
            nv = builder.load(_vector_ptr(builder, na.data, start, vty), align=4)
            kidx = builder.add(
                _splat(builder, builder.trunc(start, i32), ivty, ivty),
                ir.Constant(ivty, list(range(LANES))),
            )
            for p in range(P):
                off = ir.Constant(i64, p * TW + w * LANES)
                av = builder.load(_vector_ptr(builder, aa.data, off, vty), align=4)
                dist = builder.call(fma, [minus2, av, nv])
                bptr = _vector_ptr(builder, ba.data, off, vty)
                iptr = _vector_ptr(builder, ia.data, off, ivty)
                bv = builder.load(bptr, align=4)
                better = builder.fcmp_ordered("<", dist, bv)
                builder.store(builder.select(better, dist, bv), bptr, align=4)
                builder.store(builder.select(better, kidx, builder.load(iptr, align=4)), iptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def _assign_blocks(x, panels, norms, group, chunk, out_idx, out_dist):
    """Assigns rows of ``x`` (a multiple of P·MT rows) to the nearest packed centroid.

    Threads take groups of ``group`` blocks of P·MT points. A group walks the codebook in
    chunks of ``chunk`` panels (sized to stay in L2) and every block of the group is run against
    a chunk before the next chunk is touched, so a large codebook is read from memory once per
    group instead of once per block. After each chunk the 64 lanes are reduced to one running
    best per point (strict ``<``: earlier chunks, i.e. lower indices, win ties).
    """
    n, dim = x.shape
    npanels = panels.shape[0]
    block = P * MT
    nblocks = n // block
    for g in prange((nblocks + group - 1) // group):
        acc = np.empty((MT, P, TW), np.float32)
        best = np.empty((MT, P, TW), np.float32)
        best_idx = np.empty((MT, P, TW), np.int32)
        b0 = g * group
        b1 = min(b0 + group, nblocks)
        for row in range(b0 * block, b1 * block):
            out_dist[row] = np.inf
            out_idx[row] = 0
        for k0 in range(0, npanels, chunk):
            for b in range(b0, b1):
                best[:] = np.inf
                best_idx[:] = 0
                for kb in range(k0, min(k0 + chunk, npanels)):
                    acc[:] = 0.0
                    for d0 in range(0, dim, DC):
                        d1 = min(d0 + DC, dim)
                        for t in range(MT):
                            _dot_tile(x, b * block + t * P, panels, kb, d0, d1, acc[t])
                    for t in range(MT):
                        _min_update(acc[t], norms, kb, best[t], best_idx[t])
                for t in range(MT):
                    for p in range(P):
                        j = 0
                        for lane in range(1, TW):
                            v, w = best[t, p, lane], best[t, p, j]
                            if v < w or (v == w and best_idx[t, p, lane] < best_idx[t, p, j]):
                                j = lane
                        row = b * block + t * P + p
                        if best[t, p, j] < out_dist[row]:
                            out_idx[row] = best_idx[t, p, j]
                            out_dist[row] = best[t, p, j]


class PackedCodebook:
    """A codebook packed once for repeated assignment calls.

    Attributes:
        codebook: The ``[K, D]`` float32 centroids.
        panels: ``[ceil(K/64), D, 64]`` float32 (padding centroids are zero).
        norms: ``[ceil(K/64)·64]`` float32 ``||c||²``; ``+inf`` for padding so it never wins.
    """

    def __init__(self, codebook: np.ndarray):
        c = np.ascontiguousarray(codebook, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] == 0:
            raise ValueError(f"codebook must be [K, D] with K > 0, got shape {c.shape}")
        k, dim = c.shape
        kp = -(-k // TW) * TW
        padded = np.zeros((kp, dim), np.float32)
        padded[:k] = c
        self.codebook = c
        self.panels = np.ascontiguousarray(padded.reshape(kp // TW, TW, dim).transpose(0, 2, 1))
        self.norms = np.full(kp, np.inf, np.float32)
        self.norms[:k] = np.einsum("kd,kd->k", c, c)


Centroids = Union[np.ndarray, PackedCodebook]  # raw [K, D] centroids, or packed once for reuse


def assign(x: np.ndarray, codebook: Centroids) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(index [N] int64, squared distance [N] float32)`` of each row's nearest centroid.

    Args:
        x: ``[N, D]`` features (cast to contiguous float32).
        codebook: ``[K, D]`` centroids or a ``PackedCodebook`` (pack once when reused).

    Ties go to the lowest index, as ``numpy.argmin`` does on the same distances.
    """
    packed = codebook if isinstance(codebook, PackedCodebook) else PackedCodebook(codebook)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.codebook.shape[1]:
        raise ValueError(f"x must be [N, {packed.codebook.shape[1]}], got shape {x.shape}")
    n = x.shape[0]
    block = P * MT
    idx = np.empty(n, np.int32)
    dist = np.empty(n, np.float32)
    main = n - n % block
    chunk = max(1, L2_BUDGET // packed.panels[0].nbytes)
    group = int(min(MAX_GROUP, max(1, main // block // (4 * numba.get_num_threads()))))
    if main:
        _assign_blocks(x[:main], packed.panels, packed.norms, group, chunk, idx[:main], dist[:main])
    if main < n:
        tail = np.zeros((block, x.shape[1]), np.float32)
        tail[: n - main] = x[main:]
        tidx = np.empty(block, np.int32)
        tdist = np.empty(block, np.float32)
        _assign_blocks(tail, packed.panels, packed.norms, 1, chunk, tidx, tdist)
        idx[main:] = tidx[: n - main]
        dist[main:] = tdist[: n - main]
    dist += np.einsum("nd,nd->n", x, x)
    np.maximum(dist, 0.0, out=dist)
    return idx.astype(np.int64), dist


def assign_reference(x: np.ndarray, codebook: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference (materialises the distance matrix; for tests only)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(codebook, np.float64)
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
    idx = np.argmin(d, axis=1)
    return idx, np.maximum(d[np.arange(len(x)), idx], 0.0)


def nearest(x: np.ndarray, codebook: Centroids, device: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """``assign`` on the chosen device (``"auto"``: the GPU when present, else the CPU)."""
    if resolve(device) == "cuda":
        from operators.kernels import cuda_nearest

        raw = codebook.codebook if isinstance(codebook, PackedCodebook) else codebook
        return cuda_nearest.assign(x, raw)
    return assign(x, codebook)
