"""float32 register-tiled brute force: the portable nearest-centroid path.

Blocking, as in a GEMM micro-kernel, with the register tile of the ISA (``tiles``):

* Centroids are packed once into panels of ``width = vectors·lanes`` centroids,
  ``[K/width, D, width]``, so one step of the inner loop loads ``vectors`` full registers.
* The micro-kernel keeps a ``rows × width`` tile of dot products in registers and walks the
  feature dimension in chunks of ``DC_BYTES`` bytes of panel, so the chunk stays in L1 while
  ``MT = 8`` point tiles reuse it.
* After each panel the tile is turned into ``||c||² − 2 x·c`` and merged into a running per-lane
  minimum and argmin (vector compare + select).

Each thread takes a group of blocks of ``rows·MT`` points and runs all of them against one
L2-sized chunk of panels before moving to the next chunk.

Every lane accumulates its dot product over the dims in increasing order with one FMA per dim,
whatever the tile width, and the norms are rounded from the fixed-order float64 ``exact`` sums:
the float32 scores, hence the argmin, are the same on every FMA host. They are exact up to
float32 rounding only (near-ties closer than that may differ from the float64 reference), and
hosts without FMA (``muladd`` tiles) round differently.
"""

from typing import Tuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from operators.kernels import exact
from operators.kernels.tiles import (
    MT, blocks_per_group, geometry, multiply_add, panels_per_chunk, register_tile, splat, vector_ptr,
)

DC_BYTES = 32 << 10  # bytes of a panel slice walked by MT tiles at a time (128 dims of a 64-wide panel)


