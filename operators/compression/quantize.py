"""Feature quantisers: uniform (per tensor or per channel, 2–8 bits) and codebook (VQ).

Uniform: ``q = round(x / scale) + zero_point`` on ``2**bits`` levels. Values that fall off the
grid (beyond the calibrated clipping range, or not finite) are *escaped*: they get the extra
symbol ``2**bits`` and their original value is kept verbatim, so
``dequantize_uniform(*quantize_uniform(x))`` is exact on escaped elements and within
``scale / 2`` elsewhere. With ``outliers="clip"`` finite outliers saturate instead.

Codebook: the feature vector along the channel axis at every position is split into ``G``
groups of ``d`` channels, and each group is replaced by the index of its nearest centroid
(product quantisation). Indices are laid out ``[G, positions]`` so a per-group prior applies.

Decoding only ever computes ``(q - zero_point) * scale`` in float32 (or looks up float32
centroids) and casts to the original dtype, so encoder and decoder agree bit for bit.
"""

import importlib
import importlib.util
import struct
from typing import NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import DTypeLike

MIN_BITS, MAX_BITS = 2, 8
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_UNIFORM = struct.Struct("<BI")
_CODEBOOK = struct.Struct("<III")


def check_bits(bits: int) -> None:
    """Raises ``ValueError`` unless ``bits`` is a supported uniform bit depth."""
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def channel_layout(shape: Tuple[int, ...], channel_axis: Optional[int]) -> Tuple[int, int]:
    """Returns ``(channels, inner)``: elements ``i`` of the flat array belong to channel
    ``(i // inner) % channels`` (``(1, size)`` without a channel axis)."""
    size = int(np.prod(shape, dtype=np.int64))
    if channel_axis is None:
        return 1, max(size, 1)
    return int(shape[channel_axis]), max(int(np.prod(shape[channel_axis + 1 :], dtype=np.int64)), 1)


def _per_channel(values: np.ndarray, ndim: int, channel_axis: Optional[int]) -> np.ndarray:
    """Reshapes a ``[C]`` parameter so it broadcasts against a tensor of rank ``ndim``."""
    if channel_axis is None or values.size == 1:
        return values.reshape(())
    return values.reshape((-1,) + (1,) * (ndim - channel_axis - 1))


