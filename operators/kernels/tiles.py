"""Register tiles shared by the nearest-centroid kernels (float32, int8), one type per ISA.

Numba's auto-vectoriser does not find a GEMM-style register blocking by itself, so the
micro-kernels emit explicit ``<lanes x T>`` vector IR from ``@intrinsic`` code generators.
A tile is ``rows`` query rows × ``vectors`` registers of ``lanes`` 32-bit lanes (one centroid
per lane), sized to the register file of its ISA:

* zmm (AVX-512, 32 registers): 6 × 4 × 16 = 384 lanes in 24 accumulators.
* ymm (AVX/AVX2, 16 registers): 6 × 2 × 8 = 96 lanes in 12 accumulators, plus 2 centroid
  vectors and a broadcast (``<16 x T>`` tiles would spill half of their 48 ymm halves); the
  two-word AVX2 int8 tile (``YmmMaddubsPairs``) is 3 × 2 × 8, as it holds 4 centroid vectors.
* xmm (SSE, 16 registers): 6 × 2 × 4.

Each tile type is its own ``NamedTuple`` class: passed to a jitted function, its class is part of
the Numba signature, so one source compiles (and caches) once per tile type, and the intrinsics
read the geometry and the multiply-add ``op`` from the argument type at compile time.
Numba's on-disk cache (``cache=True``) is keyed by the file of the compiled function, not by
this one: after editing this file, delete the ``operators/kernels/__pycache__/*.nb*`` entries.
"""

from typing import Callable, NamedTuple, Tuple

import numba
from llvmlite import ir
from numba.core import cgutils


class ZmmVnni(NamedTuple):
    """int8 ``vpdpbusd`` on zmm (AVX-512 VNNI): 64 multiply-adds per instruction."""

    lanes: int = 16
    vectors: int = 4
    rows: int = 6
    op = "vpdpbusd"


class YmmVnni(NamedTuple):
    """int8 ``vpdpbusd`` on ymm (AVX-VNNI): 32 multiply-adds per instruction."""

    lanes: int = 8
    vectors: int = 2
    rows: int = 6
    op = "vpdpbusd"


class YmmMaddubs(NamedTuple):
    """int8 ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` on ymm (AVX2): 32 multiply-adds per triple."""

    lanes: int = 8
    vectors: int = 2
    rows: int = 6
    op = "maddubs"


class YmmMaddubsPairs(NamedTuple):
    """int8 ``vpmaddubsw`` on two words, ``vpaddw``, one ``vpmaddwd`` + ``vpaddd`` (AVX2, 7-bit codes).

    3 rows × 2 vectors: 6 accumulators, 4 centroid vectors and 2 broadcasts fit the 16 ymm registers
    (6 × 2 would spill). 3 multiply instructions per 64 multiply-adds instead of 4.
    """

    lanes: int = 8
    vectors: int = 2
    rows: int = 3
    op = "maddubs2"


class ZmmFma(NamedTuple):
    """float32 FMA on zmm (AVX-512F)."""

    lanes: int = 16
    vectors: int = 4
    rows: int = 6
    op = "fma"


class YmmFma(NamedTuple):
    """float32 FMA on ymm (AVX2 / FMA3)."""

    lanes: int = 8
    vectors: int = 2
    rows: int = 6
    op = "fma"


class YmmMulAdd(NamedTuple):
    """float32 multiply, then add, on ymm (AVX without FMA)."""

    lanes: int = 8
    vectors: int = 2
    rows: int = 6
    op = "muladd"


class XmmMulAdd(NamedTuple):
    """float32 multiply, then add, on xmm (SSE)."""

    lanes: int = 4
    vectors: int = 2
    rows: int = 6
    op = "muladd"


MT = 8  # register tiles that reuse one L1-resident chunk of a panel
L1_CHUNK = 8 << 10  # bytes of an int8 panel slice walked by MT tiles at a time (with their query words, in L1)
L2_BUDGET = 1 << 20  # bytes of codebook panels walked by a group of blocks at a time
MAX_GROUP = 16  # most blocks of rows·MT rows in one group


def geometry(tile_type) -> Tuple[int, int, int, str]:
    """``(lanes, vectors, rows, op)`` of a tile type as Numba sees it (an argument's type)."""
    cls = tile_type.instance_class
    d = cls._field_defaults
    return d["lanes"], d["vectors"], d["rows"], cls.op


