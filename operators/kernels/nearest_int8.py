"""Exact nearest-centroid search: an int8 VNNI filter with a rigorous error bound, then a float64 re-rank.

See the docstring of ``operators.kernels.nearest`` for the method and why it is exact. This module
holds the pieces: per-row int8 quantisation (``quantize_rows``), the packed int8 codebook
(``Int8Codebook``), the fused filter kernel (``vpdpbusd`` register tiles + per-panel bound test +
per-query candidate buffer, then the float64 re-rank of the survivors) and the float64 brute-force
fallback for queries whose candidate buffer overflowed.
"""

import functools
from typing import Dict, Tuple

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels.tiles import (
    LANES, MAX_GROUP, MT, TW, VECTORS, P, blocks_per_group, panels_per_chunk, register_tile, splat, vector_ptr,
)

GC = 64  # int32 words (4 dims each) per panel chunk: 64 × 64 × 4 B = 16 KiB
CAP = 256  # candidate buffer per query
MAX_CAP = 1 << 14  # candidate buffer per query in the second pass (overflowing queries only)
EPS = 2.0**-16  # relative slack for float32 rounding (see ``Int8Codebook``)
UP = 1.0 + 2.0**-20  # float64 → float32 conversions of norms are rounded up with this factor
MAX_DIM = 66000  # Σ u·q with u ≤ 255, |q| ≤ 127 fits int32 for D·255·127 < 2^31


@functools.lru_cache(maxsize=None)
def vnni_available() -> bool:
    """True when Numba compiles for a CPU with AVX-512 VNNI (``vpdpbusd`` on zmm registers).

    That is the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise.
    """
    if numba.config.CPU_NAME:
        return "+avx512vnni" in (numba.config.CPU_FEATURES or "").split(",")
    return bool(llvm_binding.get_host_cpu_features().get("avx512vnni", False))


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _quantize_rows(x, rows, words, bias, q, stats):
    """Per row: scale ``s = max|x|/127``, ``q = round(x/s)`` (+ ``bias``, stored as uint8 bytes).

    ``stats[i] = (s, ||x − s·q||·UP, ||s·q||·UP)``. The norms are float64 sums of exact terms
    (``s·q`` and ``x − s·q`` are exact in float64), so reordering them (``reassoc``) changes them
    by far less than the ``UP`` margin. Any ``q`` is valid: the bound only uses the ``q`` stored.
    Rows ``≥ len(x)`` and dims ``≥ D`` are padding: ``q = 0`` (stored as ``bias``), zero stats.
    """
    n, dim = x.shape
    for i in prange(rows):
        for j in range(dim if i < n else 0, words * 4):
            q[i, j] = np.uint8(bias)
        if i >= n:
            stats[i, 0] = 0.0
            stats[i, 1] = 0.0
            stats[i, 2] = 0.0
            continue
        amax = np.float32(0.0)
        for j in range(dim):
            amax = max(amax, abs(x[i, j]))
        s = np.float32(amax / np.float32(127.0))
        if not s >= np.float32(2.0**-100):  # zero / tiny rows: x̃ = 0, e = x (1/s stays finite)
            s = np.float32(1.0)
        inv = np.float32(1.0) / s
        s64 = np.float64(s)
        err = 0.0
        approx = 0.0
        for j in range(dim):
            v = min(np.float32(127.0), max(np.float32(-127.0), np.rint(x[i, j] * inv)))
            r = s64 * np.float64(v)
            e = np.float64(x[i, j]) - r
            err += e * e
            approx += r * r
            q[i, j] = np.uint8((np.int32(v) + bias) & 255)
        stats[i, 0] = s
        stats[i, 1] = np.float32(np.sqrt(err) * UP)
        stats[i, 2] = np.float32(np.sqrt(approx) * UP)


