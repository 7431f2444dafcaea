"""float64 dot products, norms and distances in one fixed summation order, on every host.

The re-rank of the int8 paths and the float64 brute force decide the final argmin with these, so
they must round identically on AVX2 and AVX-512 hosts: no ``fastmath`` reassociation (which lets
LLVM pick a vector width, and with it a summation order, per target). ``dot`` keeps 16 partial
sums, lane ``l`` adding the products of dims ``e ≡ l (mod 16)`` in increasing ``e`` (four
``<4 x double>`` registers, explicit IR), combines them as a fixed tree and then adds the tail
dims in order. Without ``fastmath`` LLVM neither reorders nor fuses these operations, and x86-64
rounds every float64 operation the same way, so the results are bit-identical on every host.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.kernels.tiles import vector_ptr

LANES = 16  # partial sums of ``dot``


@intrinsic
def _dot_lanes(typingctx, a, i, b, j):
    """Σ over dims ``e < 16·floor(D/16)`` of ``a[i, e]·b[j, e]`` in float64, in the fixed lane order."""
    sig = types.float64(a, i, b, j)

    def codegen(context, builder, signature, args):
        a_, b_ = args[0], args[2]
        i_, j_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 3))
        f32, f64, i64 = ir.FloatType(), ir.DoubleType(), ir.IntType(64)
        v4f, v4d = ir.VectorType(f32, 4), ir.VectorType(f64, 4)
        aa = context.make_array(signature.args[0])(context, builder, a_)
        ba = context.make_array(signature.args[2])(context, builder, b_)
        dim = builder.extract_value(aa.shape, 1)
        arow = builder.gep(aa.data, [builder.mul(i_, dim)])
        brow = builder.gep(ba.data, [builder.mul(j_, dim)])
        slots = [cgutils.alloca_once_value(builder, ir.Constant(v4d, [0.0] * 4)) for _ in range(4)]
        steps = builder.udiv(dim, ir.Constant(i64, LANES))
        with cgutils.for_range(builder, steps) as loop:
            e0 = builder.mul(loop.index, ir.Constant(i64, LANES))
            for r, slot in enumerate(slots):
                e = builder.add(e0, ir.Constant(i64, 4 * r))
                av = builder.fpext(builder.load(vector_ptr(builder, arow, e, v4f), align=4), v4d)
                bv = builder.fpext(builder.load(vector_ptr(builder, brow, e, v4f), align=4), v4d)
                builder.store(builder.fadd(builder.load(slot), builder.fmul(av, bv)), slot)
        acc = [builder.load(slot) for slot in slots]
        v = builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3]))
        lane = [builder.extract_element(v, ir.Constant(ir.IntType(32), k)) for k in range(4)]
        return builder.fadd(builder.fadd(lane[0], lane[1]), builder.fadd(lane[2], lane[3]))

    return sig, codegen


@njit(cache=True, inline="always")
def dot(a, i, b, j):
    """``a[i] · b[j]`` in float64 (rows of contiguous float32 matrices), fixed order."""
    dim = a.shape[1]
    total = _dot_lanes(a, i, b, j)
    for e in range(dim - dim % LANES, dim):
        total += np.float64(a[i, e]) * np.float64(b[j, e])
    return total


@njit(cache=True, inline="always")
def squared_distance(a, i, b, j):
    """``||a[i] − b[j]||²`` in float64, fixed order."""
    dim = a.shape[1]
    a0 = a1 = a2 = a3 = 0.0
    e = 0
    while e + 4 <= dim:
        d0 = np.float64(a[i, e]) - np.float64(b[j, e])
        d1 = np.float64(a[i, e + 1]) - np.float64(b[j, e + 1])
        d2 = np.float64(a[i, e + 2]) - np.float64(b[j, e + 2])
        d3 = np.float64(a[i, e + 3]) - np.float64(b[j, e + 3])
        a0 += d0 * d0
        a1 += d1 * d1
        a2 += d2 * d2
        a3 += d3 * d3
        e += 4
    total = (a0 + a1) + (a2 + a3)
    while e < dim:
        d = np.float64(a[i, e]) - np.float64(b[j, e])
        total += d * d
        e += 1
    return total


@njit(cache=True, inline="always")
def score(x, row, codebook, c, norms):
    """``||c||² − 2 x·c`` in float64: ``||x − c||²`` less ``||x||²``, without cancelling against it."""
    return norms[c] - 2.0 * dot(x, row, codebook, c)


@njit(parallel=True, cache=True)
def _squared_norms(a, out):
    for i in prange(a.shape[0]):
        out[i] = dot(a, i, a, i)


def squared_norms(a: np.ndarray) -> np.ndarray:
    """``[N]`` float64 ``||a[i]||²`` of a contiguous float32 ``[N, D]`` matrix, fixed order."""
    out = np.empty(a.shape[0], np.float64)
    _squared_norms(a, out)
    return out
