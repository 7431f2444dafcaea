"""Feature codec: quantise a feature tensor, entropy-code it with rANS, wrap it in a bitstream.

Two ways to run:

* **Shared tables** (``CodecTables``, ``operators/compression/tables.py``): quantiser parameters
  and per-channel priors calibrated once on a sample of the data (``fit_tables``, or the Beam
  combine in ``transforms/compression``) for every rate the job may use (``u2``…``u8``, ``vq256``…). The
  stream only names the tables by their 8-byte id, so the rate can change per record with no
  reloading, and the decoder refuses tables that are not bit-identical to the encoder's.
* **Inline** (no tables for the requested bit depth): the record calibrates its own uniform
  quantiser and a per-tensor prior, and both travel in the stream (6 bytes per channel plus
  2 bytes per symbol of the alphabet): self-contained, at some cost in rate.

``decode(encode(x, r))`` equals the quantiser's own dequantised values exactly (same dtype,
same bits, escaped outliers verbatim); damaged, truncated or crafted streams raise
``BitstreamError`` (never another error type), and a stream whose header asks for more than the
``decoded_bytes`` budget is refused from the header, before any allocation.
Small tensors use fewer interleaved states (one per ~1024 symbols, at most ``n_states``) since
every state costs 8 bytes to flush.
"""

import math
from typing import List, Optional

import numpy as np

from operators.compression.bitstream import BitstreamError, StreamBudgetExceeded, StreamHeader, pack, unpack
from operators.compression.priors import EntropyPrior, count_symbols
from operators.compression.quantize import (
    FLOAT_DTYPES,
    Codebook,
    UniformParams,
    calibrate_uniform,
    channel_layout,
    check_bits,
    dequantize_codebook,
    dequantize_uniform,
    feature_stats,
    quantize_codebook,
    quantize_uniform,
)
from operators.compression.tables import CodecTables, RateTables, coded_axis, rate_key
from operators.kernels.rans import RansError, check_states, rans_decode, rans_encode
from schemas.budgets import DEFAULT_BUDGETS

INLINE_PRECISION = 16


class UnknownTablesError(BitstreamError):
    """The stream names shared tables this codec was not given."""


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
        decoded_bytes: Budget: largest tensor (and symbol array) :meth:`decode` may produce.
    """

    def __init__(
        self,
        tables: Optional[CodecTables] = None,
        channel_axis: Optional[int] = 0,
        granularity: str = "channel",
        outliers: str = "escape",
        clip_sigmas: Optional[float] = None,
        n_states: int = 8,
        decoded_bytes: int = DEFAULT_BUDGETS.decoded_bytes,
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
        self.decoded_bytes = decoded_bytes

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
        axis = coded_axis(x.ndim, self.channel_axis if entry is None else entry.channel_axis)
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
            StreamBudgetExceeded: If the header asks for more than ``decoded_bytes``.
        """
        header, sections = unpack(data)
        self._check_budget(header)
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

    def _check_budget(self, header: StreamHeader) -> None:
        """Refuses, from the header alone, a decode that would allocate more than the budget."""
        tensor = math.prod(header.shape) * np.dtype(header.dtype).itemsize
        symbols = header.n_symbols * 2  # rans_decode returns uint8 or uint16 symbols
        if max(tensor, symbols) > self.decoded_bytes:
            raise StreamBudgetExceeded(
                "decoded_bytes", self.decoded_bytes,
                f"the stream declares a {header.dtype} tensor of shape {header.shape} ({tensor} bytes) "
                f"and {header.n_symbols} symbols",
            )

    def _decode(self, header: StreamHeader, sections: List[bytes], entry: Optional[RateTables]) -> np.ndarray:
        check_states(header.n_states)
        shape, axis, dtype = header.shape, header.channel_axis, np.dtype(header.dtype)
        size = math.prod(shape)
        if entry is not None and axis != coded_axis(len(shape), entry.channel_axis):
            raise ValueError(f"channel axis {axis} does not match the tables' axis {entry.channel_axis}")
        if header.kind == "codebook":
            if entry is None or not isinstance(entry.quantizer, Codebook):
                raise ValueError("codebook stream without shared codebook tables")
            if axis is None:
                raise ValueError("codebook stream without a channel axis")
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
            freqs, precision, used = EntropyPrior.parse(sections[1])
            if freqs.shape[0] != 1 or precision != INLINE_PRECISION or used != len(sections[1]):
                raise ValueError(f"inline prior must be one {INLINE_PRECISION}-bit table filling its section, got "
                                 f"{freqs.shape[0]} tables of {precision} bits in {used} of {len(sections[1])} bytes")
            prior = EntropyPrior(freqs, precision)
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
