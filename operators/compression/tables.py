"""Shared codec tables: per-rate quantisers and entropy priors, calibrated once and named by id.

``fit_tables`` calibrates a bank on in-memory samples (the Beam combine in
``transforms/compression`` builds the same bank from ``calibrate_quantizers``,
``record_histograms`` and ``build_tables``). A :class:`CodecTables` bank is shipped next to the
compressed data; streams name the :class:`RateTables` they used by its 8-byte id.
"""

import hashlib
import struct
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from operators.compression.priors import DEFAULT_PRECISION, EntropyPrior, count_symbols
from operators.compression.quantize import (
    Codebook,
    FeatureStats,
    UniformParams,
    calibrate_uniform,
    channel_layout,
    channel_vectors,
    feature_stats,
    fit_codebook,
    merge_stats,
    quantize_codebook,
    quantize_uniform,
)

Quantizer = Union[UniformParams, Codebook]
_TABLE = struct.Struct("<bII")
_BANK_MAGIC = b"MBCT"


def rate_key(bits: Optional[int] = None, codebook_size: Optional[int] = None) -> str:
    """Name of a rate: ``"u4"`` for 4-bit uniform, ``"vq256"`` for a 256-code codebook."""
    if (bits is None) == (codebook_size is None):
        raise ValueError("give exactly one of bits or codebook_size")
    return f"u{bits}" if bits is not None else f"vq{codebook_size}"


class RateTables(NamedTuple):
    """Calibrated quantiser and prior for one rate.

    Attributes:
        quantizer: ``UniformParams`` or ``Codebook``.
        prior: Per-channel prior over the quantiser's symbols.
        channel_axis: Axis of the feature tensor the channels run along.
    """

    quantizer: Quantizer
    prior: EntropyPrior
    channel_axis: Optional[int]

    @property
    def key(self) -> str:
        """The rate's name (see ``rate_key``)."""
        if isinstance(self.quantizer, Codebook):
            return rate_key(codebook_size=self.quantizer.size)
        return rate_key(bits=self.quantizer.bits)

    @property
    def id(self) -> bytes:
        """8-byte hash of quantiser, prior and layout."""
        return hashlib.blake2b(self.to_bytes(), digest_size=8).digest()

    def to_bytes(self) -> bytes:
        """Serialises the tables."""
        quantizer = self.quantizer.to_bytes()
        prior = self.prior.to_bytes()
        kind = 1 if isinstance(self.quantizer, Codebook) else 0
        axis = -1 if self.channel_axis is None else self.channel_axis
        return _TABLE.pack(axis, len(quantizer), len(prior)) + bytes([kind]) + quantizer + prior

    @classmethod
    def from_bytes(cls, data: bytes) -> Tuple["RateTables", int]:
        """Parses tables from the start of ``data``; returns them and the bytes used."""
        axis, n_quantizer, n_prior = _TABLE.unpack_from(data)
        start = _TABLE.size + 1
        kind = data[_TABLE.size]
        body = data[start : start + n_quantizer]
        quantizer = Codebook.from_bytes(body) if kind == 1 else UniformParams.from_bytes(body)
        prior = EntropyPrior.from_bytes(data[start + n_quantizer : start + n_quantizer + n_prior])
        return cls(quantizer, prior, None if axis < 0 else axis), start + n_quantizer + n_prior


