"""Exact nearest-centroid assignment on the CPU (the hot loop of every k-means / VQ tokenizer).

``assign(x, codebook)`` returns, for each row of ``x``, the index of the nearest centroid and the
squared distance to it, without ever building the ``N × K`` distance matrix. Only the score
``s(x, c) = ||c||² − 2 x·c`` (``||x − c||²`` minus a per-row constant) matters for the argmin.

The kernel is chosen once per process from what Numba compiles for (``cpu.isa_path``):

* ``avx512_vnni``, ``avx_vnni``, ``avx2``: the exact int8 filter + float64 re-rank
  (``nearest_int8``; codes in ``int8_codes``) on the register tile of that ISA (zmm ``vpdpbusd``,
  ymm ``vpdpbusd``, ymm ``vpmaddubsw``; ``int8_tile``). Its result is the argmin of the float64
  score, ties to the lowest index: the same index on every one of these hosts.
* ``other`` (no AVX2), ``D > int8_codes.MAX_DIM``, or ``PackedCodebook(..., method="fp32")``:
  float32 register-tiled brute force (``nearest_fp32``), exact up to float32 rounding.

``docs/kernels.md`` has the figures per host class and the list of host-dependent outputs.
"""

from typing import Dict, Optional, Tuple, Union

import numpy as np

from operators.kernels import cpu, nearest_fp32, nearest_int8
from operators.kernels.device import resolve
from operators.kernels.int8_codes import MAX_DIM, PAIRS_MAX_DIM, Int8Codebook
from operators.kernels.tiles import (
    XmmMulAdd, YmmFma, YmmMaddubs, YmmMaddubsPairs, YmmMulAdd, YmmVnni, ZmmFma, ZmmVnni,
)

METHODS = ("auto", "int8", "fp32")
INT8_PATHS = ("avx512_vnni", "avx_vnni", "avx2")


def int8_tile(isa: str, dim: int):
    """The int8 register tile of an ISA path for ``dim`` features (AVX2: 7-bit pairs up to ``PAIRS_MAX_DIM``)."""
    if isa == "avx512_vnni":
        return ZmmVnni()
    if isa == "avx_vnni":
        return YmmVnni()
    return YmmMaddubsPairs() if dim <= PAIRS_MAX_DIM else YmmMaddubs()


def fp32_tile(isa: str):
    """The float32 register tile for an ISA path (for ``other``: the widest the target allows)."""
    if isa == "avx512_vnni":
        return ZmmFma()
    features = cpu.compile_features()
    if isa in INT8_PATHS or {"avx", "fma"} <= features:
        return YmmFma()
    return YmmMulAdd() if "avx" in features else XmmMulAdd()


def isa_path() -> str:
    """The ISA path ``assign`` takes in this process (``cpu.isa_path``)."""
    return cpu.isa_path()


class PackedCodebook:
    """A codebook packed once for repeated assignment calls.

    Args:
        codebook: ``[K, D]`` centroids (cast to contiguous float32).
        method: ``"int8"`` (int8 filter + float64 re-rank), ``"fp32"`` (float32 brute force) or
            ``"auto"``: ``"int8"`` unless the ISA path is ``"other"`` or ``D > MAX_DIM``.
        isa: ISA path whose kernels to use (default: ``cpu.isa_path()``); any path the Numba
            target supports (``cpu.supports``) can be chosen, e.g. to test the AVX2 kernel on an
            AVX-512 host.

    Attributes:
        codebook: The ``[K, D]`` float32 centroids.
        method: The resolved method.
        isa: The ISA path.
        packed: The ``Int8Codebook`` or ``nearest_fp32.Fp32Codebook`` packing.
    """

    def __init__(self, codebook: np.ndarray, method: str = "auto", isa: Optional[str] = None):
        c = np.ascontiguousarray(codebook, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
            raise ValueError(f"codebook must be [K, D] with K > 0 and D > 0, got shape {c.shape}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        isa = cpu.isa_path() if isa is None else isa
        if not cpu.supports(isa):
            raise ValueError(f"ISA path {isa!r} needs CPU features that Numba does not compile for here")
        int8 = isa in INT8_PATHS and c.shape[1] <= MAX_DIM
        if method == "int8" and not int8:
            raise ValueError(f"method='int8' needs an int8 ISA path (not {isa!r}) and D <= {MAX_DIM}; "
                             "use method='auto' or 'fp32'")
        self.codebook = c
        self.isa = isa
        self.method = "int8" if method == "int8" or (method == "auto" and int8) else "fp32"
        if self.method == "int8":
            self.packed = Int8Codebook(c, int8_tile(isa, c.shape[1]))
        else:
            self.packed = nearest_fp32.Fp32Codebook(c, fp32_tile(isa))


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

    The dict has ``path`` (``"int8"`` or ``"fp32"``), ``isa`` (the ISA path), ``tile`` (the
    register tile type) and, for ``"int8"``, ``candidates`` (mean survivors of the int8 filter per
    query, scored in float32 before the few that can still win get the float64 score),
    ``second_pass_rows`` (queries filtered twice because their candidate buffer overflowed) and
    ``fallback_rows`` (queries answered by float64 brute force).
    """
    packed = codebook if isinstance(codebook, PackedCodebook) else PackedCodebook(codebook)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.codebook.shape[1]:
        raise ValueError(f"x must be [N, {packed.codebook.shape[1]}], got shape {x.shape}")
    info = {"path": packed.method, "isa": packed.isa, "tile": type(packed.packed.tile).__name__}
    if packed.method == "int8":
        idx, dist, stats = nearest_int8.search(x, packed.codebook, packed.packed)
        with np.errstate(over="ignore"):  # distances beyond float32 range become inf
            return idx, dist.astype(np.float32), {**info, **stats}
    return (*nearest_fp32.assign(x, packed.packed), info)


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