def quantize_rows(x: np.ndarray, rows: int, bias: int) -> Tuple[np.ndarray, np.ndarray]:
    """Quantises ``x`` ``[N, D]`` float32 to ``[rows, ceil(D/4)]`` int32 words of 4 int8 (+bias) dims.

    Returns ``(words, stats)``; ``stats`` is ``[rows, 3]`` float32 ``(scale, ||e||, ||x̃||)`` with
    ``x̃ = scale·q`` and ``e = x − x̃`` (norms rounded up).
    """
    words = -(-x.shape[1] // 4)
    q = np.empty((rows, words * 4), np.uint8)
    stats = np.empty((rows, 3), np.float32)
    _quantize_rows(x, rows, words, bias, q, stats)
    return q.view(np.int32), stats


class Int8Codebook:
    """Codebook packed for the int8 filter.

    Attributes:
        k: Number of centroids ``K`` (``K'`` is ``K`` rounded up to a multiple of 64).
        norms: ``[K]`` float64 ``||c||²`` for the re-rank.
        panels: ``[K'/64, ceil(D/4), 64]`` int32; word ``[b, g, l]`` holds the int8 codes of dims
            ``4g..4g+3`` of centroid ``64b + l`` (the ``vpdpbusd`` signed operand).
        offset: ``[K']`` int32 ``128·Σq_c``: removes the +128 that makes query codes unsigned.
        consts: ``[5, K']`` float32 rows ``m = −2·s_c``, ``n = ||c||²``, ``α``, ``β``, ``γ``.
        finite: False when some bound constant overflows float32 (every query then falls back).
        chunk: Panels per L2-sized chunk of the codebook walk.

    With ``C1 = ||c̃||``, ``C2 = ||e_c||`` (both rounded up), the score bound for a query with
    ``X1 = ||x̃||``, ``X2 = ||e_x||`` is ``b = α·X2 + β·X1 + γ`` where ``α = 2(C1 + C2)(1 + ε)``,
    ``β = 2·C2 + 2ε(C1 + C2)`` and ``γ = ε·n``, i.e. ``b = 2E + ε(n + 2(X1 + X2)(C1 + C2))``
    with ``E = X2·C1 + X1·C2 + X2·C2``. Padding centroids get ``n = +inf`` and ``α = β = γ = 0``
    so that both of their bounds are ``+inf``.
    """

    def __init__(self, codebook: np.ndarray):
        k = codebook.shape[0]
        kp = -(-k // TW) * TW
        self.k = k
        q, stats = quantize_rows(codebook, kp, 0)
        words = q.shape[1]
        codes = q.view(np.int8).reshape(kp, words * 4)
        self.panels = np.ascontiguousarray(
            codes.reshape(kp // TW, TW, words, 4).transpose(0, 2, 1, 3)
        ).view(np.int32).reshape(kp // TW, words, TW)
        self.offset = (128 * codes.sum(1, dtype=np.int64)).astype(np.int32)
        c64 = codebook.astype(np.float64)
        c1 = stats[:k, 2].astype(np.float64)
        c2 = stats[:k, 1].astype(np.float64)
        consts = np.zeros((5, kp), np.float32)
        consts[0] = -2.0 * stats[:, 0]
        consts[1, k:] = np.inf
        self.norms = np.einsum("kd,kd->k", c64, c64)
        with np.errstate(over="ignore"):  # a norm beyond float32 range: ``finite`` is False
            consts[1, :k] = self.norms
            consts[2, :k] = 2.0 * (c1 + c2) * (1.0 + EPS) * UP
            consts[3, :k] = (2.0 * c2 + 2.0 * EPS * (c1 + c2)) * UP
            consts[4, :k] = EPS * consts[1, :k].astype(np.float64) * UP
        self.consts = consts
        self.finite = bool(np.isfinite(consts[:, :k]).all())
        self.chunk = panels_per_chunk(self.panels[0].nbytes)


@intrinsic
def _dot_tile(typingctx, xq, i0, panels, kb, g0, g1, acc, t):
    """acc[t, p, :] += Σ_g vpdpbusd(xq[i0 + p, g], panels[kb, g, :]) over g in [g0, g1), in registers.

    Arrays are passed whole with indices (no slicing: a view costs two atomic refcount updates).
    """
    sig = types.void(xq, i0, panels, kb, g0, g1, acc, t)

    def codegen(context, builder, signature, args):
        x_, i0_, c_, kb_, g0_, g1_, acc_, t_ = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vty = ir.VectorType(i32, LANES)
        xa = context.make_array(signature.args[0])(context, builder, x_)
        ca = context.make_array(signature.args[2])(context, builder, c_)
        aa = context.make_array(signature.args[6])(context, builder, acc_)
        words = builder.extract_value(xa.shape, 1)
        width = ir.Constant(i64, TW)
        dpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.x86.avx512.vpdpbusd.512"
        )
        xbase = builder.gep(xa.data, [builder.mul(i0_, words)])
        cbase = builder.gep(ca.data, [builder.mul(builder.mul(kb_, words), width)])
        abase = builder.gep(aa.data, [builder.mul(t_, ir.Constant(i64, P * TW))])
        register_tile(builder, vty, P, abase, xbase, words, cbase, g0_, g1_,
                      lambda b, acc, xv, cv: b.call(dpbusd, [acc, xv, cv]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _bound_tile(typingctx, acc, t, offset, consts, kb, stats, row0, upper, u0, lower, mask):
    """Turns one P×64 tile of int32 dot products into score bounds and candidate masks.

    For query ``r = row0 + p`` and centroid ``k`` of panel ``kb``: ``approx = n + m·s_x·(acc[t, p] −
    offset)``, ``b = α·||e_x|| + β·||x̃|| + γ``; ``lower[p, l] = approx − b``; ``upper[u0 + p] ←
    min(upper[u0 + p], min_l approx + b)``; bit ``l`` of ``mask[p]`` is set when ``lower[p, l] ≤
    upper[u0 + p]`` (after the update).
    """
    sig = types.void(acc, t, offset, consts, kb, stats, row0, upper, u0, lower, mask)

    def codegen(context, builder, signature, args):
        acc_, t_, off_, con_, kb_, st_, row0_, up_, u0_, lo_, mask_ = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        fvty, ivty = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
        arr = [
            context.make_array(signature.args[j])(context, builder, a)
            for j, a in ((0, acc_), (2, off_), (3, con_), (5, st_), (7, up_), (9, lo_), (10, mask_))
        ]
        aa, oa, ca, sa, ua, la, ma = arr
        kp = builder.extract_value(ca.shape, 1)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(fvty, [fvty, fvty, fvty]), "llvm.fma.v16f32"
        )

        def vmin(a, b):
            return builder.select(builder.fcmp_ordered("<", a, b), a, b)

        abase = builder.gep(aa.data, [builder.mul(t_, ir.Constant(i64, P * TW))])
        k0 = builder.mul(kb_, ir.Constant(i64, TW))
        cols = []
        for w in range(VECTORS):
            k = builder.add(k0, ir.Constant(i64, w * LANES))
            row = [builder.load(vector_ptr(builder, oa.data, k, ivty), align=4)]
            for j in range(5):
                idx = builder.add(builder.mul(ir.Constant(i64, j), kp), k)
                row.append(builder.load(vector_ptr(builder, ca.data, idx, fvty), align=4))
            cols.append(row)
        for p in range(P):
            r = builder.add(row0_, ir.Constant(i64, p))
            srow = builder.gep(sa.data, [builder.mul(r, ir.Constant(i64, 3))])
            sx, ex, xt = (
                splat(builder, builder.load(builder.gep(srow, [ir.Constant(i64, j)])), fvty) for j in range(3)
            )
            lows, best = [], None
            for w in range(VECTORS):
                off, m, n, alpha, beta, gamma = cols[w]
                av = builder.load(vector_ptr(builder, abase, ir.Constant(i64, p * TW + w * LANES), ivty), align=4)
                dot = builder.sitofp(builder.sub(av, off), fvty)
                approx = builder.call(fma, [builder.fmul(dot, m), sx, n])
                bound = builder.call(fma, [ex, alpha, builder.call(fma, [xt, beta, gamma])])
                lo = builder.fsub(approx, bound)
                hi = builder.fadd(approx, bound)
                builder.store(lo, vector_ptr(builder, la.data, ir.Constant(i64, p * TW + w * LANES), fvty), align=4)
                lows.append(lo)
                best = hi if best is None else vmin(best, hi)
            for half in (8, 4, 2, 1):
                perm = [(j + half) % LANES for j in range(LANES)]
                best = vmin(best, builder.shuffle_vector(best, best, ir.Constant(ivty, perm)))
            uptr = builder.gep(ua.data, [builder.add(u0_, ir.Constant(i64, p))])
            cur = builder.load(uptr)
            top = builder.extract_element(best, ir.Constant(i32, 0))
            cur = builder.select(builder.fcmp_ordered("<", top, cur), top, cur)
            builder.store(cur, uptr)
            limit = splat(builder, cur, fvty)
            bits = ir.Constant(i64, 0)
            for w in range(VECTORS):
                hit = builder.bitcast(builder.fcmp_ordered("<=", lows[w], limit), ir.IntType(LANES))
                bits = builder.or_(bits, builder.shl(builder.zext(hit, i64), ir.Constant(i64, w * LANES)))
            builder.store(bits, builder.gep(ma.data, [ir.Constant(i64, p)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, fastmath={"reassoc", "contract"})
def _score(x, row, codebook, c, norms):
    """float64 ``||c||² − 2 x·c``: ``||x − c||²`` less ``||x||²``, without cancelling against it.

    Products of float32 values are exact in float64; ``reassoc`` only reorders the sum.
    """
    dot = 0.0
    for e in range(x.shape[1]):
        dot += np.float64(x[row, e]) * np.float64(codebook[c, e])
    return norms[c] - 2.0 * dot


@njit(cache=True, fastmath={"reassoc", "contract"})
def _squared_distance(x, row, codebook, c):
    """float64 ``||x − c||²`` (the distance reported for the chosen centroid)."""
    d = 0.0
    for e in range(x.shape[1]):
        diff = np.float64(x[row, e]) - np.float64(codebook[c, e])
        d += diff * diff
    return d


@intrinsic
def _lowest_bit(typingctx, bits):
    """Index of the lowest set bit of a nonzero int64 (``llvm.cttz``)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i1, i64 = ir.IntType(1), ir.IntType(64)
        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i1]), "llvm.cttz.i64")
        return builder.call(cttz, [args[0], ir.Constant(i1, 1)])

    return sig, codegen


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
def _search(x, codebook, norms, xq, stats, panels, offset, consts, group, workers, chunk, cap, upper_io, out_idx,
            out_dist, fallback, ncand):
    """Int8 filter + float64 re-rank for all rows of ``xq`` (a multiple of P·MT rows).

    Rows are cut into groups of ``group`` blocks of P·MT rows; each of ``workers`` threads
    allocates its buffers (``cap`` candidates per query) once and runs every ``workers``-th group
    through ``_search_group``. ``upper_io`` holds each query's starting ``U`` (``+inf``, or a
    known upper bound) and receives the final one.
    """
    nblocks = xq.shape[0] // (P * MT)
    block = P * MT
    ngroups = (nblocks + group - 1) // group
    for worker in prange(workers):
        acc = np.empty((MT, P, TW), np.int32)
        lower = np.empty((P, TW), np.float32)
        mask = np.empty(P, np.int64)
        upper = np.empty(group * block, np.float32)
        cand_idx = np.empty((group * block, cap), np.int32)
        cand_lo = np.empty((group * block, cap), np.float32)
        count = np.empty(group * block, np.int64)
        over = np.empty(group * block, np.bool_)
        for grp in range(worker, ngroups, workers):
            _search_group(x, codebook, norms, xq, stats, panels, offset, consts, grp * group,
                          min(grp * group + group, nblocks), chunk, upper_io, out_idx, out_dist, fallback,
                          ncand, acc, lower, mask, upper, cand_idx, cand_lo, count, over)


@njit(cache=True)
def _search_group(x, codebook, norms, xq, stats, panels, offset, consts, b0, b1, chunk, upper_io, out_idx,
                  out_dist, fallback, ncand, acc, lower, mask, upper, cand_idx, cand_lo, count, over):
    """Filters rows of blocks ``[b0, b1)`` against all panels, then re-ranks the survivors.

    The group walks the panels in L2-sized chunks (every block runs against a chunk before the
    next chunk is touched). Each query keeps the running minimum upper bound ``U`` and a buffer of
    (index, lower bound) of the centroids whose lower bound was ``≤ U`` when seen; a full buffer
    is compacted against the current ``U``, and a query whose buffer stays over 3/4 full is
    flagged in ``fallback``. At the end, each query's survivors (lower bound ≤ final ``U``) are
    re-ranked by the float64 score (``_score``), ties to the lowest index.
    """
    n = x.shape[0]
    k = codebook.shape[0]
    words = xq.shape[1]
    npanels = panels.shape[0]
    block = P * MT
    r0 = b0 * block
    rows = (b1 - b0) * block
    cap = cand_idx.shape[1]
    upper[:rows] = upper_io[r0:r0 + rows]
    count[:] = 0
    over[:] = False
    for k0 in range(0, npanels, chunk):
        for b in range(b0, b1):
            for kb in range(k0, min(k0 + chunk, npanels)):
                acc[:] = 0
                for g0 in range(0, words, GC):
                    g1 = min(g0 + GC, words)
                    for t in range(MT):
                        _dot_tile(xq, b * block + t * P, panels, kb, g0, g1, acc, t)
                for t in range(MT):
                    row0 = b * block + t * P
                    _bound_tile(acc, t, offset, consts, kb, stats, row0, upper, row0 - r0, lower, mask)
                    for p in range(P):
                        bits = mask[p]
                        i = row0 - r0 + p
                        if bits == 0 or over[i]:
                            continue
                        # Written inline: moving this loop into a helper (even inline="always") cost ~25%
                        # at D=64, where a buffer insert happens for most panels.
                        while bits != 0:  # visit only the set bits
                            lane = _lowest_bit(bits)
                            bits &= bits - 1
                            if kb * TW + lane >= k:
                                break
                            c = count[i]
                            if c == cap:
                                c = _compact(cand_idx, cand_lo, i, c, upper[i])
                                if c > cap - cap // 4:
                                    over[i] = True
                                    break
                            cand_idx[i, c] = kb * TW + lane
                            cand_lo[i, c] = lower[p, lane]
                            count[i] = c + 1
    for i in range(rows):
        row = r0 + i
        upper_io[row] = upper[i]
        if row >= n:
            continue
        limit = upper[i]
        if over[i] or not np.isfinite(limit):
            fallback[row] = True
            continue
        best = np.inf
        arg = -1
        survivors = 0
        for j in range(count[i]):
            if cand_lo[i, j] > limit:
                continue
            survivors += 1
            c = cand_idx[i, j]
            d = _score(x, row, codebook, c, norms)
            if d < best or (d == best and c < arg):
                best = d
                arg = c
        out_idx[row] = arg
        out_dist[row] = _squared_distance(x, row, codebook, arg)
        ncand[row] = survivors


@njit(cache=True)
def _bounds(xq, stats, panels, offset, consts, k, lower_out, upper_out):
    """Runs the filter's tile code over all rows and panels and records every lower bound."""
    words = xq.shape[1]
    acc = np.empty((1, P, TW), np.int32)
    lower = np.empty((P, TW), np.float32)
    mask = np.empty(P, np.int64)
    for row0 in range(0, xq.shape[0], P):
        for kb in range(panels.shape[0]):
            acc[:] = 0
            _dot_tile(xq, row0, panels, kb, 0, words, acc, 0)
            _bound_tile(acc, 0, offset, consts, kb, stats, row0, upper_out, row0, lower, mask)
            for p in range(P):
                for lane in range(TW):
                    if kb * TW + lane < k and row0 + p < lower_out.shape[0]:
                        lower_out[row0 + p, kb * TW + lane] = lower[p, lane]


def bounds(x: np.ndarray, packed: Int8Codebook) -> Tuple[np.ndarray, np.ndarray]:
    """The filter's bounds, for tests and diagnostics: ``(lower [N, K], upper [N])`` float32.

    ``lower[i, k]`` bounds ``||c_k||² − 2·x_i·c_k`` from below; ``upper[i]`` is the minimum over
    ``k`` of the upper bounds. Built from the same tile code as the search. A one-centroid
    codebook gives that centroid's upper bound.
    """
    n = x.shape[0]
    xq, stats = quantize_rows(x, -(-n // P) * P, 128)
    lower = np.empty((n, packed.k), np.float32)
    upper = np.full(xq.shape[0], np.inf, np.float32)
    _bounds(xq, stats, packed.panels, packed.offset, packed.consts, packed.k, lower, upper)
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
            d = _score(x, row, codebook, c, norms)
            if d < best:
                best = d
                arg = c
        out_idx[row] = arg
        out_dist[row] = _squared_distance(x, row, codebook, arg)


def search(x: np.ndarray, codebook: np.ndarray, packed: Int8Codebook) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Exact nearest centroid of each row of ``x`` ``[N, D]`` (float32, contiguous).

    Queries whose candidate buffer overflowed are searched again, starting from the final ``U``
    of the first pass and with room for every centroid (up to ``MAX_CAP``), so that the second
    pass only buffers the true survivors. Queries with non-finite bounds, or still too many
    survivors, get float64 brute force.

    Returns ``(index int64, squared distance float64, info)``; ``info`` has ``candidates`` (mean
    re-ranked centroids per query, over queries not brute-forced), ``second_pass_rows`` and
    ``fallback_rows`` (brute-forced queries).
    """
    n, dim = x.shape
    block = P * MT
    rows = -(-n // block) * block
    idx = np.empty(n, np.int64)
    dist = np.empty(n, np.float64)
    fallback = np.zeros(n, np.bool_)
    ncand = np.zeros(n, np.int64)
    retry = np.zeros(0, np.int64)
    if packed.finite and dim <= MAX_DIM:
        xq, stats = quantize_rows(x, rows, 128)
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
        xq2 = np.full((padded, xq.shape[1]), np.int32(-0x7F7F7F80))  # padding bytes 128: q = 0
        xq2[:m] = xq[retry]
        stats2 = np.zeros((padded, 3), np.float32)
        stats2[:m] = stats[retry]
        upper2 = np.full(padded, np.inf, np.float32)
        upper2[:m] = upper[retry]
        idx2, dist2 = np.empty(m, np.int64), np.empty(m, np.float64)
        fallback2, ncand2 = np.zeros(m, np.bool_), np.zeros(m, np.int64)
        cap = min(packed.k + TW, MAX_CAP)
        _run(np.ascontiguousarray(x[retry]), codebook, packed, xq2, stats2, 1, cap, upper2, idx2, dist2, fallback2,
             ncand2)
        idx[retry], dist[retry], ncand[retry], fallback[retry] = idx2, dist2, ncand2, fallback2
    lost = np.flatnonzero(fallback)
    if len(lost):
        _brute_force(x, codebook, packed.norms, lost, idx, dist)
        ncand[lost] = 0
    kept = n - len(lost)
    info = {"path": "int8", "candidates": float(ncand.sum() / kept) if kept else 0.0,
            "second_pass_rows": len(retry), "fallback_rows": len(lost)}
    return idx, dist, info


def _run(x, codebook, packed, xq, stats, max_group, cap, upper, idx, dist, fallback, ncand) -> None:
    """Calls ``_search`` with a group size that gives each thread several groups."""
    nblocks = xq.shape[0] // (P * MT)
    group = blocks_per_group(nblocks, max_group)
    workers = min(numba.get_num_threads(), -(-nblocks // group))
    _search(x, codebook, packed.norms, xq, stats, packed.panels, packed.offset, packed.consts, group, workers,
            packed.chunk, cap, upper, idx, dist, fallback, ncand)
