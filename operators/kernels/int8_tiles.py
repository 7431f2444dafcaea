"""The int8 filter's micro-kernels: integer dot-product tiles and their score bounds.

``dot_tile`` runs one register tile of integer multiply-adds (``vpdpbusd``, ``vpmaddubsw`` …, per
tile type) over a range of words; ``bound_tile`` turns the int32 sums into lower bounds of the
float score (stored) and upper bounds (folded into a per-query vector of running minima);
``below`` tests 64 stored lower bounds against a limit at once. See ``nearest_int8``.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels.tiles import STEPS, geometry, multiply_add, register_tile, splat, vector_ptr


@intrinsic
def dot_tile(typingctx, tile, xq, i0, panels, kb, g0, g1, acc, t):
    """acc[t, p, :] += Σ_g op(xq[i0 + p, g], panels[kb, g, :]) over g in [g0, g1), in registers.

    ``acc[t]`` is taken as zero when ``g0 == 0`` (the first slice of a panel), so it needs no
    clearing. Arrays are passed whole with indices (no slicing: a view costs two atomic refcount
    updates).
    """
    sig = types.void(tile, xq, i0, panels, kb, g0, g1, acc, t)
    lanes, vectors, rows, op = geometry(tile)

    def codegen(context, builder, signature, args):
        _, x_, i0_, c_, kb_, g0_, g1_, acc_, t_ = args
        i64 = ir.IntType(64)
        vty = ir.VectorType(ir.IntType(32), lanes)
        xa = context.make_array(signature.args[1])(context, builder, x_)
        ca = context.make_array(signature.args[3])(context, builder, c_)
        aa = context.make_array(signature.args[7])(context, builder, acc_)
        words = builder.extract_value(xa.shape, 1)
        width = ir.Constant(i64, lanes * vectors)
        xbase = builder.gep(xa.data, [builder.mul(i0_, words)])
        cbase = builder.gep(ca.data, [builder.mul(builder.mul(kb_, words), width)])
        abase = builder.gep(aa.data, [builder.mul(t_, ir.Constant(i64, rows * lanes * vectors))])
        fresh = builder.icmp_signed("==", g0_, ir.Constant(g0_.type, 0))
        register_tile(builder, vty, rows, vectors, abase, xbase, words, cbase, g0_, g1_,
                      multiply_add(builder, op, lanes), fresh, STEPS.get(op, 1))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def bound_tile(typingctx, tile, acc, t, offset, consts, kb, stats, row0, lower, lrow, lcol, hi_min, hrow):
    """Turns one tile of int32 dot products into score bounds.

    For query ``r = row0 + p`` and centroid ``k`` of panel ``kb``: ``approx = n + m·s_x·(acc[t, p] −
    offset)``, ``b = α·||e_x|| + β·||x̃|| + γ``; ``lower[lrow + p, lcol + l] = approx − b`` and
    ``hi_min[hrow + p, :] ← min(hi_min[hrow + p, :], approx + b)`` lane by lane (one vector of
    ``lanes`` running minima per query: the horizontal minimum, ``U``, is taken once per chunk).
    """
    sig = types.void(tile, acc, t, offset, consts, kb, stats, row0, lower, lrow, lcol, hi_min, hrow)
    lanes, vectors, rows, _ = geometry(tile)

    def codegen(context, builder, signature, args):
        _, acc_, t_, off_, con_, kb_, st_, row0_, lo_, lrow_, lcol_, hm_, hrow_ = args
        f32, i64 = ir.FloatType(), ir.IntType(64)
        fvty, ivty = ir.VectorType(f32, lanes), ir.VectorType(ir.IntType(32), lanes)
        width = lanes * vectors
        arr = [
            context.make_array(signature.args[j])(context, builder, a)
            for j, a in ((1, acc_), (3, off_), (4, con_), (6, st_), (8, lo_), (11, hm_))
        ]
        aa, oa, ca, sa, la, ha = arr
        kp = builder.extract_value(ca.shape, 1)
        lstride = builder.extract_value(la.shape, 1)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(fvty, [fvty, fvty, fvty]), f"llvm.fma.v{lanes}f32"
        )

        def vmin(a, b):
            return builder.select(builder.fcmp_ordered("<", a, b), a, b)

        abase = builder.gep(aa.data, [builder.mul(t_, ir.Constant(i64, rows * width))])
        k0 = builder.mul(kb_, ir.Constant(i64, width))
        cols = []
        for w in range(vectors):
            k = builder.add(k0, ir.Constant(i64, w * lanes))
            row = [builder.load(vector_ptr(builder, oa.data, k, ivty), align=4)]
            for j in range(5):
                idx = builder.add(builder.mul(ir.Constant(i64, j), kp), k)
                row.append(builder.load(vector_ptr(builder, ca.data, idx, fvty), align=4))
            cols.append(row)
        for p in range(rows):
            r = builder.add(row0_, ir.Constant(i64, p))
            srow = builder.gep(sa.data, [builder.mul(r, ir.Constant(i64, 3))])
            sx, ex, xt = (
                splat(builder, builder.load(builder.gep(srow, [ir.Constant(i64, j)])), fvty) for j in range(3)
            )
            lrow = builder.gep(la.data, [builder.add(builder.mul(builder.add(lrow_, ir.Constant(i64, p)), lstride),
                                                     lcol_)])
            hptr = vector_ptr(builder, ha.data, builder.mul(builder.add(hrow_, ir.Constant(i64, p)),
                                                           ir.Constant(i64, lanes)), fvty)
            best = builder.load(hptr, align=4)
            for w in range(vectors):
                off, m, n, alpha, beta, gamma = cols[w]
                av = builder.load(vector_ptr(builder, abase, ir.Constant(i64, p * width + w * lanes), ivty), align=4)
                dot = builder.sitofp(builder.sub(av, off), fvty)
                approx = builder.call(fma, [builder.fmul(dot, m), sx, n])
                bound = builder.call(fma, [ex, alpha, builder.call(fma, [xt, beta, gamma])])
                builder.store(builder.fsub(approx, bound), vector_ptr(builder, lrow, ir.Constant(i64, w * lanes), fvty),
                              align=4)
                best = vmin(builder.fadd(approx, bound), best)
            builder.store(best, hptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def below(typingctx, lower, row, col, limit):
    """Bit ``j`` set when ``lower[row, col + j] ≤ limit``, for ``j < 64`` (eight 8-float compares)."""
    sig = types.int64(lower, row, col, limit)

    def codegen(context, builder, signature, args):
        lo_, row_, col_, limit_ = args
        i64 = ir.IntType(64)
        fvty = ir.VectorType(ir.FloatType(), 8)
        la = context.make_array(signature.args[0])(context, builder, lo_)
        base = builder.gep(la.data, [builder.add(builder.mul(row_, builder.extract_value(la.shape, 1)), col_)])
        lim = splat(builder, limit_, fvty)
        bits = ir.Constant(i64, 0)
        for v in range(8):
            lo = builder.load(vector_ptr(builder, base, ir.Constant(i64, 8 * v), fvty), align=4)
            hit = builder.bitcast(builder.fcmp_ordered("<=", lo, lim), ir.IntType(8))
            bits = builder.or_(bits, builder.shl(builder.zext(hit, i64), ir.Constant(i64, 8 * v)))
        return bits

    return sig, codegen
