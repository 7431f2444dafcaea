"""Exact nearest-centroid assignment on the CPU (the hot loop of every k-means / VQ tokenizer).

``assign(x, codebook)`` returns, for each row of ``x``, the index of the nearest centroid and the
squared distance to it, without ever building the ``N × K`` distance matrix. Only the score
``s(x, c) = ||c||² − 2 x·c`` (``||x − c||²`` minus a per-row constant) matters for the argmin.

**int8 path (hosts with AVX-512 VNNI; ``operators.kernels.nearest_int8``): a cheap filter with a
rigorous error bound, then an exact re-rank of the few survivors.**

* Every centroid and every query is quantised per row: ``s = max|v|/127``, ``q = round(v/s)``
  (int8), ``ṽ = s·q``, ``e = v − ṽ``; ``||ṽ||`` and ``||e||`` are computed in float64 and rounded
  up. Centroid codes are packed in panels of 64 centroids × 4 dims so that one zmm register holds
  16 centroids × 4 consecutive dims, the signed operand of ``vpdpbusd``. Query codes enter as
  ``u = q + 128`` (unsigned operand); ``Σ u·q_c − 128·Σ q_c = Σ q_x·q_c`` exactly, in int32
  (no overflow while ``D·255·127 < 2^31``, i.e. ``D ≤ 66000``; else the fp32 path is used).
* A register tile of 6 queries × 64 centroids (24 int32 accumulators) does 64 multiply-adds per
  ``vpdpbusd``, 4× a float32 FMA; at D=768 the filter runs ~3× faster than a float32 pass at
  the FMA peak.
* With ``x = x̃ + e_x`` and ``c = c̃ + e_c``: ``|x·c − x̃·c̃| ≤ E = ||e_x||·||c̃|| + ||x̃||·||e_c||
  + ||e_x||·||e_c||`` (Cauchy–Schwarz). So ``s ∈ [a − b, a + b]`` with ``a = ||c||² − 2 s_x s_c
  Σ q_x q_c`` and ``b = 2E + ε(||c||² + 2(||x̃|| + ||e_x||)(||c̃|| + ||e_c||))``. The ``ε = 2^-16``
  term covers every float32 rounding made in computing ``a`` and ``b`` (each ≤ 2^-24 relative to
  those same magnitudes, fewer than 50 of them), so the bounds hold for the real-valued score.
* Per query, ``U`` = the smallest upper bound seen so far, and a candidate buffer holds every
  centroid whose lower bound was ``≤ U`` when it was seen (``U`` only decreases, so this is a
  superset of the final set). The true nearest centroid ``c*`` always survives: ``lb(c*) ≤ s(c*)
  ≤ s(c_U) ≤ ub(c_U) = U`` where ``c_U`` attains ``U``; every centroid tied with it does too.
* The survivors (lower bound ≤ final ``U``; ~13 of 8192 at D=768 on Gaussian data, ~2 of 1024 at
  D=64) are re-ranked by the float64 score of the float32 inputs (the products are exact, only
  the sum rounds), ties to the lowest index: the argmin of the float64 reference ``assign_reference``, up to
  that reference's own float64 rounding. The reported distance is the float64 ``||x − c||²``
  rounded to float32. A query whose 256-entry buffer overflows (hundreds of near-identical
  centroids, or features with very uneven per-dimension scales) is filtered again starting from
  its final ``U``, so that only its true survivors are buffered. A query whose norms overflow
  float32 is answered by float64 brute force, as is every query when a centroid norm does.

**fp32 path (hosts without VNNI, or ``PackedCodebook(..., method="fp32")``): float32 brute force.**
Its argmin is exact up to float32 rounding of the scores (near-ties closer than that may differ
from the float64 reference). Blocking, as in a GEMM micro-kernel:

* Centroids are packed once into panels of ``TW = 64`` centroids, ``[K/64, D, 64]``, so one step
  of the inner loop loads four 16-float vectors (one cache line each).
* The micro-kernel keeps a ``P = 6`` points × 64 centroids tile of dot products in 24 of the 32
  AVX-512 registers and walks the feature dimension in chunks of at most ``DC = 128`` floats,
  so the centroid panel chunk (``DC × 64`` floats = 32 KiB) stays in L1 while ``MT = 8`` point
  tiles reuse it (each centroid load feeds 6 FMAs, each point broadcast feeds 4).
* After each panel the tile is turned into ``||c||² − 2 x·c`` and merged into a running per-lane
  minimum and argmin (vector compare + select).

Both paths: each thread takes a group of up to 16 blocks of ``P·MT`` points and runs all of them
against one L2-sized chunk of panels (≤ 1 MiB) before moving to the next chunk, so a large
codebook comes from memory once per group, not once per block. Numba's auto-vectoriser does not
find this register blocking by itself, so the micro-kernels are ``@intrinsic`` functions emitting
explicit ``<16 x float>`` / ``<16 x i32>`` LLVM IR (FMA, ``vpdpbusd``, compare + select). The
outer loops are ordinary ``prange`` Numba code.
"""

from typing import Dict, Tuple, Union

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels import nearest_int8
from operators.kernels.device import resolve
from operators.kernels.tiles import (
    LANES, MT, TW, VECTORS, P, blocks_per_group, panels_per_chunk, register_tile, splat, vector_ptr,
)

DC = 128  # floats of the feature dimension per L1-resident panel chunk


