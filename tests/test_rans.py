"""rANS kernel: exact round trips, rate against constriction's ANS coder, damage detection."""

import constriction
import numpy as np
import pytest

from operators.compression.priors import EntropyPrior, count_symbols, empirical_entropy
from operators.kernels.rans import RansError, rans_decode, rans_encode


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
