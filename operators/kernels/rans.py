"""Interleaved rANS entropy coder in Numba, with per-channel integer CDF tables.

Layout: 64-bit states, 32-bit renormalisation words, lower bound ``L = 2**31`` and CDFs of
``precision`` bits (at most 24). Element ``i`` of the flat symbol array is coded with state
``i % n_states`` and the CDF of channel ``(i // inner) % n_channels``, so a ``[C, H, W]`` tensor
with ``inner = H * W`` gets one table per channel without a per-element channel array.
Several states are interleaved so their dependency chains overlap in the CPU pipeline.

Symbols are encoded last to first (rANS is a stack) and words are written back to front, so
the decoder reads words and produces symbols front to back. The stream starts with the final
encoder states (high word, then low word, state 0 first). Decoding checks the stream length
and finally that every state is back at ``L`` and every word was used: a damaged stream raises
``RansError`` rather than returning plausible garbage.

**The byte format does not depend on the CPU.** Both directions use only 64-bit integer
arithmetic (no floating point, no ISA-specific instructions), so every host writes the same
words and reads any host's streams.

Speed (the loops are written for any x86-64 with AVX2 or without; none of it needs AVX-512):

* Encoder: the quotient ``x // freq`` comes from a precomputed 64-bit reciprocal (Alverson's
  method, as in ryg_rans' ``rans64``): ``q = mulhi64(x, rcp) >> shift`` is exact for every
  state the encoder can hold, and ``C(s, x) = x + bias + q·(2^precision − freq)``. One
  ``mul`` (64×64→128) replaces a 64-bit division, and no float conversion is needed (converting
  between uint64 and float64 is a branchy multi-instruction sequence without AVX-512). The
  per-symbol constants sit in one 32-byte record, and the word store and renormalisation
  shift are branchless.
* Decoder: the slot → symbol lookup (``decode_lut``) gives, per ``2^(precision − lut_bits)``
  slots, the first symbol of that bucket and where its interval ends, so most symbols need one
  table read instead of two dependent ones.
* Both loops index with uint64 values: with signed indices Numba adds a negative-index check to
  every table access.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

RANS_L = np.uint64(1 << 31)
MAX_PRECISION = 24
MAX_STATES = 64
LUT_BITS = 12  # default ``decode_lut`` size; the decoder reads the size from the table it gets


class RansError(ValueError):
    """Raised when a rANS stream cannot be decoded (damaged, truncated or mismatched tables)."""


def check_tables(cdf: np.ndarray, precision: int) -> None:
    """Checks that ``cdf`` ([C, S + 1] uint32) is a valid table set of ``precision`` bits."""
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be in 1..{MAX_PRECISION}, got {precision}")
    if cdf.ndim != 2 or cdf.shape[1] < 2 or cdf.dtype != np.uint32:
        raise ValueError(f"cdf must be uint32 [channels, symbols + 1], got {cdf.dtype} {cdf.shape}")
    if np.any(cdf[:, 0] != 0) or np.any(cdf[:, -1] != (1 << precision)):
        raise ValueError(f"every cdf row must run from 0 to 2**{precision}")
    if np.any(np.diff(cdf.astype(np.int64), axis=1) < 1):
        raise ValueError("every symbol needs a frequency of at least 1")


def check_states(n_states: int) -> None:
    """Checks that ``n_states`` is a power of two in ``1..MAX_STATES``."""
    if not 1 <= n_states <= MAX_STATES or n_states & (n_states - 1):
        raise ValueError(f"n_states must be a power of two in 1..{MAX_STATES}, got {n_states}")


def decode_lut(cdf: np.ndarray, precision: int, lut_bits: int = LUT_BITS) -> np.ndarray:
    """Builds the decoder's slot → symbol lookup ([C, 2**min(precision, lut_bits)] uint64).

    Entry ``j`` covers slots ``[j·w, (j + 1)·w)`` with ``w = 2**(precision − lut_bits)``: its low
    32 bits hold the symbol ``s`` whose interval contains slot ``j·w``, its high 32 bits
    ``cdf[s + 1]``, the end of that interval. A slot below that end decodes to ``s`` without a
    further table read; the decoder walks forward from ``s`` otherwise.
    """
    lut_bits = min(precision, lut_bits)
    slots = np.arange(1 << lut_bits, dtype=np.int64) << (precision - lut_bits)
    lut = np.empty((cdf.shape[0], 1 << lut_bits), np.uint64)
    for c in range(cdf.shape[0]):
        row = cdf[c].astype(np.int64)
        sym = np.searchsorted(row, slots, side="right") - 1
        lut[c] = (row[sym + 1].astype(np.uint64) << np.uint64(32)) | sym.astype(np.uint64)
    return lut


@intrinsic
def _mulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64 (one ``mul`` instruction)."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        wide = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(wide, ir.Constant(i128, 64)), i64)

    return sig, codegen


@njit(cache=True, nogil=True)
def _encode_table(cdf, n_used, precision):
    """Per (channel, symbol): ``[x_max, rcp, bias, cmpl | shift << 32]`` (uint64).

    ``x_max = freq << (63 − precision)`` is the renormalisation threshold. For ``freq ≥ 2``,
    ``rcp = ceil(2^(63 + b) / freq)`` with ``b = ceil(log2 freq)`` and ``shift = b − 1`` give
    ``mulhi64(x, rcp) >> shift = x // freq`` for every ``x < 2^63`` (Alverson), and
    ``bias = start``. For ``freq = 1``, ``rcp = 2^64 − 1`` and ``shift = 0`` give ``q = x − 1`` and
    ``bias = start + 2^precision − 1``, so that ``x + bias + q·cmpl = x·2^precision + start``.
    """
    n_symbols = cdf.shape[1] - 1
    table = np.empty((n_used, n_symbols, 4), np.uint64)
    total = np.uint64(1) << np.uint64(precision)
    for c in range(n_used):
        for s in range(n_symbols):
            start = np.uint64(cdf[c, s])
            freq = np.uint64(cdf[c, s + 1]) - start
            table[c, s, 0] = freq << np.uint64(63 - precision)
            if freq < 2:
                rcp = np.uint64(0xFFFFFFFFFFFFFFFF)
                shift = np.uint64(0)
                bias = start + total - np.uint64(1)
            else:
                b = np.uint64(0)
                while freq > (np.uint64(1) << b):
                    b += np.uint64(1)
                high = np.uint64(1) << (b + np.uint64(31))
                t1 = high // freq
                low = freq - np.uint64(1) + ((high % freq) << np.uint64(32))
                rcp = low // freq + (t1 << np.uint64(32))
                shift = b - np.uint64(1)
                bias = start
            table[c, s, 1] = rcp
            table[c, s, 2] = bias
            table[c, s, 3] = (total - freq) | (shift << np.uint64(32))
    return table


@njit(cache=True, nogil=True)
def _encode(symbols, cdf, inner, n_channels, precision, n_states):
    """Encodes ``symbols``; uint64 indices throughout (see ``_decode``)."""
    n = symbols.shape[0]
    out = np.empty(n + 2 * n_states + 1, np.uint32)
    pos = np.uint64(out.shape[0])
    states = np.full(n_states, RANS_L, np.uint64)
    n_rows = (n + inner - 1) // inner
    state_mask = np.uint64(n_states - 1)
    table = _encode_table(cdf, min(n_channels, n_rows), precision).ravel()
    row_length = np.uint64(4 * (cdf.shape[1] - 1))
    low32 = np.uint64(0xFFFFFFFF)
    one = np.uint64(1)
    for r in range(n_rows - 1, -1, -1):
        base = np.uint64(r % n_channels) * row_length
        lo = np.uint64(r * inner)
        i = np.uint64(min(r * inner + inner, n))
        while i > lo:
            i -= one
            e = base + (np.uint64(symbols[i]) << np.uint64(2))
            k = i & state_mask
            x = states[k]
            spill = np.uint64(x >= table[e])
            out[pos - one] = np.uint32(x & low32)
            pos -= spill
            x >>= spill << np.uint64(5)
            packed = table[e + np.uint64(3)]
            q = _mulhi(x, table[e + one]) >> (packed >> np.uint64(32))
            states[k] = x + table[e + np.uint64(2)] + q * (packed & low32)
    for k in range(n_states - 1, -1, -1):
        pos -= one
        out[pos] = np.uint32(states[k] & low32)
        pos -= one
        out[pos] = np.uint32(states[k] >> np.uint64(32))
    return out[pos:].copy()


@njit(cache=True, nogil=True)
def _decode(words, n, cdf, lut, inner, n_channels, precision, n_states, out):
    """Returns 0 on success, 1 if the stream ran out, 2 if it did not end cleanly.

    ``cdf`` and ``lut`` come flattened (row ``c`` starts at ``c·row_length``). Every index is
    uint64: signed indices would make Numba add a negative-index wraparound to each access.
    """
    n_words = words.shape[0]
    if n_words < 2 * n_states:
        return 1
    states = np.empty(n_states, np.uint64)
    for k in range(n_states):
        states[k] = (np.uint64(words[2 * k]) << np.uint64(32)) | np.uint64(words[2 * k + 1])
    one = np.uint64(1)
    pos = np.uint64(2 * n_states)
    last = np.uint64(n_words - 1)
    prec = np.uint64(precision)
    mask = np.uint64((1 << precision) - 1)
    lut_row = np.uint64(lut.shape[0] // n_channels)
    lut_shift = np.uint64(precision)
    while lut_shift > 0 and (np.uint64(1) << (np.uint64(precision) - lut_shift)) < lut_row:
        lut_shift -= np.uint64(1)
    cdf_row = np.uint64(cdf.shape[0] // n_channels)
    low32 = np.uint64(0xFFFFFFFF)
    n_rows = (n + inner - 1) // inner
    state_mask = np.uint64(n_states - 1)
    for r in range(n_rows):
        c = np.uint64(r % n_channels)
        lbase = c * lut_row
        cbase = c * cdf_row
        lo = np.uint64(r * inner)
        hi = np.uint64(min(r * inner + inner, n))
        for i in range(lo, hi):
            k = i & state_mask
            x = states[k]
            slot = x & mask
            entry = lut[lbase + (slot >> lut_shift)]
            s = cbase + (entry & low32)
            if slot >= entry >> np.uint64(32):
                s += one
                while np.uint64(cdf[s + one]) <= slot:
                    s += one
            start = np.uint64(cdf[s])
            x = (np.uint64(cdf[s + one]) - start) * (x >> prec) + slot - start
            refill = x < RANS_L
            w = np.uint64(words[min(pos, last)])
            states[k] = ((x << np.uint64(32)) | w) if refill else x
            pos += np.uint64(refill)
            out[i] = s - cbase
    if pos > n_words:
        return 1
    if pos != n_words:
        return 2
    for k in range(n_states):
        if states[k] != RANS_L:
            return 2
    return 0


def rans_encode(
    symbols: np.ndarray, cdf: np.ndarray, precision: int, inner: int = 0, n_states: int = 8
) -> np.ndarray:
    """Encodes a flat array of symbols with per-channel CDFs.

    Args:
        symbols: 1-D integer array (uint8, uint16 or int32) of symbol indices in
            ``[0, cdf.shape[1] - 1)``.
        cdf: uint32 ``[C, S + 1]`` cumulative frequencies, each row from 0 to
            ``2**precision``, every symbol with frequency ≥ 1.
        precision: Bits of the CDF tables (≤ 24).
        inner: Consecutive elements sharing a channel (``H * W`` for ``[C, H, W]``); 0 means
            all elements use channel 0's table.
        n_states: Interleaved states (1..64); the decoder must use the same number.

    Returns:
        The stream as uint32 words.

    Raises:
        ValueError: If a symbol is outside the alphabet or the arguments are inconsistent.
    """
    symbols = np.ascontiguousarray(symbols).ravel()
    check_states(n_states)
    if symbols.dtype not in (np.uint8, np.uint16, np.int32):
        symbols = symbols.astype(np.int32)
    n_symbols = cdf.shape[1] - 1
    if symbols.size and (int(symbols.min()) < 0 or int(symbols.max()) >= n_symbols):
        raise ValueError(f"symbols must lie in [0, {n_symbols}), got [{symbols.min()}, {symbols.max()}]")
    inner = inner or max(symbols.size, 1)
    return _encode(symbols, cdf, inner, cdf.shape[0], precision, n_states)


def rans_decode(
    words: np.ndarray,
    n: int,
    cdf: np.ndarray,
    precision: int,
    inner: int = 0,
    n_states: int = 8,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """Decodes ``n`` symbols; the inverse of ``rans_encode`` with the same tables.

    Args:
        words: uint32 stream from ``rans_encode``.
        n: Number of symbols to decode.
        cdf, precision, inner, n_states: As given to ``rans_encode``.
        lut: ``decode_lut(cdf, precision)``, pass it to avoid rebuilding it per call.

    Returns:
        The symbols, uint8 if the alphabet has at most 256 symbols, else uint16.

    Raises:
        RansError: If the stream is truncated, damaged or was made with other tables.
    """
    check_states(n_states)
    if lut is None:
        lut = decode_lut(cdf, precision)
    dtype = np.uint8 if cdf.shape[1] - 1 <= 256 else np.uint16
    out = np.empty(n, dtype)
    inner = inner or max(n, 1)
    words = np.ascontiguousarray(words, dtype=np.uint32)
    status = _decode(words, n, cdf.ravel(), lut.ravel(), inner, cdf.shape[0], precision, n_states, out)
    if status == 1:
        raise RansError("rANS stream is truncated: it ran out of words before the last symbol")
    if status == 2:
        raise RansError("rANS stream did not end in the initial state: damaged or wrong tables")
    return out
