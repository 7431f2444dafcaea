"""Per-row int8 codes for the exact int8 filter: query quantisation and the packed codebook.

Every centroid and every query is quantised per row: ``s = max|v|/levels``, ``q = round(v/s)``,
``ṽ = s·q``, ``e = v − ṽ``; ``||ṽ||`` and ``||e||`` are computed in float64 and rounded up.
Centroid codes are signed bytes. Query codes enter the multiply-add as the unsigned operand
``u = q + bias``; the bias is removed afterwards with the per-centroid ``offset = bias·Σ q_c``,
so ``Σ u·q_c − offset = Σ q_x·q_c`` exactly in int32. Per tile op (``code_format``):

* ``vpdpbusd`` (AVX-512 VNNI, AVX-VNNI): centroids ``|q| ≤ 127``, queries ``|q| ≤ 127``,
  ``bias = 128``, ``u ∈ [1, 255]``. Each int32 lane adds four byte products, no saturation.
* ``maddubs`` (AVX2, ``D > PAIRS_MAX_DIM``): centroids ``|q| ≤ 127``, queries ``|q| ≤ 63``,
  ``bias = 64``. ``vpmaddubsw`` adds two products into a *saturating* int16; with ``u ≤ 127``
  a pair is at most ``2·127·127 = 32258 < 2^15``, so it never saturates.
* ``maddubs2`` (AVX2, ``D ≤ PAIRS_MAX_DIM``): centroids ``|q| ≤ 63`` too, so a pair is at most
  ``2·127·63 = 16002`` and two pairs (two words) add up in int16 (``≤ 32004``) before one
  ``vpmaddwd`` widens them. Words come in multiples of two (padding codes are zero).

A coarser grid only widens the error bound, i.e. leaves more candidates for the re-rank; it
pays where the filter dominates (small ``D``) and not where the candidates do (``D = 768``).
Either way ``|Σ u·q_c| ≤ D·255·127 < 2^31`` for ``D ≤ MAX_DIM``, so the int32 sums never overflow.
"""

from typing import NamedTuple, Tuple

import numpy as np
from numba import njit, prange

from operators.kernels import exact
from operators.kernels.bits import reinterpret
from operators.kernels.tiles import panels_per_chunk

EPS = 2.0**-16  # relative slack for float32 rounding (see ``Int8Codebook``)
UP = 1.0 + 2.0**-20  # float64 → float32 conversions of norms are rounded up with this factor
MAX_DIM = 66000  # Σ u·q with u ≤ 255, |q| ≤ 127 fits int32 for D·255·127 < 2^31
PAIRS_MAX_DIM = 384  # AVX2 takes the ``maddubs2`` tile up to this D (measured crossover, see docs)


class CodeFormat(NamedTuple):
    """How a tile's multiply-add wants its codes: query ``levels`` and ``bias``, centroid ``levels``,
    and words (4 codes each) in multiples of ``step``."""

    query_levels: int
    query_bias: int
    centroid_levels: int
    step: int = 1


def code_format(op: str) -> CodeFormat:
    """The code format of tile ``op`` (``vpdpbusd``, ``maddubs`` or ``maddubs2``)."""
    return {"vpdpbusd": CodeFormat(127, 128, 127), "maddubs": CodeFormat(63, 64, 127),
            "maddubs2": CodeFormat(63, 64, 63, 2)}[op]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _quantize_rows(x, rows, levels, bias, q, stats):
    """Per row: scale ``s = max|x|/levels``, ``q = round(x/s)`` (+ ``bias``, stored as uint8 bytes).

    ``stats[i] = (s, ||x − s·q||·UP, ||s·q||·UP)``. The norms are float64 sums of exact terms
    (``s·q`` and ``x − s·q`` are exact in float64), so reordering them (``reassoc``) changes them
    by far less than the ``UP`` margin. Any ``q`` is valid: the bound only uses the ``q`` stored.
    Rows ``≥ len(x)`` and dims ``≥ D`` are padding: ``q = 0`` (stored as ``bias``), zero stats.
    """
    n, dim = x.shape
    top = np.float32(levels)
    for i in prange(rows):
        for j in range(dim if i < n else 0, q.shape[1]):
            q[i, j] = bias
        if i >= n:
            stats[i, 0] = 0.0
            stats[i, 1] = 0.0
            stats[i, 2] = 0.0
            continue
        peak = np.int32(0)  # max |x| as the integer max of the bit patterns (vectorises; NaN stays NaN)
        for j in range(dim):
            peak = max(peak, np.int32(reinterpret(x[i, j]) & np.int32(0x7FFFFFFF)))
        amax = reinterpret(peak)
        s = np.float32(amax / top)
        if not s >= np.float32(2.0**-100):  # zero / tiny rows: x̃ = 0, e = x (1/s stays finite)
            s = np.float32(1.0)
        inv = np.float32(1.0) / s
        s64 = np.float64(s)
        err = 0.0
        approx = 0.0
        for j in range(dim):
            v = min(top, max(-top, np.rint(x[i, j] * inv)))
            r = s64 * np.float64(v)
            e = np.float64(x[i, j]) - r
            err += e * e
            approx += r * r
            q[i, j] = np.int32(v) + bias
        stats[i, 0] = s
        stats[i, 1] = np.float32(np.sqrt(err) * UP)
        stats[i, 2] = np.float32(np.sqrt(approx) * UP)


