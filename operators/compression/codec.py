"""Feature codec: quantise a feature tensor, entropy-code it with rANS, wrap it in a bitstream.

Two ways to run:

* **Shared tables** (``CodecTables``): quantiser parameters and per-channel priors calibrated
  once on a sample of the data (``fit_tables`` here, or the Beam combine in
  ``transforms/compress.py``) for every rate the job may use (``u2``…``u8``, ``vq256``…). The
  stream only names the tables by their 8-byte id, so the rate can change per record with no
  reloading, and the decoder refuses tables that are not bit-identical to the encoder's.
* **Inline** (no tables for the requested bit depth): the record calibrates its own uniform
  quantiser and a per-tensor prior, and both travel in the stream (6 bytes per channel plus
  2 bytes per symbol of the alphabet): self-contained, at some cost in rate.

``decode(encode(x, r))`` equals the quantiser's own dequantised values exactly (same dtype,
same bits, escaped outliers verbatim); damaged or truncated streams raise ``BitstreamError``.
Small tensors use fewer interleaved states (one per ~1024 symbols, at most ``n_states``) since
every state costs 8 bytes to flush.
"""

import hashlib
import math
import struct
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from operators.compression.bitstream import BitstreamError, StreamHeader, pack, unpack
from operators.compression.priors import DEFAULT_PRECISION, EntropyPrior, count_symbols
from operators.compression.quantize import (
    FLOAT_DTYPES,
    Codebook,
    FeatureStats,
    UniformParams,
    calibrate_uniform,
    channel_layout,
    channel_vectors,
    check_bits,
    dequantize_codebook,
    dequantize_uniform,
    feature_stats,
    fit_codebook,
    merge_stats,
    quantize_codebook,
    quantize_uniform,
)
from operators.kernels.rans import RansError, check_states, rans_decode, rans_encode

Quantizer = Union[UniformParams, Codebook]
INLINE_PRECISION = 16
_TABLE = struct.Struct("<bII")
_BANK_MAGIC = b"MBCT"


class UnknownTablesError(BitstreamError):
    """The stream names shared tables this codec was not given."""


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


def _axis(x: np.ndarray, channel_axis: Optional[int]) -> Optional[int]:
    """Normalised channel axis; 0-d and 1-d tensors are always coded per tensor."""
    if channel_axis is None or x.ndim < 2:
        return None
    return channel_axis % x.ndim


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
    axis = _axis(x, channel_axis)
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
    axis = _axis(np.asarray(samples[0]), channel_axis)
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


