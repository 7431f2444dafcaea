"""Quantisers and entropy priors against plain NumPy references."""

import numpy as np
import pytest

from operators.compression.priors import EntropyPrior, count_symbols, empirical_entropy, quantize_counts
from operators.compression.quantize import (
    Codebook,
    UniformParams,
    calibrate_uniform,
    channel_vectors,
    dequantize_codebook,
    dequantize_uniform,
    feature_stats,
    fit_codebook,
    merge_stats,
    nearest_centroid,
    quantize_codebook,
    quantize_uniform,
)


def features(seed=0, shape=(6, 5, 7)):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 10, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    return (rng.normal(0, 1, shape) * scales).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_uniform_error_is_within_half_a_step(bits, axis):
    x = features(bits)
    params = calibrate_uniform(feature_stats(x, axis), bits)
    symbols, escapes = quantize_uniform(x, params, axis)
    assert escapes.size == 0 and symbols.max() < 2**bits
    y = dequantize_uniform(symbols, escapes, params, axis, x.dtype)
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    step = params.scale.reshape(shape) if axis is not None else params.scale[0]
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-5) + 1e-6)


def test_per_channel_parameters_follow_each_channel_range():
    x = features(1)
    flat = x.reshape(6, -1).astype(np.float64)
    per_channel = calibrate_uniform(feature_stats(x, 0), 4)
    per_tensor = calibrate_uniform(feature_stats(x, None), 4)
    expected = (np.maximum(flat.max(1), 0) - np.minimum(flat.min(1), 0)) / 15
    np.testing.assert_allclose(per_channel.scale, expected, rtol=1e-6)
    assert per_tensor.scale.size == 1 and per_tensor.scale[0] >= per_channel.scale.max() * (1 - 1e-6)


def test_outliers_escape_exactly_or_clip():
    x = features(2).astype(np.float64)
    x[0, 0, 0], x[1, 2, 3], x[2, 1, 1], x[3, 0, 2] = 1e6, -1e6, np.nan, np.inf
    params = calibrate_uniform(feature_stats(features(2), 0), 4, clip_sigmas=3.0)
    symbols, escapes = quantize_uniform(x, params, 0)
    escaped = symbols == 16
    assert escaped[0, 0, 0] and escaped[1, 2, 3] and escaped[2, 1, 1] and escaped[3, 0, 2]
    y = dequantize_uniform(symbols, escapes, params, 0, x.dtype)
    np.testing.assert_array_equal(y[escaped], x[escaped])
    clipped, kept = quantize_uniform(x, params, 0, outliers="clip")
    assert kept.size == 2 and np.isnan(kept).sum() == 1 and np.isinf(kept).sum() == 1
    assert clipped[0, 0, 0] == 15 and clipped[1, 2, 3] == 0


def test_stats_merge_equals_stats_of_the_union():
    a, b = features(3), features(4)
    merged = merge_stats(feature_stats(a, 0), feature_stats(b, 0))
    whole = feature_stats(np.concatenate([a, b], axis=1), 0)
    for m, w in zip(merged, whole):
        np.testing.assert_allclose(m, w, rtol=1e-12)


def test_uniform_params_serialise_and_reject_damage():
    params = calibrate_uniform(feature_stats(features(5), 0), 6)
    again = UniformParams.from_bytes(params.to_bytes())
    assert again.bits == 6
    np.testing.assert_array_equal(again.scale, params.scale)
    np.testing.assert_array_equal(again.zero_point, params.zero_point)
    with pytest.raises(ValueError):
        UniformParams.from_bytes(params.to_bytes()[:-1])


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    c = rng.normal(size=(33, 8)).astype(np.float32)
    brute = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_centroid(x, c), brute)


def test_codebook_quantisation_is_nearest_code_per_group():
    x = features(7, shape=(8, 6, 6))
    codebook = fit_codebook(channel_vectors(x, 0), 16, groups=2, iterations=5)
    assert codebook.centroids.shape == (2, 16, 4)
    indices = quantize_codebook(x, codebook, 0)
    vectors = channel_vectors(x, 0)
    for g in range(2):
        d = ((vectors[:, None, g * 4 : (g + 1) * 4] - codebook.centroids[g][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(indices[g], d.argmin(1))
    y = dequantize_codebook(indices, codebook, x.shape, 0, np.float32)
    assert y.shape == x.shape
    np.testing.assert_array_equal(channel_vectors(y, 0)[:, :4], codebook.centroids[0][indices[0]])
    assert Codebook.from_bytes(codebook.to_bytes()).centroids.tobytes() == codebook.centroids.tobytes()
    assert np.mean((y - x) ** 2) < np.mean(x**2)


@pytest.mark.parametrize("precision", [8, 16, 20])
def test_prior_frequencies_are_exact_and_close_to_the_histogram(precision):
    rng = np.random.default_rng(precision)
    counts = np.stack([np.bincount(rng.geometric(p, 5000).clip(max=39), minlength=40) for p in (0.05, 0.5, 0.9)])
    prior = EntropyPrior.from_counts(counts, precision)
    assert np.all(prior.freqs.sum(1) == 1 << precision) and prior.freqs.min() >= 1
    if precision >= 16:
        ideal = sum(empirical_entropy(c) * c.sum() for c in counts)
        assert prior.cross_entropy_bits(counts) <= ideal * 1.005


def test_quantize_counts_handles_empty_and_one_hot():
    assert quantize_counts(np.zeros(7), 10).sum() == 1024
    one_hot = quantize_counts(np.array([0, 0, 1000, 0]), 12)
    assert one_hot.sum() == 4096 and one_hot.min() == 1 and one_hot[2] == 4093


def test_prior_serialisation_id_and_damage():
    counts = count_symbols(np.arange(1000) % 7, 2, 10, 9)
    assert counts.shape == (2, 9) and counts.sum() == 1000
    prior = EntropyPrior.from_counts(counts)
    again = EntropyPrior.from_bytes(prior.to_bytes())
    assert again == prior and again.id == prior.id
    assert EntropyPrior.from_counts(counts + np.eye(2, 9, dtype=np.int64) * 50).id != prior.id
    data = bytearray(prior.to_bytes())
    data[-1] ^= 0xFF
    with pytest.raises(ValueError):
        EntropyPrior.from_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated"):
        EntropyPrior.from_bytes(prior.to_bytes()[:-3])