class CodecTables:
    """A bank of ``RateTables`` addressable by rate key and by id."""

    def __init__(self, entries: Iterable[RateTables]):
        self.by_key: Dict[str, RateTables] = {}
        self.by_id: Dict[bytes, RateTables] = {}
        for entry in entries:
            self.by_key[entry.key] = entry
            self.by_id[entry.id] = entry

    def keys(self) -> List[str]:
        """Available rate keys."""
        return sorted(self.by_key)

    def to_bytes(self) -> bytes:
        """Serialises the bank (ship it next to the compressed data)."""
        parts = [self.by_key[k].to_bytes() for k in self.keys()]
        return _BANK_MAGIC + struct.pack("<I", len(parts)) + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CodecTables":
        """Inverse of ``to_bytes``; raises ``ValueError`` if ``data`` is not a table bank."""
        if data[:4] != _BANK_MAGIC:
            raise ValueError("not a mediabeam codec table file (bad magic)")
        try:
            (count,) = struct.unpack_from("<I", data, 4)
            pos, entries = 8, []
            for _ in range(count):
                entry, used = RateTables.from_bytes(data[pos:])
                entries.append(entry)
                pos += used
        except struct.error as error:
            raise ValueError(f"codec table file is truncated: {error}") from error
        return cls(entries)

    def save(self, path: str) -> None:
        """Writes the bank to ``path``."""
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "CodecTables":
        """Reads a bank written by ``save``."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())


def coded_axis(ndim: int, channel_axis: Optional[int]) -> Optional[int]:
    """Normalised channel axis of a tensor of rank ``ndim``; ranks 0 and 1 are always coded per tensor."""
    if channel_axis is None or ndim < 2:
        return None
    return channel_axis % ndim


def calibrate_quantizers(
    stats: FeatureStats, bits: Sequence[int], clip_sigmas: Optional[float] = None
) -> Dict[str, UniformParams]:
    """Uniform quantisers for each bit depth from merged ``feature_stats``."""
    return {rate_key(bits=b): calibrate_uniform(stats, b, clip_sigmas) for b in bits}


def record_histograms(
    x: np.ndarray, quantizers: Dict[str, Quantizer], channel_axis: Optional[int], outliers: str = "escape"
) -> Dict[str, np.ndarray]:
    """Per-channel symbol counts of one record under each quantiser (summed over a sample
    they become the priors)."""
    x = np.asarray(x)
    axis = coded_axis(x.ndim, channel_axis)
    out = {}
    for key, quantizer in quantizers.items():
        if isinstance(quantizer, Codebook):
            symbols = quantize_codebook(x, quantizer, axis)
            out[key] = count_symbols(symbols, symbols.shape[0], symbols.shape[1], quantizer.size)
        else:
            symbols, _ = quantize_uniform(x, quantizer, axis, outliers)
            channels, inner = channel_layout(x.shape, axis)
            out[key] = count_symbols(symbols, channels, inner, quantizer.n_symbols)
    return out


def build_tables(
    quantizers: Dict[str, Quantizer],
    counts: Dict[str, np.ndarray],
    channel_axis: Optional[int],
    precision: int = DEFAULT_PRECISION,
) -> CodecTables:
    """Assembles a bank from quantisers and their summed histograms."""
    return CodecTables(
        RateTables(quantizers[key], EntropyPrior.from_counts(counts[key], precision), channel_axis)
        for key in quantizers
    )


def fit_tables(
    samples: Sequence[np.ndarray],
    bits: Sequence[int] = (2, 4, 6, 8),
    codebook_sizes: Sequence[int] = (),
    channel_axis: Optional[int] = 0,
    granularity: str = "channel",
    clip_sigmas: Optional[float] = None,
    codebook_groups: int = 1,
    outliers: str = "escape",
    precision: int = DEFAULT_PRECISION,
    seed: int = 0,
) -> CodecTables:
    """Calibrates quantisers and fits priors on in-memory samples (same shape each).

    Args:
        samples: Feature tensors of single records.
        bits: Uniform bit depths to prepare.
        codebook_sizes: Codebook sizes to prepare (k-means over channel vectors).
        channel_axis: Channel axis of each record.
        granularity: ``"channel"`` or ``"tensor"`` uniform quantisers.
        clip_sigmas: Clip the uniform range at mean ± this many std (outliers escape).
        codebook_groups: Channel groups per codebook (product quantisation).
        outliers: ``"escape"`` or ``"clip"``.
        precision: Prior precision in bits.
        seed: k-means seed.
    """
    if granularity not in ("channel", "tensor"):
        raise ValueError(f"granularity must be 'channel' or 'tensor', got {granularity!r}")
    axis = coded_axis(np.asarray(samples[0]).ndim, channel_axis)
    stats_axis = axis if granularity == "channel" else None
    stats = None
    for x in samples:
        s = feature_stats(x, stats_axis)
        stats = s if stats is None else merge_stats(stats, s)
    quantizers: Dict[str, Quantizer] = dict(calibrate_quantizers(stats, bits, clip_sigmas))
    if codebook_sizes:
        if axis is None:
            raise ValueError("codebooks need channel vectors: give a channel_axis and features of rank >= 2")
        vectors = np.concatenate([channel_vectors(np.asarray(x), axis) for x in samples])
        for size in codebook_sizes:
            quantizers[rate_key(codebook_size=size)] = fit_codebook(vectors, size, codebook_groups, seed=seed)
    counts: Dict[str, np.ndarray] = {}
    for x in samples:
        for key, c in record_histograms(x, quantizers, axis, outliers).items():
            counts[key] = counts[key] + c if key in counts else c
    return build_tables(quantizers, counts, axis, precision)