@intrinsic
def _dot_tile(typingctx, tile, x, i0, panels, kb, d0, d1, acc, t):
    """acc[t, p, :] += x[i0 + p, d0:d1] · panels[kb, d0:d1, :] for one register tile (zero first if ``d0 == 0``)."""
    sig = types.void(tile, x, i0, panels, kb, d0, d1, acc, t)
    lanes, vectors, rows, op = geometry(tile)

    def codegen(context, builder, signature, args):
        _, x_, i0_, c_, kb_, d0_, d1_, acc_, t_ = args
        i64 = ir.IntType(64)
        vty = ir.VectorType(ir.FloatType(), lanes)
        xa = context.make_array(signature.args[1])(context, builder, x_)
        ca = context.make_array(signature.args[3])(context, builder, c_)
        aa = context.make_array(signature.args[7])(context, builder, acc_)
        dim = builder.extract_value(xa.shape, 1)
        width = ir.Constant(i64, lanes * vectors)
        xbase = builder.gep(xa.data, [builder.mul(i0_, dim)])
        cbase = builder.gep(ca.data, [builder.mul(builder.mul(kb_, dim), width)])
        abase = builder.gep(aa.data, [builder.mul(t_, ir.Constant(i64, rows * lanes * vectors))])
        fresh = builder.icmp_signed("==", d0_, ir.Constant(d0_.type, 0))
        register_tile(builder, vty, rows, vectors, abase, xbase, dim, cbase, d0_, d1_,
                      multiply_add(builder, op, lanes), fresh)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _min_update(typingctx, tile, acc, t, norms, kb, best, best_idx):
    """best/best_idx[t, p, lane] ← min over panel kb of norms − 2·acc (strict <: first index wins)."""
    sig = types.void(tile, acc, t, norms, kb, best, best_idx)
    lanes, vectors, rows, op = geometry(tile)

    def codegen(context, builder, signature, args):
        _, acc_, t_, n_, kb_, bv_, bi_ = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vty, ivty = ir.VectorType(f32, lanes), ir.VectorType(i32, lanes)
        width = lanes * vectors
        aa = context.make_array(signature.args[1])(context, builder, acc_)
        na = context.make_array(signature.args[3])(context, builder, n_)
        ba = context.make_array(signature.args[5])(context, builder, bv_)
        ia = context.make_array(signature.args[6])(context, builder, bi_)
        update = multiply_add(builder, op, lanes)
        minus2 = ir.Constant(vty, [-2.0] * lanes)
        tile_base = builder.mul(t_, ir.Constant(i64, rows * width))
        k0 = builder.mul(kb_, ir.Constant(i64, width))
        for w in range(vectors):
            start = builder.add(k0, ir.Constant(i64, w * lanes))
            nv = builder.load(vector_ptr(builder, na.data, start, vty), align=4)
            kidx = builder.add(
                splat(builder, builder.trunc(start, i32), ivty), ir.Constant(ivty, list(range(lanes)))
            )
            for p in range(rows):
                off = builder.add(tile_base, ir.Constant(i64, p * width + w * lanes))
                av = builder.load(vector_ptr(builder, aa.data, off, vty), align=4)
                dist = update(builder, nv, [minus2], [av])
                bptr = vector_ptr(builder, ba.data, off, vty)
                iptr = vector_ptr(builder, ia.data, off, ivty)
                bv = builder.load(bptr, align=4)
                better = builder.fcmp_ordered("<", dist, bv)
                builder.store(builder.select(better, dist, bv), bptr, align=4)
                builder.store(builder.select(better, kidx, builder.load(iptr, align=4)), iptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def _assign_blocks(tile, x, panels, norms, group, chunk, dc, out_idx, out_dist):
    """Assigns rows of ``x`` (a multiple of rows·MT rows) to the nearest packed centroid.

    Threads take groups of ``group`` blocks of rows·MT points. A group walks the codebook in
    chunks of ``chunk`` panels (sized to stay in L2) and every block of the group is run against
    a chunk before the next chunk is touched, so a large codebook is read from memory once per
    group instead of once per block. After each chunk the lanes are reduced to one running
    best per point (strict ``<``: earlier chunks, i.e. lower indices, win ties).
    """
    n, dim = x.shape
    npanels, _, width = panels.shape
    rows = tile.rows
    block = rows * MT
    nblocks = n // block
    for g in prange((nblocks + group - 1) // group):
        acc = np.empty((MT, rows, width), np.float32)
        best = np.empty((MT, rows, width), np.float32)
        best_idx = np.empty((MT, rows, width), np.int32)
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
                    for d0 in range(0, dim, dc):
                        d1 = min(d0 + dc, dim)
                        for t in range(MT):
                            _dot_tile(tile, x, b * block + t * rows, panels, kb, d0, d1, acc, t)
                    for t in range(MT):
                        _min_update(tile, acc, t, norms, kb, best, best_idx)
                for t in range(MT):
                    for p in range(rows):
                        j = 0
                        for lane in range(1, width):
                            v, w = best[t, p, lane], best[t, p, j]
                            if v < w or (v == w and best_idx[t, p, lane] < best_idx[t, p, j]):
                                j = lane
                        row = b * block + t * rows + p
                        if best[t, p, j] < out_dist[row]:
                            out_idx[row] = best_idx[t, p, j]
                            out_dist[row] = best[t, p, j]


class Fp32Codebook:
    """Codebook packed for the float32 kernel.

    Attributes:
        tile: The register tile type instance (``tiles.ZmmFma()``, ``tiles.YmmFma()`` …).
        panels: ``[ceil(K/width), D, width]`` float32, padding centroids zero.
        norms: ``[ceil(K/width)·width]`` float32 ``||c||²`` (rounded from float64), ``+inf`` for padding.
        chunk: Panels per L2-sized chunk of the codebook walk.
    """

    def __init__(self, codebook: np.ndarray, tile):
        k, dim = codebook.shape
        width = tile.lanes * tile.vectors
        kp = -(-k // width) * width
        padded = np.zeros((kp, dim), np.float32)
        padded[:k] = codebook
        self.tile = tile
        self.panels = np.ascontiguousarray(padded.reshape(kp // width, width, dim).transpose(0, 2, 1))
        self.norms = np.full(kp, np.inf, np.float32)
        self.norms[:k] = exact.squared_norms(codebook)
        self.chunk = panels_per_chunk(self.panels[0].nbytes)


def assign(x: np.ndarray, packed: Fp32Codebook) -> Tuple[np.ndarray, np.ndarray]:
    """``(index int64, squared distance float32)`` of each row of ``x`` (contiguous float32)."""
    n = x.shape[0]
    tile = packed.tile
    block = tile.rows * MT
    dc = max(1, DC_BYTES // (4 * packed.panels.shape[2]))
    idx = np.empty(n, np.int32)
    dist = np.empty(n, np.float32)
    main = n - n % block
    group = blocks_per_group(main // block)
    if main:
        _assign_blocks(tile, x[:main], packed.panels, packed.norms, group, packed.chunk, dc, idx[:main], dist[:main])
    if main < n:
        tail = np.zeros((block, x.shape[1]), np.float32)
        tail[: n - main] = x[main:]
        tidx = np.empty(block, np.int32)
        tdist = np.empty(block, np.float32)
        _assign_blocks(tile, tail, packed.panels, packed.norms, 1, packed.chunk, dc, tidx, tdist)
        idx[main:] = tidx[: n - main]
        dist[main:] = tdist[: n - main]
    with np.errstate(over="ignore"):
        out = np.maximum(dist + exact.squared_norms(x), 0.0).astype(np.float32)
    return idx.astype(np.int64), out