@intrinsic
def _dot_tile(typingctx, x, i0, panels, kb, d0, d1, acc):
    """acc[p, :] += x[i0 + p, d0:d1] · panels[kb, d0:d1, :] for the P×TW tile (in registers)."""
    sig = types.void(x, i0, panels, kb, d0, d1, acc)

    def codegen(context, builder, signature, args):
        x_, i0_, c_, kb_, d0_, d1_, acc_ = args
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vty = ir.VectorType(f32, LANES)
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
        register_tile(builder, vty, P, aa.data, xbase, dim, cbase, d0_, d1_,
                      lambda b, acc, xv, cv: b.call(fma, [xv, cv, acc]))
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
            nv = builder.load(vector_ptr(builder, na.data, start, vty), align=4)
            kidx = builder.add(
                splat(builder, builder.trunc(start, i32), ivty),
                ir.Constant(ivty, list(range(LANES))),
            )
            for p in range(P):
                off = ir.Constant(i64, p * TW + w * LANES)
                av = builder.load(vector_ptr(builder, aa.data, off, vty), align=4)
                dist = builder.call(fma, [minus2, av, nv])
                bptr = vector_ptr(builder, ba.data, off, vty)
                iptr = vector_ptr(builder, ia.data, off, ivty)
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


METHODS = ("auto", "int8", "fp32")


class PackedCodebook:
    """A codebook packed once for repeated assignment calls.

    Args:
        codebook: ``[K, D]`` centroids (cast to contiguous float32).
        method: ``"int8"`` (VNNI filter + float64 re-rank), ``"fp32"`` (float32 brute force) or
            ``"auto"``: ``"int8"`` when the host has AVX-512 VNNI, else ``"fp32"``.

    Attributes:
        codebook: The ``[K, D]`` float32 centroids.
        method: The resolved method.
        int8: The ``nearest_int8.Int8Codebook`` packing (``None`` for ``"fp32"``).
        panels: ``[ceil(K/64), D, 64]`` float32, padding centroids zero (``None`` for ``"int8"``).
        norms: ``[ceil(K/64)·64]`` float32 ``||c||²``, ``+inf`` for padding (``None`` for ``"int8"``).
    """

    def __init__(self, codebook: np.ndarray, method: str = "auto"):
        c = np.ascontiguousarray(codebook, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] == 0:
            raise ValueError(f"codebook must be [K, D] with K > 0, got shape {c.shape}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        k, dim = c.shape
        vnni = nearest_int8.vnni_available() and dim <= nearest_int8.MAX_DIM
        if method == "int8" and not vnni:
            raise ValueError("method='int8' needs AVX-512 VNNI and D <= 66000; use method='auto' or 'fp32'")
        self.codebook = c
        self.method = "int8" if method == "int8" or (method == "auto" and vnni) else "fp32"
        self.int8 = nearest_int8.Int8Codebook(c) if self.method == "int8" else None
        self.panels = self.norms = None
        if self.method == "fp32":
            kp = -(-k // TW) * TW
            padded = np.zeros((kp, dim), np.float32)
            padded[:k] = c
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
    idx, dist, _ = assign_info(x, codebook)
    return idx, dist


def assign_info(x: np.ndarray, codebook: Centroids) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """``assign`` plus a dict saying how it ran.

    The dict has ``path`` (``"int8"`` or ``"fp32"``) and, for ``"int8"``, ``candidates`` (mean
    centroids re-ranked per query), ``second_pass_rows`` (queries filtered twice because their
    candidate buffer overflowed) and ``fallback_rows`` (queries answered by float64 brute force).
    """
    packed = codebook if isinstance(codebook, PackedCodebook) else PackedCodebook(codebook)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.codebook.shape[1]:
        raise ValueError(f"x must be [N, {packed.codebook.shape[1]}], got shape {x.shape}")
    if packed.method == "int8":
        idx, dist, info = nearest_int8.search(x, packed.codebook, packed.int8)
        with np.errstate(over="ignore"):  # distances beyond float32 range become inf
            return idx, dist.astype(np.float32), info
    return (*_assign_fp32(x, packed), {"path": "fp32"})


def _assign_fp32(x: np.ndarray, packed: PackedCodebook) -> Tuple[np.ndarray, np.ndarray]:
    """The float32 brute-force path (hosts without VNNI)."""
    n = x.shape[0]
    block = P * MT
    idx = np.empty(n, np.int32)
    dist = np.empty(n, np.float32)
    main = n - n % block
    chunk = panels_per_chunk(packed.panels[0].nbytes)
    group = blocks_per_group(main // block)
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
    """Plain numpy reference (materialises the distance matrix; for tests only).

    Ranks by the float64 score ``||c||² − 2 x·c`` (adding the per-row ``||x||²`` first would only
    add rounding that can swamp the score when ``||x|| ≫ ||c||``); ties to the lowest index.
    """
    x = np.asarray(x, np.float64)
    c = np.asarray(codebook, np.float64)
    score = (c * c).sum(1)[None] - 2 * x @ c.T
    idx = np.argmin(score, axis=1)
    return idx, np.maximum((x * x).sum(1) + score[np.arange(len(x)), idx], 0.0)


def nearest(x: np.ndarray, codebook: Centroids, device: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """``assign`` on the chosen device (``"auto"``: the GPU when present, else the CPU)."""
    if resolve(device) == "cuda":
        from operators.kernels import cuda_nearest

        raw = codebook.codebook if isinstance(codebook, PackedCodebook) else codebook
        return cuda_nearest.assign(x, raw)
    return assign(x, codebook)