def panels_per_chunk(panel_bytes: int) -> int:
    """Panels in one L2-sized chunk of the codebook walk."""
    return max(1, L2_BUDGET // panel_bytes)


def blocks_per_group(nblocks: int, max_group: int = MAX_GROUP) -> int:
    """Blocks of rows·MT rows per group: several groups per thread, at most ``max_group``.

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


STEPS = {"maddubs2": 2}  # words per register-tile step, for ops that fuse several (default 1)


def multiply_add(builder, op: str, lanes: int) -> Callable:
    """``(builder, acc, xs, cs) -> acc + Σ x·c`` for a tile ``op``, on ``lanes`` 32-bit lanes.

    ``xs`` and ``cs`` hold ``STEPS.get(op, 1)`` vectors (consecutive words).

    ``fma`` / ``muladd``: float32 lanes (fused, or rounded twice). ``vpdpbusd``: each int32 lane
    adds the four products of unsigned bytes of ``x`` and signed bytes of ``c``. ``maddubs``: the
    same sum from ``vpmaddubsw`` (pairs of byte products, saturated to int16), ``vpmaddwd`` by
    ones and ``vpaddd``; exact only while each pair sum fits int16 (see ``int8_codes``).
    """
    module = builder.module
    if op in ("fma", "muladd"):
        vty = ir.VectorType(ir.FloatType(), lanes)
        if op == "muladd":
            return lambda b, acc, xs, cs: b.fadd(b.fmul(xs[0], cs[0]), acc)
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{lanes}f32")
        return lambda b, acc, xs, cs: b.call(fma, [xs[0], cs[0], acc])
    ity = ir.VectorType(ir.IntType(32), lanes)
    if op == "vpdpbusd":
        dpbusd = cgutils.get_or_insert_function(
            module, ir.FunctionType(ity, [ity, ity, ity]), f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
        )
        return lambda b, acc, xs, cs: b.call(dpbusd, [acc, xs[0], cs[0]])
    if op not in ("maddubs", "maddubs2") or lanes != 8:
        raise ValueError(f"no multiply-add {op!r} on {lanes} lanes")
    bty, wty = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16)
    maddubs = cgutils.get_or_insert_function(module, ir.FunctionType(wty, [bty, bty]), "llvm.x86.avx2.pmadd.ub.sw")
    maddwd = cgutils.get_or_insert_function(module, ir.FunctionType(ity, [wty, wty]), "llvm.x86.avx2.pmadd.wd")
    ones = ir.Constant(wty, [1] * 16)

    def update(b, acc, xs, cs):
        pairs = [b.call(maddubs, [b.bitcast(x, bty), b.bitcast(c, bty)]) for x, c in zip(xs, cs)]
        while len(pairs) > 1:
            pairs = [b.add(pairs[0], pairs[1])] + pairs[2:]
        return b.add(acc, b.call(maddwd, [pairs[0], ones]))

    return update


def register_tile(builder, vty, rows: int, vectors: int, acc_base, x_base, x_stride, c_base, lo, hi,
                  update: Callable, fresh, step: int = 1) -> None:
    """Emits ``acc[p, :] = update(acc[p, :], splat(x[p, s…]), c[s…, :])`` for s in ``[lo, hi)``, ``step`` at a time.

    The ``rows × (vectors · lanes)`` accumulator tile (``acc_base``, row-major) lives in registers
    for the whole loop: it is loaded once (or starts at zero when the i1 value ``fresh`` is set,
    which saves clearing the buffer per panel), and stored once at the end. Each step loads the
    ``vectors`` centroid vectors of ``c_base + s·width`` once and reuses them for every row, and
    each broadcast of ``x_base[p·x_stride + s]`` feeds ``vectors`` updates.

    Args:
        update: ``(builder, acc, x_vector, c_vector) -> new acc`` (from ``multiply_add``).
    """
    i64 = ir.IntType(64)
    lanes = vty.count
    width = ir.Constant(i64, lanes * vectors)
    slots = []
    for p in range(rows):
        row = []
        for w in range(vectors):
            slot = cgutils.alloca_once(builder, vty)
            ptr = vector_ptr(builder, acc_base, ir.Constant(i64, (p * vectors + w) * lanes), vty)
            builder.store(builder.select(fresh, ir.Constant(vty, None), builder.load(ptr, align=4)), slot)
            row.append(slot)
        slots.append(row)
    with cgutils.for_range_slice(builder, lo, hi, ir.Constant(i64, step), inc=True) as (s, _):
        crow = builder.gep(c_base, [builder.mul(s, width)])
        cv = [[builder.load(vector_ptr(builder, crow, ir.Constant(i64, (u * vectors + w) * lanes), vty), align=4)
               for u in range(step)] for w in range(vectors)]
        for p in range(rows):
            xrow = builder.gep(x_base, [builder.add(builder.mul(ir.Constant(i64, p), x_stride), s)])
            xv = [splat(builder, builder.load(builder.gep(xrow, [ir.Constant(i64, u)])), vty) for u in range(step)]
            for w in range(vectors):
                builder.store(update(builder, builder.load(slots[p][w]), xv, cv[w]), slots[p][w])
    for p in range(rows):
        for w in range(vectors):
            ptr = vector_ptr(builder, acc_base, ir.Constant(i64, (p * vectors + w) * lanes), vty)
            builder.store(builder.load(slots[p][w]), ptr, align=4)
