"""LLVM IR pieces shared by the register-tiled nearest-centroid kernels (float32 FMA, int8 VNNI).

Numba's auto-vectoriser does not find a GEMM-style register blocking by itself, so the
micro-kernels emit explicit ``<16 x T>`` vector IR from ``@intrinsic`` code generators.
Numba's on-disk cache (``cache=True``) is keyed by the file of the compiled function, not by
this one: after editing this file, delete the ``__pycache__/nearest*.nb*`` entries.
"""

from typing import Callable

import numba
from llvmlite import ir
from numba.core import cgutils

LANES = 16  # 32-bit lanes in one AVX-512 register
VECTORS = 4  # registers per tile row: a panel of 64 centroids
TW = LANES * VECTORS
P = 6  # query rows per register tile: P × VECTORS accumulators
MT = 8  # register tiles that reuse one L1-resident chunk of a panel
L2_BUDGET = 1 << 20  # bytes of codebook panels walked by a group of blocks at a time
MAX_GROUP = 16  # most blocks of P·MT rows in one group


def panels_per_chunk(panel_bytes: int) -> int:
    """Panels in one L2-sized chunk of the codebook walk."""
    return max(1, L2_BUDGET // panel_bytes)


def blocks_per_group(nblocks: int, max_group: int = MAX_GROUP) -> int:
    """Blocks of P·MT rows per group: several groups per thread, at most ``max_group``.

    A group runs every one of its blocks against a chunk of panels before the next chunk, so a
    large codebook is read from memory once per group rather than once per block.
    """
    return int(min(max_group, max(1, nblocks // (4 * numba.get_num_threads()))))


def vector_ptr(builder, base, offset, vty):
    """Pointer to a ``vty`` vector at element ``offset`` of ``base``."""
    return builder.bitcast(builder.gep(base, [offset]), vty.as_pointer())


def splat(builder, value, vty):
    """Broadcasts a scalar to every lane of ``vty``."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(i32, 0))
    lanes = ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, ir.Constant(vty, None), lanes)


def register_tile(builder, vty, rows: int, acc_base, x_base, x_stride, c_base, lo, hi,
                  update: Callable) -> None:
    """Emits ``acc[p, :] = update(acc[p, :], splat(x[p, s]), c[s, :])`` for s in ``[lo, hi)``.

    The ``rows × TW`` accumulator tile (``acc_base``, row-major) lives in registers for the whole
    loop: it is loaded once, and stored once at the end. Each step loads the ``VECTORS`` centroid
    vectors of ``c_base + s·TW`` once and reuses them for every row, and each broadcast of
    ``x_base[p·x_stride + s]`` feeds ``VECTORS`` updates.

    Args:
        update: ``(builder, acc, x_vector, c_vector) -> new acc`` (an FMA, a ``vpdpbusd`` …).
    """
    i64 = ir.IntType(64)
    width = ir.Constant(i64, TW)
    slots = []
    for p in range(rows):
        row = []
        for w in range(VECTORS):
            slot = cgutils.alloca_once(builder, vty)
            ptr = vector_ptr(builder, acc_base, ir.Constant(i64, p * TW + w * LANES), vty)
            builder.store(builder.load(ptr, align=4), slot)
            row.append(slot)
        slots.append(row)
    with cgutils.for_range_slice(builder, lo, hi, ir.Constant(i64, 1), inc=True) as (s, _):
        crow = builder.gep(c_base, [builder.mul(s, width)])
        cv = [builder.load(vector_ptr(builder, crow, ir.Constant(i64, w * LANES), vty), align=4)
              for w in range(VECTORS)]
        for p in range(rows):
            xs = builder.load(builder.gep(x_base, [builder.add(builder.mul(ir.Constant(i64, p), x_stride), s)]))
            xv = splat(builder, xs, vty)
            for w in range(VECTORS):
                builder.store(update(builder, builder.load(slots[p][w]), xv, cv[w]), slots[p][w])
    for p in range(rows):
        for w in range(VECTORS):
            ptr = vector_ptr(builder, acc_base, ir.Constant(i64, p * TW + w * LANES), vty)
            builder.store(builder.load(slots[p][w]), ptr, align=4)