def quantize_rows(x: np.ndarray, rows: int, levels: int, bias: int, step: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Quantises ``x`` ``[N, D]`` float32 to ``[rows, words]`` int32 words of 4 codes (``q + bias``
    as bytes), ``words`` = ``ceil(D/4)`` rounded up to a multiple of ``step``.

    Returns ``(words, stats)``; ``stats`` is ``[rows, 3]`` float32 ``(scale, ||e||, ||x̃||)`` with
    ``x̃ = scale·q``, ``|q| ≤ levels`` and ``e = x − x̃`` (norms rounded up).
    """
    words = -(-x.shape[1] // (4 * step)) * step
    q = np.empty((rows, words * 4), np.uint8)
    stats = np.empty((rows, 3), np.float32)
    _quantize_rows(x, rows, levels, bias, q, stats)
    return q.view(np.int32), stats


def padding_word(bias: int) -> np.int32:
    """The int32 word of four query codes ``q = 0`` (bytes equal to ``bias``)."""
    return np.array([bias] * 4, np.uint8).view(np.int32)[0]


class Int8Codebook:
    """Codebook packed for the int8 filter of one register tile type.

    Attributes:
        tile: The tile instance (``tiles.ZmmVnni()``, ``tiles.YmmVnni()``, ``tiles.YmmMaddubs()``).
        codes: The ``CodeFormat`` of the tile's multiply-add.
        k: Number of centroids ``K`` (``K'`` is ``K`` rounded up to a multiple of the tile width).
        norms: ``[K]`` float64 ``||c||²`` for the re-rank (``exact.squared_norms``).
        panels: ``[K'/width, words, width]`` int32; word ``[b, g, l]`` holds the int8 codes of
            dims ``4g..4g+3`` of centroid ``width·b + l`` (the signed operand).
        offset: ``[K']`` int32 ``bias·Σq_c``: removes the bias that makes query codes unsigned.
        consts: ``[5, K']`` float32 rows ``m = −2·s_c``, ``n = ||c||²``, ``α``, ``β``, ``γ``.
        finite: False when some bound constant overflows float32 (every query then falls back).
        chunk: Panels per L2-sized chunk of the codebook walk.

    With ``C1 = ||c̃||``, ``C2 = ||e_c||`` (both rounded up), the score bound for a query with
    ``X1 = ||x̃||``, ``X2 = ||e_x||`` is ``b = α·X2 + β·X1 + γ`` where ``α = 2(C1 + C2)(1 + ε)``,
    ``β = 2·C2 + 2ε(C1 + C2)`` and ``γ = ε·n``, i.e. ``b = 2E + ε(n + 2(X1 + X2)(C1 + C2))``
    with ``E = X2·C1 + X1·C2 + X2·C2``. Padding centroids get ``n = +inf`` and ``α = β = γ = 0``
    so that both of their bounds are ``+inf``.
    """

    def __init__(self, codebook: np.ndarray, tile):
        k = codebook.shape[0]
        width = tile.lanes * tile.vectors
        kp = -(-k // width) * width
        self.tile = tile
        self.codes = code_format(type(tile).op)
        self.k = k
        q, stats = quantize_rows(codebook, kp, self.codes.centroid_levels, 0, self.codes.step)
        words = q.shape[1]
        codes = q.view(np.int8).reshape(kp, words * 4)
        self.panels = np.ascontiguousarray(
            codes.reshape(kp // width, width, words, 4).transpose(0, 2, 1, 3)
        ).view(np.int32).reshape(kp // width, words, width)
        self.offset = (self.codes.query_bias * codes.sum(1, dtype=np.int64)).astype(np.int32)
        c1 = stats[:k, 2].astype(np.float64)
        c2 = stats[:k, 1].astype(np.float64)
        consts = np.zeros((5, kp), np.float32)
        consts[0] = -2.0 * stats[:, 0]
        consts[1, k:] = np.inf
        self.norms = exact.squared_norms(codebook)
        with np.errstate(over="ignore"):  # a norm beyond float32 range: ``finite`` is False
            consts[1, :k] = self.norms
            consts[2, :k] = 2.0 * (c1 + c2) * (1.0 + EPS) * UP
            consts[3, :k] = (2.0 * c2 + 2.0 * EPS * (c1 + c2)) * UP
            consts[4, :k] = EPS * consts[1, :k].astype(np.float64) * UP
        self.consts = consts
        self.finite = bool(np.isfinite(consts[:, :k]).all())
        self.chunk = panels_per_chunk(self.panels[0].nbytes)
