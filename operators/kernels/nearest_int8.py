"""Exact nearest-centroid search: an int8 filter with a rigorous error bound, then an exact re-rank.

Runs on every ISA path but ``other`` (``cpu.isa_path``), with that path's register tile: zmm
``vpdpbusd`` (AVX-512 VNNI), ymm ``vpdpbusd`` (AVX-VNNI), ymm ``vpmaddubsw`` (AVX2; in pairs of
words with 7-bit codes up to ``PAIRS_MAX_DIM``). Codes and their exactness in int32: ``int8_codes``.

**Filter: no possible nearest centroid is lost.** With ``x = x̃ + e_x`` and ``c = c̃ + e_c`` (the
quantised rows and their errors): ``|x·c − x̃·c̃| ≤ E = ||e_x||·||c̃|| + ||x̃||·||e_c|| +
||e_x||·||e_c||`` (Cauchy–Schwarz). So the score ``s(x, c) = ||c||² − 2 x·c`` lies in ``[a − b,
a + b]`` with ``a = ||c||² − 2 s_x s_c Σ q_x q_c`` and ``b = 2E + ε(||c||² + 2(||x̃|| + ||e_x||)
(||c̃|| + ||e_c||))``. The ``ε = 2^-16`` term covers every float32 rounding made in computing ``a``
and ``b`` (each ≤ 2^-24 relative to those same magnitudes, fewer than 50 of them, so at most
``ε/2`` together), so the bounds hold for the real-valued score. ``Σ q_x q_c`` itself is exact
whichever tile computed it; tiles differ only in their code grids, and the bound uses the codes
and norms actually stored. Per query, ``U`` = the smallest upper bound seen so far; after each
L2-sized chunk of panels, the chunk's centroids whose lower bound is ``≤ U`` enter the query's
candidate buffer (``U`` only decreases, so the buffer is a superset of the final survivors). The
nearest centroid ``c*`` always survives: ``lb(c*) ≤ s(c*) ≤ s(c_U) ≤ ub(c_U) = U`` where ``c_U``
attains ``U``; every centroid tied with it does too. A pruned ``c'`` has ``s(c') − s(c*) > ε/2·(…)``.

**Re-rank.** The survivors (lower bound ≤ final ``U``) are scored in float32 (FMA, 32 partial
sums, ``_score32``): ``|s32 − s| ≤ (D/32 + 69)·2^-24·(||c||² + 2||x||·||c||)`` (a recursive sum of
at most ``D/32 + 67`` roundings — ``D/32`` FMAs per partial sum, a 5-level tree, two roundings per
tail dim — with ``Σ|x_e c_e| ≤ ||x||·||c||``, and two more roundings), and the code uses twice
that as ``err``. Only those with ``s32 − err ≤ min(s32 + err)`` get the float64
score of the float32 inputs in a fixed summation order (``exact``), ties to the lowest index; by
the same argument as above, every dropped ``c'`` has ``s(c') − s(c*) > err/2``. Both margins are
far above float64 rounding, so the result is the float64 argmin over *all* centroids: the same
index on every host and every tile, whatever the candidate sets. The reported distance is the
fixed-order float64 ``||x − c||²`` rounded to float32.

A query whose candidate buffer overflows (hundreds of near-identical centroids, or features with
very uneven per-dimension scales) is filtered again starting from its final ``U``, so that only
its true survivors are buffered. A query whose norms overflow float32 is answered by float64
brute force, as is every query when a centroid norm does.

Each thread takes groups of up to 16 blocks of ``rows·MT`` queries and runs all of them against
one L2-sized chunk of panels before the next chunk, so a large codebook comes from memory once
per group.
"""

from typing import Dict, Tuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels import exact
from operators.kernels.int8_codes import MAX_DIM, UP, Int8Codebook, padding_word, quantize_rows
from operators.kernels.int8_tiles import below, bound_tile, dot_tile
from operators.kernels.tiles import L1_CHUNK, MAX_GROUP, MT, blocks_per_group, vector_ptr