class FeatureCodec:
    """Encodes and decodes single feature tensors at a rate chosen per call.

    Args:
        tables: Calibrated tables; rates missing from them are coded inline (uniform only).
        channel_axis: Channel axis for inline per-channel quantisers (None: per tensor;
            tensors of rank < 2 are always per tensor).
        granularity: Inline quantiser granularity, ``"channel"`` or ``"tensor"``.
        outliers: ``"escape"`` (exact outliers) or ``"clip"``.
        clip_sigmas: Inline clipping range (mean ± this many std); None uses min/max.
        n_states: Interleaved rANS states (power of two).
    """

    def __init__(
        self,
        tables: Optional[CodecTables] = None,
        channel_axis: Optional[int] = 0,
        granularity: str = "channel",
        outliers: str = "escape",
        clip_sigmas: Optional[float] = None,
        n_states: int = 8,
    ):
        if granularity not in ("channel", "tensor"):
            raise ValueError(f"granularity must be 'channel' or 'tensor', got {granularity!r}")
        if outliers not in ("escape", "clip"):
            raise ValueError(f"outliers must be 'escape' or 'clip', got {outliers!r}")
        check_states(n_states)
        self.tables = tables or CodecTables([])
        self.channel_axis = channel_axis
        self.granularity = granularity
        self.outliers = outliers
        self.clip_sigmas = clip_sigmas
        self.n_states = n_states

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"features must be float16/32/64, got {x.dtype}")
        return np.require(x, requirements="C")

    def _inline_params(self, x: np.ndarray, bits: int, axis: Optional[int]) -> UniformParams:
        stats_axis = axis if self.granularity == "channel" else None
        return calibrate_uniform(feature_stats(x, stats_axis), bits, self.clip_sigmas)

    def encode(self, features: np.ndarray, bits: Optional[int] = None, codebook_size: Optional[int] = None) -> bytes:
        """Compresses one tensor at ``bits`` (uniform) or ``codebook_size`` (VQ).

        Raises:
            ValueError: For unsupported dtypes/bit depths, a codebook size with no tables,
                or features whose channel count does not match the tables.
        """
        x = self._check_input(features)
        key = rate_key(bits, codebook_size)
        if bits is not None:
            check_bits(bits)
        entry = self.tables.by_key.get(key)
        if entry is None and codebook_size is not None:
            raise ValueError(f"no codebook of size {codebook_size} in the tables (have {self.tables.keys()})")
        axis = _axis(x, self.channel_axis if entry is None else entry.channel_axis)
        if entry is not None:
            self._check_channels(x, entry, axis)
        if entry is not None and isinstance(entry.quantizer, Codebook):
            symbols = quantize_codebook(x, entry.quantizer, axis)
            sections = [self._code(symbols.ravel(), entry.prior, symbols.shape[1])]
            return self._pack(x, "codebook", codebook_size, symbols.size, entry.id, sections, axis)
        params = entry.quantizer if entry is not None else self._inline_params(x, bits, axis)
        symbols, escapes = quantize_uniform(x, params, axis, self.outliers)
        escape_bytes = escapes.astype(escapes.dtype.newbyteorder("<")).tobytes()
        if entry is not None:
            _, inner = channel_layout(x.shape, axis)
            sections = [escape_bytes, self._code(symbols.ravel(), entry.prior, inner)]
            return self._pack(x, "uniform", bits, symbols.size, entry.id, sections, axis)
        prior = EntropyPrior.from_counts(count_symbols(symbols, 1, symbols.size, params.n_symbols), INLINE_PRECISION)
        sections = [params.to_bytes(), prior.to_bytes(), escape_bytes, self._code(symbols.ravel(), prior, 0)]
        return self._pack(x, "uniform", bits, symbols.size, b"", sections, axis)

    def _check_channels(self, x: np.ndarray, entry: RateTables, axis: Optional[int]) -> None:
        channels = 1 if axis is None else x.shape[axis]
        quantizer = entry.quantizer
        if isinstance(quantizer, Codebook):
            expected = quantizer.centroids.shape[0] * quantizer.centroids.shape[2]
        else:
            expected = max(quantizer.scale.size, entry.prior.n_channels)
        if expected > 1 and channels != expected:
            raise ValueError(f"tables {entry.key} are for {expected} channels, features have {channels}")

    def _code(self, symbols: np.ndarray, prior: EntropyPrior, inner: int) -> bytes:
        if prior.n_channels == 1:
            inner = 0
        words = rans_encode(symbols, prior.cdf, prior.precision, inner, self._states_for(symbols.size))
        return words.astype("<u4").tobytes()

    def _states_for(self, n_symbols: int) -> int:
        states = 1
        while states * 2 <= min(self.n_states, n_symbols // 1024):
            states *= 2
        return states

    def _pack(self, x, kind, rate, n_symbols, tables_id, sections, axis) -> bytes:
        header = StreamHeader(
            dtype=x.dtype.name,
            shape=tuple(x.shape),
            channel_axis=axis,
            kind=kind,
            rate=int(rate),
            n_states=self._states_for(int(n_symbols)),
            n_symbols=int(n_symbols),
            tables_id=tables_id,
        )
        return pack(header, sections)

    def decode(self, data: bytes) -> np.ndarray:
        """Decompresses a stream from ``encode``.

        Raises:
            BitstreamError: If the stream is foreign, truncated, damaged or inconsistent.
            UnknownTablesError: If it was coded with tables this codec does not have.
        """
        header, sections = unpack(data)
        entry = None
        if header.tables_id:
            entry = self.tables.by_id.get(header.tables_id)
            if entry is None:
                raise UnknownTablesError(
                    f"stream was coded with tables {header.tables_id.hex()} ({header.kind} rate "
                    f"{header.rate}); load the table file used by the encoder"
                )
        try:
            return self._decode(header, sections, entry)
        except (RansError, ValueError, IndexError) as error:
            if isinstance(error, BitstreamError):
                raise
            raise BitstreamError(f"stream payload is inconsistent: {error}") from error

    def _decode(self, header: StreamHeader, sections: List[bytes], entry: Optional[RateTables]) -> np.ndarray:
        check_states(header.n_states)
        shape, axis, dtype = header.shape, header.channel_axis, np.dtype(header.dtype)
        size = math.prod(shape)
        if header.kind == "codebook":
            if entry is None or not isinstance(entry.quantizer, Codebook):
                raise ValueError("codebook stream without shared codebook tables")
            groups = entry.quantizer.centroids.shape[0]
            positions = size // max(shape[axis], 1) if size else 0
            if header.n_symbols != groups * positions or len(sections) != 1:
                raise ValueError("codebook stream has the wrong symbol or section count")
            symbols = self._uncode(sections[0], header, entry.prior, positions)
            return dequantize_codebook(symbols.reshape(groups, positions), entry.quantizer, shape, axis, dtype)
        if header.n_symbols != size:
            raise ValueError(f"{header.n_symbols} symbols for a tensor of {size} elements")
        if entry is not None:
            if len(sections) != 2:
                raise ValueError("shared-table uniform stream needs 2 sections")
            params, prior, (escape_bytes, words) = entry.quantizer, entry.prior, sections
            _, inner = channel_layout(shape, axis)
        else:
            if len(sections) != 4:
                raise ValueError("inline uniform stream needs 4 sections")
            params = UniformParams.from_bytes(sections[0])
            prior = EntropyPrior.from_bytes(sections[1])
            escape_bytes, words, inner = sections[2], sections[3], 0
        if params.bits != header.rate or prior.n_symbols != params.n_symbols:
            raise ValueError("quantiser, prior and header disagree on the bit depth")
        if len(escape_bytes) % dtype.itemsize:
            raise ValueError("escape section is not a whole number of values")
        escapes = np.frombuffer(escape_bytes, dtype.newbyteorder("<")).astype(dtype)
        symbols = self._uncode(words, header, prior, inner).reshape(shape)
        return dequantize_uniform(symbols, escapes, params, axis, dtype)

    def _uncode(self, words: bytes, header: StreamHeader, prior: EntropyPrior, inner: int) -> np.ndarray:
        if len(words) % 4:
            raise ValueError("rANS section is not a whole number of words")
        if prior.n_channels == 1:
            inner = 0
        if header.n_symbols > max_symbols(prior, len(words) // 4, header.n_states):
            raise ValueError(f"{header.n_symbols} symbols cannot fit in {len(words)} bytes of rANS words")
        array = np.frombuffer(words, "<u4").astype(np.uint32)
        return rans_decode(array, header.n_symbols, prior.cdf, prior.precision, inner, header.n_states, prior.lut)


def max_symbols(prior: EntropyPrior, n_words: int, n_states: int) -> int:
    """Most symbols ``n_words`` rANS words can hold under ``prior``.

    Every symbol costs at least ``-log2(max freq / 2**precision)`` bits (to within 0.1% at
    64-bit states) and the final states hold at most 64 bits each, so a stream claiming more
    symbols is damaged or hostile and is refused before any allocation.
    """
    most_likely = float(prior.freqs.max()) / (1 << prior.precision)
    min_bits = -math.log2(most_likely) if most_likely < 1 else 0.0
    if min_bits == 0.0:
        return 1 << 62
    return int((32 * n_words + 64 * n_states) / (0.99 * min_bits)) + 16


def bits_per_element(stream: bytes, n_elements: int) -> float:
    """Stream size in bits divided by the number of feature elements."""
    return 8.0 * len(stream) / max(n_elements, 1)
