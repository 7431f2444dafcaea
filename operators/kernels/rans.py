"""Interleaved rANS entropy coder in Numba, with per-channel integer CDF tables.

Layout: 64-bit states, 32-bit renormalisation words, lower bound ``L = 2**31`` and CDFs of
``precision`` bits (at most 24). Element ``i`` of the flat symbol array is coded with state
``i % n_states`` and the CDF of channel ``(i // inner) % n_channels``, so a ``[C, H, W]`` tensor
with ``inner = H * W`` gets one table per channel without a per-element channel array.
Several states are interleaved so their dependency chains overlap in the CPU pipeline.

Symbols are encoded last to first (rANS is a stack) and words are written back to front, so
the decoder reads words and produces symbols front to back. The stream starts with the final
encoder states (high word, then low word, state 0 first). Decoding checks every read against
the end of the stream and finally that every state is back at ``L`` and every word was used:
a damaged stream raises ``RansError`` rather than returning plausible garbage.

The quotient ``x // freq`` in the encoder comes from a float64 reciprocal plus one integer
correction step (exact), which is several times faster than a 64-bit division.
"""

import numpy as np
from numba import njit

RANS_L = np.uint64(1 << 31)
MAX_PRECISION = 24
MAX_STATES = 64
LUT_BITS = 12


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


def decode_lut(cdf: np.ndarray, precision: int) -> np.ndarray:
    """Builds the decoder's slot → symbol lookup ([C, 2**min(precision, LUT_BITS)] uint16).

    Entry ``j`` holds the symbol whose interval contains slot ``j << (precision - lut_bits)``;
    the decoder then walks forward at most a few symbols to the exact one.
    """
    lut_bits = min(precision, LUT_BITS)
    slots = np.arange(1 << lut_bits, dtype=np.int64) << (precision - lut_bits)
    lut = np.empty((cdf.shape[0], 1 << lut_bits), np.uint16)
    for c in range(cdf.shape[0]):
        lut[c] = np.searchsorted(cdf[c].astype(np.int64), slots, side="right") - 1
    return lut


@njit(cache=True, nogil=True)
def _encode(symbols, cdf, inner, n_channels, precision, n_states):
    n = symbols.shape[0]
    out = np.empty(n + 2 * n_states + 1, np.uint32)
    pos = out.shape[0]
    states = np.full(n_states, RANS_L, np.uint64)
    freq_shift = np.uint64(63 - precision)
    prec = np.uint64(precision)
    n_rows = (n + inner - 1) // inner
    state_mask = n_states - 1
    n_used = min(n_channels, n_rows)
    recip = np.empty((n_used, cdf.shape[1] - 1), np.float64)
    for c in range(n_used):
        for s in range(cdf.shape[1] - 1):
            recip[c, s] = 1.0 / (np.float64(cdf[c, s + 1]) - np.float64(cdf[c, s]))
    for r in range(n_rows - 1, -1, -1):
        c = r % n_channels
        lo = r * inner
        hi = min(lo + inner, n)
        for i in range(hi - 1, lo - 1, -1):
            s = symbols[i]
            start = np.uint64(cdf[c, s])
            freq = np.uint64(cdf[c, s + 1]) - start
            k = i & state_mask
            x = states[k]
            spill = np.uint64(x >= (freq << freq_shift))
            out[pos - 1] = np.uint32(x & np.uint64(0xFFFFFFFF))
            pos -= spill
            x >>= spill << np.uint64(5)
            q = np.uint64(np.float64(x) * recip[c, s])
            rem = np.int64(x - q * freq)
            while rem < 0:
                q -= np.uint64(1)
                rem += np.int64(freq)
            while rem >= np.int64(freq):
                q += np.uint64(1)
                rem -= np.int64(freq)
            states[k] = (q << prec) + np.uint64(rem) + start
    for k in range(n_states - 1, -1, -1):
        pos -= 1
        out[pos] = np.uint32(states[k] & np.uint64(0xFFFFFFFF))
        pos -= 1
        out[pos] = np.uint32(states[k] >> np.uint64(32))
    return out[pos:].copy()


@njit(cache=True, nogil=True)
def _decode(words, n, cdf, lut, inner, n_channels, precision, n_states, out):
    """Returns 0 on success, 1 if the stream ran out, 2 if it did not end cleanly."""
    n_words = words.shape[0]
    if n_words < 2 * n_states:
        return 1
    states = np.empty(n_states, np.uint64)
    for k in range(n_states):
        states[k] = (np.uint64(words[2 * k]) << np.uint64(32)) | np.uint64(words[2 * k + 1])
    pos = 2 * n_states
    prec = np.uint64(precision)
    mask = np.uint64((1 << precision) - 1)
    lut_shift = np.uint64(precision - min(precision, LUT_BITS))
    n_rows = (n + inner - 1) // inner
    state_mask = n_states - 1
    for r in range(n_rows):
        c = r % n_channels
        lo = r * inner
        hi = min(lo + inner, n)
        for i in range(lo, hi):
            k = i & state_mask
            x = states[k]
            slot = x & mask
            s = np.int64(lut[c, slot >> lut_shift])
            while np.uint64(cdf[c, s + 1]) <= slot:
                s += 1
            start = np.uint64(cdf[c, s])
            freq = np.uint64(cdf[c, s + 1]) - start
            x = freq * (x >> prec) + slot - start
            refill = x < RANS_L
            if pos >= n_words:
                if refill:
                    return 1
            else:
                w = np.uint64(words[pos])
                if refill:
                    x = (x << np.uint64(32)) | w
                pos += refill
            states[k] = x
            out[i] = s
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
    status = _decode(words, n, cdf, lut, inner, cdf.shape[0], precision, n_states, out)
    if status == 1:
        raise RansError("rANS stream is truncated: it ran out of words before the last symbol")
    if status == 2:
        raise RansError("rANS stream did not end in the initial state: damaged or wrong tables")
    return out