CAP = 256  # candidate buffer per query
MAX_CAP = 1 << 14  # candidate buffer per query in the second pass (overflowing queries only)


@intrinsic
def _lowest_bit(typingctx, bits):
    """Index of the lowest set bit of a nonzero int64 (``llvm.cttz``)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i1, i64 = ir.IntType(1), ir.IntType(64)
        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i1]), "llvm.cttz.i64")
        return builder.call(cttz, [args[0], ir.Constant(i1, 1)])

    return sig, codegen


@intrinsic
def _dot32(typingctx, a, i, b, j):
    """float32 ``Σ a[i, e]·b[j, e]`` over ``e < 32·floor(D/32)``: FMAs into 32 partial sums, then a tree."""
    sig = types.float32(a, i, b, j)

    def codegen(context, builder, signature, args):
        i_, j_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 3))
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vty = ir.VectorType(f32, 8)
        aa = context.make_array(signature.args[0])(context, builder, args[0])
        ba = context.make_array(signature.args[2])(context, builder, args[2])
        dim = builder.extract_value(aa.shape, 1)
        arow = builder.gep(aa.data, [builder.mul(i_, dim)])
        brow = builder.gep(ba.data, [builder.mul(j_, dim)])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v8f32")
        slots = [cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * 8)) for _ in range(4)]
        with cgutils.for_range(builder, builder.udiv(dim, ir.Constant(i64, 32))) as loop:
            e0 = builder.mul(loop.index, ir.Constant(i64, 32))
            for r, slot in enumerate(slots):
                e = builder.add(e0, ir.Constant(i64, 8 * r))
                av = builder.load(vector_ptr(builder, arow, e, vty), align=4)
                bv = builder.load(vector_ptr(builder, brow, e, vty), align=4)
                builder.store(builder.call(fma, [av, bv, builder.load(slot)]), slot)
        acc = [builder.load(slot) for slot in slots]
        v = builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3]))
        lanes = [builder.extract_element(v, ir.Constant(ir.IntType(32), k)) for k in range(8)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[k], lanes[k + 1]) for k in range(0, len(lanes), 2)]
        return lanes[0]

    return sig, codegen


@njit(cache=True, inline="always")
def _score32(x, row, codebook, c, norm):
    """float32 ``||c||² − 2 x·c``, off by at most ``_score32_slack(D)·(||c||² + 2||x||·||c||)``."""
    dim = x.shape[1]
    dot = _dot32(x, row, codebook, c)
    for e in range(dim - dim % 32, dim):
        dot += x[row, e] * codebook[c, e]
    return np.float32(norm) - np.float32(2.0) * dot


@njit(cache=True, inline="always")
def _score32_slack(dim):
    """Relative error bound of ``_score32``: twice the rounding analysis of the module docstring."""
    return (dim / 32 + 69) * 2.0**-23


@njit(cache=True)
def _compact(cand_idx, cand_lo, i, count, limit):
    """Drops candidates of buffer row ``i`` whose lower bound exceeds ``limit``; returns the count."""
    kept = 0
    for j in range(count):
        if cand_lo[i, j] <= limit:
            cand_idx[i, kept] = cand_idx[i, j]
            cand_lo[i, kept] = cand_lo[i, j]
            kept += 1
    return kept


@njit(parallel=True, cache=True)
def _search(tile, x, codebook, norms, xq, stats, panels, offset, consts, group, workers, chunk, gc, cap, upper_io,
            out_idx, out_dist, fallback, ncand):
    """Int8 filter + float64 re-rank for all rows of ``xq`` (a multiple of rows·MT rows).

    Rows are cut into groups of ``group`` blocks of rows·MT rows; each of ``workers`` threads
    allocates its buffers (``cap`` candidates per query) once and runs every ``workers``-th group
    through ``_search_group``. ``upper_io`` holds each query's starting ``U`` (``+inf``, or a
    known upper bound) and receives the final one.
    """
    width = panels.shape[2]
    block = tile.rows * MT
    nblocks = xq.shape[0] // block
    ngroups = (nblocks + group - 1) // group
    span = (min(chunk, panels.shape[0]) * width + 63) // 64 * 64
    for worker in prange(workers):
        acc = np.empty((MT, tile.rows, width), np.int32)
        lower = np.empty((block, span), np.float32)
        hi_min = np.empty((group * block, tile.lanes), np.float32)
        upper = np.empty(group * block, np.float32)
        cand_idx = np.empty((group * block, cap), np.int32)
        cand_lo = np.empty((group * block, cap), np.float32)
        count = np.empty(group * block, np.int64)
        over = np.empty(group * block, np.bool_)
        refine = np.empty(cap, np.float64)
        for grp in range(worker, ngroups, workers):
            _search_group(tile, x, codebook, norms, xq, stats, panels, offset, consts, grp * group,
                          min(grp * group + group, nblocks), chunk, gc, upper_io, out_idx, out_dist, fallback,
                          ncand, acc, lower, hi_min, upper, cand_idx, cand_lo, count, over, refine)


@njit(cache=True)
def _search_group(tile, x, codebook, norms, xq, stats, panels, offset, consts, b0, b1, chunk, gc, upper_io, out_idx,
                  out_dist, fallback, ncand, acc, lower, hi_min, upper, cand_idx, cand_lo, count, over, refine):
    """Filters rows of blocks ``[b0, b1)`` against all panels, then re-ranks the survivors.

    The group walks the panels in L2-sized chunks (every block runs against a chunk before the
    next chunk is touched), and each panel in L1-sized slices of ``gc`` words. A block's lower
    bounds for the chunk go to ``lower`` and its upper bounds into per-query vectors of running
    minima (``hi_min``); after the chunk, each query's ``U`` (the smallest upper bound so far) is
    taken and the centroids of the chunk whose lower bound is ``≤ U`` enter its candidate buffer.
    A full buffer is compacted against the current ``U``, and a query whose buffer stays over 3/4
    full is flagged in ``fallback``. At the end, each query's survivors (lower bound ≤ final ``U``)
    are scored in float32 (``_score32``), and those whose float32 interval can still hold the
    minimum get the float64 score (``exact.score``); ties go to the lowest index.
    """
    n = x.shape[0]
    k = codebook.shape[0]
    words = xq.shape[1]
    npanels, _, width = panels.shape
    rows = tile.rows
    block = rows * MT
    r0 = b0 * block
    nrows = (b1 - b0) * block
    cap = cand_idx.shape[1]
    upper[:nrows] = upper_io[r0:r0 + nrows]
    hi_min[:nrows] = np.inf
    count[:] = 0
    over[:] = False
    for k0 in range(0, npanels, chunk):
        k1 = min(k0 + chunk, npanels)
        valid = (k1 - k0) * width
        for b in range(b0, b1):
            for kb in range(k0, k1):
                for g0 in range(0, words, gc):
                    g1 = min(g0 + gc, words)
                    for t in range(MT):
                        dot_tile(tile, xq, b * block + t * rows, panels, kb, g0, g1, acc, t)
                for t in range(MT):
                    bound_tile(tile, acc, t, offset, consts, kb, stats, b * block + t * rows, lower, t * rows,
                               (kb - k0) * width, hi_min, (b - b0) * block + t * rows)
            for q in range(block):
                i = (b - b0) * block + q
                if over[i]:
                    continue
                limit = upper[i]
                for lane in range(hi_min.shape[1]):
                    limit = min(limit, hi_min[i, lane])
                upper[i] = limit
                for j0 in range(0, valid, 64):
                    bits = below(lower, q, j0, limit)
                    if valid - j0 < 64:
                        bits &= (np.int64(1) << (valid - j0)) - 1
                    while bits != 0:  # visit only the set bits
                        j = j0 + _lowest_bit(bits)
                        bits &= bits - 1
                        if k0 * width + j >= k:
                            break
                        c = count[i]
                        if c == cap:
                            c = _compact(cand_idx, cand_lo, i, c, limit)
                            if c > cap - cap // 4:
                                over[i] = True
                                break
                        cand_idx[i, c] = k0 * width + j
                        cand_lo[i, c] = lower[q, j]
                        count[i] = c + 1
                    if over[i]:
                        break
    slack = _score32_slack(x.shape[1])
    for i in range(nrows):
        row = r0 + i
        upper_io[row] = upper[i]
        if row >= n:
            continue
        limit = upper[i]
        if over[i] or not np.isfinite(limit):
            fallback[row] = True
            continue
        norm_x = np.float64(stats[row, 1]) + np.float64(stats[row, 2])  # ≥ ||x|| (both rounded up)
        top = np.inf
        kept = 0
        for j in range(count[i]):
            if cand_lo[i, j] > limit:
                continue
            c = cand_idx[i, j]
            score = np.float64(_score32(x, row, codebook, c, norms[c]))
            err = slack * (norms[c] + 2.0 * norm_x * np.sqrt(norms[c]) * UP)
            if not (np.isfinite(score) and np.isfinite(err)):  # overflow: leave it to float64
                score, err = 0.0, np.inf
            cand_idx[i, kept] = c
            refine[kept] = score - err
            top = min(top, score + err)
            kept += 1
        best = np.inf
        arg = -1
        for j in range(kept):
            if refine[j] > top:
                continue
            c = cand_idx[i, j]
            d = exact.score(x, row, codebook, c, norms)
            if d < best or (d == best and c < arg):
                best = d
                arg = c
        out_idx[row] = arg
        out_dist[row] = exact.squared_distance(x, row, codebook, arg)
        ncand[row] = kept


@njit(cache=True)
def _bounds(tile, xq, stats, panels, offset, consts, k, lower_out, upper_out):
    """Runs the filter's tile code over all rows and panels and records every lower bound."""
    words = xq.shape[1]
    width = panels.shape[2]
    rows = tile.rows
    acc = np.empty((1, rows, width), np.int32)
    lower = np.empty((rows, width), np.float32)
    hi_min = np.empty((rows, tile.lanes), np.float32)
    for row0 in range(0, xq.shape[0], rows):
        hi_min[:] = np.inf
        for kb in range(panels.shape[0]):
            dot_tile(tile, xq, row0, panels, kb, 0, words, acc, 0)
            bound_tile(tile, acc, 0, offset, consts, kb, stats, row0, lower, 0, 0, hi_min, 0)
            for p in range(rows):
                for lane in range(width):
                    if kb * width + lane < k and row0 + p < lower_out.shape[0]:
                        lower_out[row0 + p, kb * width + lane] = lower[p, lane]
        for p in range(rows):
            upper_out[row0 + p] = hi_min[p].min()