class FeatureStats(NamedTuple):
    """Mergeable per-channel statistics of finite feature values (float64 ``[C]`` each)."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray


def feature_stats(x: np.ndarray, channel_axis: Optional[int]) -> FeatureStats:
    """Per-channel (or, with ``channel_axis=None``, per-tensor) statistics of ``x``."""
    x = np.asarray(x, np.float64)
    if channel_axis is None:
        flat = x.reshape(1, x.size)
    else:
        channels = x.shape[channel_axis]
        flat = np.moveaxis(x, channel_axis, 0).reshape(channels, x.size // channels if channels else 0)
    finite = np.isfinite(flat)
    values = np.where(finite, flat, 0.0)
    return FeatureStats(
        count=finite.sum(axis=1).astype(np.float64),
        total=values.sum(axis=1),
        total_sq=(values * values).sum(axis=1),
        minimum=np.where(finite, flat, np.inf).min(axis=1, initial=np.inf),
        maximum=np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf),
    )


def merge_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
    """Combines the statistics of two disjoint samples (associative and commutative)."""
    return FeatureStats(
        a.count + b.count,
        a.total + b.total,
        a.total_sq + b.total_sq,
        np.minimum(a.minimum, b.minimum),
        np.maximum(a.maximum, b.maximum),
    )


class UniformParams(NamedTuple):
    """Uniform quantiser parameters.

    Attributes:
        bits: Bit depth (2..8); symbols ``0..2**bits - 1`` plus escape symbol ``2**bits``.
        scale: float32 ``[C]`` step sizes (``C == 1`` means per tensor).
        zero_point: int32 ``[C]`` symbol that represents 0.0.
    """

    bits: int
    scale: np.ndarray
    zero_point: np.ndarray

    @property
    def n_symbols(self) -> int:
        """Alphabet size including the escape symbol."""
        return (1 << self.bits) + 1

    def to_bytes(self) -> bytes:
        """Serialises the parameters (6 bytes per channel)."""
        return (
            _UNIFORM.pack(self.bits, self.scale.size)
            + self.scale.astype("<f4").tobytes()
            + self.zero_point.astype("<i2").tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "UniformParams":
        """Inverse of ``to_bytes``; raises ``ValueError`` on malformed input."""
        if len(data) < _UNIFORM.size:
            raise ValueError("uniform quantiser parameters are truncated")
        bits, channels = _UNIFORM.unpack_from(data)
        check_bits(bits)
        if len(data) != _UNIFORM.size + 6 * channels:
            raise ValueError(f"uniform quantiser parameters for {channels} channels have the wrong size")
        scale = np.frombuffer(data, "<f4", channels, _UNIFORM.size).astype(np.float32)
        zero_point = np.frombuffer(data, "<i2", channels, _UNIFORM.size + 4 * channels).astype(np.int32)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError("uniform quantiser scales must be finite and positive")
        return cls(int(bits), scale, zero_point)


def calibrate_uniform(stats: FeatureStats, bits: int, clip_sigmas: Optional[float] = None) -> UniformParams:
    """Chooses scale and zero point covering ``[min, max]`` (and 0) per channel.

    Args:
        stats: From ``feature_stats`` / ``merge_stats``.
        bits: Bit depth.
        clip_sigmas: If set, the range is narrowed to ``mean ± clip_sigmas * std``; values
            outside it are escaped (or clipped) at quantisation time.
    """
    check_bits(bits)
    lo = np.where(np.isfinite(stats.minimum), stats.minimum, 0.0)
    hi = np.where(np.isfinite(stats.maximum), stats.maximum, 0.0)
    if clip_sigmas is not None:
        n = np.maximum(stats.count, 1.0)
        mean = stats.total / n
        std = np.sqrt(np.maximum(stats.total_sq / n - mean * mean, 0.0))
        lo = np.maximum(lo, mean - clip_sigmas * std)
        hi = np.minimum(hi, mean + clip_sigmas * std)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(np.float32)
    scale = np.where((scale > 0) & np.isfinite(scale), scale, np.float32(1.0)).astype(np.float32)
    zero_point = np.clip(np.round(-lo / scale.astype(np.float64)), 0, levels).astype(np.int32)
    return UniformParams(bits, scale, zero_point)


def quantize_uniform(
    x: np.ndarray, params: UniformParams, channel_axis: Optional[int], outliers: str = "escape"
) -> Tuple[np.ndarray, np.ndarray]:
    """Quantises ``x`` to symbols.

    Args:
        x: Float tensor.
        params: Parameters; per channel if ``params.scale.size > 1``.
        channel_axis: Axis the per-channel parameters run along.
        outliers: ``"escape"`` keeps off-grid values verbatim; ``"clip"`` saturates finite
            ones (non-finite values are always escaped).

    Returns:
        ``(symbols, escapes)``: uint16 symbols shaped like ``x`` and the escaped values (in
        ``x``'s dtype, flat C order).
    """
    if outliers not in ("escape", "clip"):
        raise ValueError(f"outliers must be 'escape' or 'clip', got {outliers!r}")
    x = np.asarray(x)
    levels = (1 << params.bits) - 1
    scale = _per_channel(params.scale.astype(np.float64), x.ndim, channel_axis)
    zero_point = _per_channel(params.zero_point.astype(np.float64), x.ndim, channel_axis)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.round(x.astype(np.float64) / scale) + zero_point
        if outliers == "clip":
            q = np.clip(q, 0, levels)
        on_grid = (q >= 0) & (q <= levels) & np.isfinite(x)
    symbols = np.where(on_grid, q, levels + 1).astype(np.uint16)
    return symbols, np.ascontiguousarray(x[~on_grid])


def dequantize_uniform(
    symbols: np.ndarray, escapes: np.ndarray, params: UniformParams, channel_axis: Optional[int], dtype: DTypeLike
) -> np.ndarray:
    """Inverse of ``quantize_uniform`` up to rounding: float32 grid values, escapes verbatim."""
    scale = _per_channel(params.scale, symbols.ndim, channel_axis)
    zero_point = _per_channel(params.zero_point.astype(np.float32), symbols.ndim, channel_axis)
    out = np.array((symbols.astype(np.float32) - zero_point) * scale, dtype=dtype)
    escaped = symbols > (1 << params.bits) - 1
    if int(escaped.sum()) != escapes.size:
        raise ValueError(f"{int(escaped.sum())} escape symbols but {escapes.size} escaped values")
    out[escaped] = escapes
    return out


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for each row of ``vectors``.

    Large problems use the fused Numba kernel ``operators.kernels.nearest.assign`` when it is
    installed; small ones (where its thread start-up dominates) and installs without it use
    NumPy via ``|c|² - 2 x·c`` (no ``|x|²`` term: it does not change the argmin).
    """
    if _KERNEL is not None and vectors.shape[0] * centroids.shape[0] >= _KERNEL_MIN_WORK:
        return _KERNEL.assign(vectors, centroids)[0]
    c2 = np.einsum("kd,kd->k", centroids, centroids)
    return np.argmin(c2[None, :] - 2.0 * (vectors @ centroids.T), axis=1)


_KERNEL_MIN_WORK = 1 << 18
_KERNEL = (
    importlib.import_module("operators.kernels.nearest")
    if importlib.util.find_spec("operators.kernels.nearest") is not None
    else None
)


class Codebook(NamedTuple):
    """Product-quantisation codebook.

    Attributes:
        centroids: float32 ``[G, K, d]``: ``G`` channel groups of ``d`` channels, ``K`` codes each.
    """

    centroids: np.ndarray

    @property
    def size(self) -> int:
        """Codes per group (``K``)."""
        return self.centroids.shape[1]

    def to_bytes(self) -> bytes:
        """Serialises the centroids."""
        return _CODEBOOK.pack(*self.centroids.shape) + self.centroids.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Codebook":
        """Inverse of ``to_bytes``; raises ``ValueError`` on malformed input."""
        if len(data) < _CODEBOOK.size:
            raise ValueError("codebook is truncated")
        groups, size, dim = _CODEBOOK.unpack_from(data)
        if len(data) != _CODEBOOK.size + 4 * groups * size * dim:
            raise ValueError(f"codebook of shape {(groups, size, dim)} has the wrong size")
        centroids = np.frombuffer(data, "<f4", groups * size * dim, _CODEBOOK.size)
        return cls(centroids.reshape(groups, size, dim).astype(np.float32))


def channel_vectors(x: np.ndarray, channel_axis: int) -> np.ndarray:
    """``[positions, C]`` float32 view of ``x``: one row per position, channels as columns."""
    return np.moveaxis(np.asarray(x, np.float32), channel_axis, -1).reshape(-1, x.shape[channel_axis])


def fit_codebook(vectors: np.ndarray, size: int, groups: int, iterations: int = 15, seed: int = 0) -> Codebook:
    """k-means (k-means++ seeding, Lloyd iterations) per channel group.

    Args:
        vectors: ``[N, C]`` training vectors (``channel_vectors`` of sample features).
        size: Codes per group ``K`` (≤ 65535).
        groups: Number of groups ``G``; must divide ``C``.
        iterations: Lloyd iterations.
        seed: Seed for the seeding and for re-seeding empty clusters.
    """
    vectors = np.asarray(vectors, np.float32)
    vectors = vectors[np.all(np.isfinite(vectors), axis=1)]
    n, channels = vectors.shape
    if channels % groups:
        raise ValueError(f"groups={groups} does not divide {channels} channels")
    if not 2 <= size <= 65535:
        raise ValueError(f"codebook size must be in 2..65535, got {size}")
    if n == 0:
        raise ValueError("no finite training vectors to fit a codebook")
    rng = np.random.default_rng(seed)
    dim = channels // groups
    centroids = np.empty((groups, size, dim), np.float32)
    for g in range(groups):
        data = vectors[:, g * dim : (g + 1) * dim]
        chosen = [int(rng.integers(n))]
        dist = ((data - data[chosen[0]]) ** 2).sum(axis=1)
        for _ in range(1, size):
            total = float(dist.sum())
            pick = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
            chosen.append(pick)
            dist = np.minimum(dist, ((data - data[pick]) ** 2).sum(axis=1))
        cent = data[chosen].copy()
        for _ in range(iterations):
            assign = nearest_centroid(data, cent)
            sums = np.zeros_like(cent)
            np.add.at(sums, assign, data)
            counts = np.bincount(assign, minlength=size)
            empty = counts == 0
            cent = np.where(empty[:, None], data[rng.integers(n, size=size)], sums / np.maximum(counts, 1)[:, None])
        centroids[g] = cent
    return Codebook(centroids)


def quantize_codebook(x: np.ndarray, codebook: Codebook, channel_axis: int) -> np.ndarray:
    """Returns uint16 indices ``[G, positions]`` of the nearest code per channel group.

    Non-finite vectors map to code 0 (VQ has no escape path; use the uniform quantiser for
    data with NaN/inf).
    """
    vectors = channel_vectors(x, channel_axis)
    groups, _, dim = codebook.centroids.shape
    if vectors.shape[1] != groups * dim:
        raise ValueError(f"codebook covers {groups * dim} channels, features have {vectors.shape[1]}")
    vectors = np.where(np.isfinite(vectors), vectors, 0.0).astype(np.float32)
    indices = np.empty((groups, vectors.shape[0]), np.uint16)
    for g in range(groups):
        indices[g] = nearest_centroid(np.ascontiguousarray(vectors[:, g * dim : (g + 1) * dim]), codebook.centroids[g])
    return indices


def dequantize_codebook(
    indices: np.ndarray, codebook: Codebook, shape: Tuple[int, ...], channel_axis: int, dtype: DTypeLike
) -> np.ndarray:
    """Inverse of ``quantize_codebook``: centroid values in a tensor of ``shape``."""
    groups, _, dim = codebook.centroids.shape
    vectors = np.concatenate([codebook.centroids[g][indices[g].astype(np.int64)] for g in range(groups)], axis=1)
    moved = list(shape[:channel_axis]) + list(shape[channel_axis + 1 :]) + [shape[channel_axis]]
    return np.moveaxis(vectors.reshape(moved), -1, channel_axis).astype(dtype)
