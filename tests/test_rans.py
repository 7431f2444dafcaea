"""rANS kernel: exact round trips, rate against constriction's ANS coder, damage detection, and a
byte format that is pinned and identical on every host (AVX-512 and AVX2)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import constriction
import numpy as np
import pytest

from operators.compression.priors import EntropyPrior, count_symbols, empirical_entropy
from operators.kernels import cpu
from operators.kernels.rans import RansError, _encode_table, decode_lut, rans_decode, rans_encode

# sha256 of the streams of ``_format_cases`` as written by the original float-reciprocal encoder.
FORMAT_DIGEST = "a0c23010f1cf95ca20db0bc2307462633a6d7dccf2366d577284092b020e28fa"


def laplace_symbols(n, scale, seed=0, n_symbols=256):
    rng = np.random.default_rng(seed)
    values = np.clip(np.round(rng.laplace(0, scale, n)), -(n_symbols // 2), n_symbols // 2 - 1)
    return (values + n_symbols // 2).astype(np.int64)


@pytest.mark.parametrize("n_states", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("scale", [0.3, 3.0, 40.0])
def test_round_trip_single_table(n_states, scale):
    symbols = laplace_symbols(20_001, scale, seed=n_states).astype(np.uint8)
    prior = EntropyPrior.from_counts(count_symbols(symbols, 1, symbols.size, 256))
    words = rans_encode(symbols, prior.cdf, prior.precision, n_states=n_states)
    decoded = rans_decode(words, symbols.size, prior.cdf, prior.precision, n_states=n_states)
    np.testing.assert_array_equal(decoded, symbols)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("precision", [12, 16, 24])
def test_round_trip_per_channel_tables(dtype, precision):
    rng = np.random.default_rng(precision)
    channels, inner, n_symbols = 5, 37, 300
    scales = rng.uniform(0.5, 50, channels)
    symbols = np.concatenate([laplace_symbols(inner, s, seed=i, n_symbols=n_symbols) for i, s in enumerate(scales)] * 3)
    symbols = symbols.astype(dtype)
    prior = EntropyPrior.from_counts(count_symbols(symbols, channels, inner, n_symbols), precision)
    words = rans_encode(symbols, prior.cdf, precision, inner=inner, n_states=4)
    decoded = rans_decode(words, symbols.size, prior.cdf, precision, inner=inner, n_states=4)
    np.testing.assert_array_equal(decoded.astype(np.int64), symbols.astype(np.int64))


@pytest.mark.parametrize("lut_bits", [1, 8, 12, 16, 24])
def test_decoder_takes_any_lookup_table_size(lut_bits):
    symbols = laplace_symbols(30_000, 6.0, seed=3).astype(np.uint8)
    prior = EntropyPrior.from_counts(count_symbols(symbols, 1, symbols.size, 256), 16)
    words = rans_encode(symbols, prior.cdf, 16)
    lut = decode_lut(prior.cdf, 16, lut_bits)
    assert lut.shape == (1, 1 << min(lut_bits, 16))
    np.testing.assert_array_equal(rans_decode(words, symbols.size, prior.cdf, 16, lut=lut), symbols)


def test_empty_and_single_symbol_inputs():
    prior = EntropyPrior.uniform(1, 4)
    for symbols in (np.zeros(0, np.uint8), np.array([3], np.uint8)):
        words = rans_encode(symbols, prior.cdf, prior.precision)
        np.testing.assert_array_equal(rans_decode(words, symbols.size, prior.cdf, prior.precision), symbols)


def test_rate_matches_entropy_and_constriction():
    symbols = laplace_symbols(200_000, 2.0, seed=1)
    counts = count_symbols(symbols, 1, symbols.size, 256)
    prior = EntropyPrior.from_counts(counts)
    ours_bits = 32 * rans_encode(symbols, prior.cdf, prior.precision).size
    entropy_bits = empirical_entropy(counts) * symbols.size
    model = constriction.stream.model.Categorical(counts[0] / counts.sum(), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), model)
    theirs_bits = 32 * coder.get_compressed().size
    assert ours_bits <= entropy_bits * 1.001 + 8 * 64
    assert ours_bits <= theirs_bits * 1.001 + 8 * 64
    assert ours_bits >= entropy_bits


def test_out_of_range_symbols_and_bad_state_counts_are_rejected():
    prior = EntropyPrior.uniform(1, 4)
    with pytest.raises(ValueError, match="symbols must lie"):
        rans_encode(np.array([0, 4]), prior.cdf, prior.precision)
    with pytest.raises(ValueError, match="power of two"):
        rans_encode(np.array([0, 1]), prior.cdf, prior.precision, n_states=3)


def test_truncated_or_damaged_streams_raise():
    symbols = laplace_symbols(5_000, 5.0, seed=2).astype(np.uint8)
    prior = EntropyPrior.from_counts(count_symbols(symbols, 1, symbols.size, 256))
    words = rans_encode(symbols, prior.cdf, prior.precision, n_states=4)
    for cut in (1, 7, words.size // 2, words.size - 1):
        with pytest.raises(RansError):
            rans_decode(words[:cut], symbols.size, prior.cdf, prior.precision, n_states=4)
    rng = np.random.default_rng(0)
    for position in rng.choice(words.size, 20, replace=False):
        damaged = words.copy()
        damaged[position] ^= np.uint32(1 << int(rng.integers(32)))
        with pytest.raises(RansError):
            rans_decode(damaged, symbols.size, prior.cdf, prior.precision, n_states=4)


def test_encoder_reciprocals_give_exact_quotients():
    """``mulhi64(x, rcp) >> shift == x // freq`` at the edges of every state the encoder can hold."""
    rng = np.random.default_rng(3)
    for precision in (1, 2, 5, 12, 16, 20, 24):
        total = 1 << precision
        freqs = {1, 2, 3, total // 2 + 1, total - 1, total} | {int(f) for f in rng.integers(1, total + 1, 300)}
        freqs |= {1 << b for b in range(precision + 1)} | {(1 << b) + 1 for b in range(precision)}
        freqs = sorted(f for f in freqs if 1 <= f <= total)
        cdf = np.zeros((1, len(freqs) + 1), np.uint32)  # a table only to hold the frequencies
        cdf[0, 1:] = np.cumsum(freqs)
        table = _encode_table(cdf, 1, precision)[0]
        for s, freq in enumerate(freqs):
            x_max, rcp, bias, packed = (int(v) for v in table[s])
            assert x_max == freq << (63 - precision)
            cmpl, shift = packed & 0xFFFFFFFF, packed >> 32
            for x in {1 << 31, x_max - 1, (x_max >> 32) + 1, int(rng.integers(1 << 31, x_max))}:
                q = ((x * rcp) >> 64) >> shift
                assert x + bias + q * cmpl == (x // freq) * total + x % freq + int(cdf[0, s]), (precision, freq, x)


def _format_cases():
    i = np.arange(50_000, dtype=np.int64)
    symbols = ((i * 7919) % 251 + (i // 97) % 5) % 256
    weights = (np.arange(256)[::-1] + 1) ** 2
    for precision in (12, 20, 24):
        freqs = np.maximum(1, np.floor(weights / weights.sum() * (1 << precision) * 0.9)).astype(np.int64)
        freqs[0] += (1 << precision) - freqs.sum()
        cdf = np.concatenate([[0], np.cumsum(freqs)]).astype(np.uint32)[None]
        for n_states in (1, 8, 32):
            yield symbols.astype(np.uint8), cdf, precision, 0, n_states
    freqs = np.ones((3, 300), np.int64)
    freqs[:, 0] += (1 << 16) - 300
    cdf = np.concatenate([np.zeros((3, 1), np.int64), np.cumsum(freqs, 1)], 1).astype(np.uint32)
    yield (symbols % 300).astype(np.uint16), cdf, 16, 37, 4


def _format_digest() -> str:
    digest = hashlib.sha256()
    for symbols, cdf, precision, inner, n_states in _format_cases():
        words = rans_encode(symbols, cdf, precision, inner, n_states)
        np.testing.assert_array_equal(rans_decode(words, symbols.size, cdf, precision, inner, n_states), symbols)
        digest.update(words.tobytes())
    return digest.hexdigest()


def test_stream_format_is_pinned():
    assert _format_digest() == FORMAT_DIGEST


def test_avx2_host_writes_the_same_bytes():
    """The coder compiled for an AVX2-only CPU (``cpu.AVX2_EMULATION``) writes the pinned bytes too."""
    if not {"avx2", "fma"} <= cpu.host_flags():
        pytest.skip("host CPU lacks AVX2/FMA: cannot run the AVX2 build")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **cpu.AVX2_EMULATION}
    code = ("import sys; sys.path[:0] = ['tests', '.']; import test_rans; from operators.kernels import cpu; "
            "print(cpu.isa_path(), test_rans._format_digest())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["avx2", FORMAT_DIGEST]