def bounds(x: np.ndarray, packed: Int8Codebook) -> Tuple[np.ndarray, np.ndarray]:
    """The filter's bounds, for tests and diagnostics: ``(lower [N, K], upper [N])`` float32.

    ``lower[i, k]`` bounds ``||c_k||² − 2·x_i·c_k`` from below; ``upper[i]`` is the minimum over
    ``k`` of the upper bounds. Built from the same tile code as the search. A one-centroid
    codebook gives that centroid's upper bound.
    """
    n = x.shape[0]
    rows = packed.tile.rows
    codes = packed.codes
    xq, stats = quantize_rows(x, -(-n // rows) * rows, codes.query_levels, codes.query_bias, codes.step)
    lower = np.empty((n, packed.k), np.float32)
    upper = np.full(xq.shape[0], np.inf, np.float32)
    _bounds(packed.tile, xq, stats, packed.panels, packed.offset, packed.consts, packed.k, lower, upper)
    return lower, upper[:n]


@njit(parallel=True, cache=True)
def _brute_force(x, codebook, norms, rows, out_idx, out_dist):
    """float64 score against every centroid for the given rows (ties to the lowest index).

    The fallback for queries whose candidate buffer overflowed; same arithmetic as the re-rank.
    """
    for j in prange(len(rows)):
        row = rows[j]
        best = np.inf
        arg = 0
        for c in range(codebook.shape[0]):
            d = exact.score(x, row, codebook, c, norms)
            if d < best:
                best = d
                arg = c
        out_idx[row] = arg
        out_dist[row] = exact.squared_distance(x, row, codebook, arg)


def search(x: np.ndarray, codebook: np.ndarray, packed: Int8Codebook) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Exact nearest centroid of each row of ``x`` ``[N, D]`` (float32, contiguous).

    Queries whose candidate buffer overflowed are searched again, starting from the final ``U``
    of the first pass and with room for every centroid (up to ``MAX_CAP``), so that the second
    pass only buffers the true survivors. Queries with non-finite bounds, or still too many
    survivors, get float64 brute force.

    Returns ``(index int64, squared distance float64, info)``; ``info`` has ``candidates`` (mean
    survivors of the filter per query, over queries not brute-forced), ``second_pass_rows`` and
    ``fallback_rows`` (brute-forced queries).
    """
    n, dim = x.shape
    block = packed.tile.rows * MT
    rows = -(-n // block) * block
    idx = np.empty(n, np.int64)
    dist = np.empty(n, np.float64)
    fallback = np.zeros(n, np.bool_)
    ncand = np.zeros(n, np.int64)
    retry = np.zeros(0, np.int64)
    if packed.finite and dim <= MAX_DIM:
        xq, stats = quantize_rows(x, rows, packed.codes.query_levels, packed.codes.query_bias, packed.codes.step)
        bad = ~np.isfinite(stats[:n]).all(1)  # non-finite rows, or ||x|| beyond float32 range
        stats[:n][bad] = 0.0
        if not bad.all():
            upper = np.full(rows, np.inf, np.float32)
            _run(x, codebook, packed, xq, stats, MAX_GROUP, CAP, upper, idx, dist, fallback, ncand)
            retry = np.flatnonzero(fallback & ~bad & np.isfinite(upper[:n]))
        fallback |= bad
    else:
        fallback[:] = True
    if len(retry):
        m = len(retry)
        padded = -(-m // block) * block
        xq2 = np.full((padded, xq.shape[1]), padding_word(packed.codes.query_bias))
        xq2[:m] = xq[retry]
        stats2 = np.zeros((padded, 3), np.float32)
        stats2[:m] = stats[retry]
        upper2 = np.full(padded, np.inf, np.float32)
        upper2[:m] = upper[retry]
        idx2, dist2 = np.empty(m, np.int64), np.empty(m, np.float64)
        fallback2, ncand2 = np.zeros(m, np.bool_), np.zeros(m, np.int64)
        cap = min(packed.k + packed.panels.shape[2], MAX_CAP)
        _run(np.ascontiguousarray(x[retry]), codebook, packed, xq2, stats2, 1, cap, upper2, idx2, dist2, fallback2,
             ncand2)
        idx[retry], dist[retry], ncand[retry], fallback[retry] = idx2, dist2, ncand2, fallback2
    lost = np.flatnonzero(fallback)
    if len(lost):
        _brute_force(x, codebook, packed.norms, lost, idx, dist)
        ncand[lost] = 0
    kept = n - len(lost)
    info = {"candidates": float(ncand.sum() / kept) if kept else 0.0,
            "second_pass_rows": len(retry), "fallback_rows": len(lost)}
    return idx, dist, info


def _run(x, codebook, packed, xq, stats, max_group, cap, upper, idx, dist, fallback, ncand) -> None:
    """Calls ``_search`` with a group size that gives each thread several groups."""
    nblocks = xq.shape[0] // (packed.tile.rows * MT)
    group = blocks_per_group(nblocks, max_group)
    workers = min(numba.get_num_threads(), -(-nblocks // group))
    step = packed.codes.step
    gc = max(1, L1_CHUNK // (4 * packed.panels.shape[2]) // step) * step
    _search(packed.tile, x, codebook, packed.norms, xq, stats, packed.panels, packed.offset, packed.consts, group,
            workers, packed.chunk, gc, cap, upper, idx, dist, fallback, ncand)
