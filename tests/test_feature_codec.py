"""Feature codec: exact round trips (hypothesis), runtime rate switching, split computing."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.compression.codec import FeatureCodec, bits_per_element
from operators.compression.tables import CodecTables, fit_tables
from operators.compression.quantize import (
    calibrate_uniform,
    dequantize_codebook,
    dequantize_uniform,
    feature_stats,
    quantize_codebook,
    quantize_uniform,
)
from operators.compression.split_compute import TinyCNN, forward_with_features, head, mpq_table, synthetic_images, tail

DISTRIBUTIONS = ("normal", "laplace", "uniform", "relu", "constant", "outliers")


def make_features(shape, dtype, distribution, seed):
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.01, 100))
    x = {
        "normal": lambda: rng.normal(0, scale, shape),
        "laplace": lambda: rng.laplace(0, scale, shape),
        "uniform": lambda: rng.uniform(-scale, 3 * scale, shape),
        "relu": lambda: np.maximum(rng.normal(0, scale, shape), 0),
        "constant": lambda: np.full(shape, scale),
        "outliers": lambda: rng.normal(0, 1, shape),
    }[distribution]()
    if distribution == "outliers" and x.size:
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, min(3, flat.size), replace=False)
        flat[picks] = np.array([np.nan, np.inf, -3e4])[: picks.size]
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    bits=st.integers(2, 8),
    distribution=st.sampled_from(DISTRIBUTIONS),
    channel_axis=st.sampled_from([None, 0, -1]),
    granularity=st.sampled_from(["channel", "tensor"]),
    outliers=st.sampled_from(["escape", "clip"]),
    clip_sigmas=st.sampled_from([None, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_inline_round_trip_is_exact(shape, dtype, bits, distribution, channel_axis, granularity, outliers, clip_sigmas, seed):
    x = make_features(shape, dtype, distribution, seed)
    codec = FeatureCodec(channel_axis=channel_axis, granularity=granularity, outliers=outliers, clip_sigmas=clip_sigmas)
    decoded = codec.decode(codec.encode(x, bits=bits))
    axis = None if channel_axis is None or x.ndim < 2 else channel_axis % x.ndim
    params = calibrate_uniform(feature_stats(x, axis if granularity == "channel" else None), bits, clip_sigmas)
    symbols, escapes = quantize_uniform(x, params, axis, outliers)
    assert same_bits(decoded, dequantize_uniform(symbols, escapes, params, axis, x.dtype))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channels=st.sampled_from([2, 4, 6]),
    spatial=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    distribution=st.sampled_from(DISTRIBUTIONS),
    rates=st.lists(st.sampled_from([("bits", 2), ("bits", 5), ("bits", 8), ("codebook_size", 4)]), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_shared_tables_round_trip_at_any_rate(channels, spatial, dtype, distribution, rates, seed):
    shape = (channels,) + spatial
    samples = [make_features(shape, np.float32, "normal", seed + i) for i in range(3)]
    tables = fit_tables(samples, bits=(2, 5, 8), codebook_sizes=(4,), codebook_groups=2, clip_sigmas=3.0)
    codec = FeatureCodec(CodecTables.from_bytes(tables.to_bytes()))
    x = make_features(shape, dtype, distribution, seed + 99)
    for kind, rate in rates:
        entry = tables.by_key[f"u{rate}" if kind == "bits" else f"vq{rate}"]
        decoded = codec.decode(codec.encode(x, **{kind: rate}))
        if kind == "bits":
            symbols, escapes = quantize_uniform(x, entry.quantizer, 0)
            expected = dequantize_uniform(symbols, escapes, entry.quantizer, 0, x.dtype)
        else:
            indices = quantize_codebook(x, entry.quantizer, 0)
            expected = dequantize_codebook(indices, entry.quantizer, x.shape, 0, x.dtype)
        assert same_bits(decoded, expected)


def test_shared_tables_beat_inline_and_rate_grows_with_bits():
    rng = np.random.default_rng(0)
    samples = [np.maximum(rng.normal(0, 1, (16, 16, 16)), 0).astype(np.float32) for _ in range(6)]
    shared, inline = FeatureCodec(fit_tables(samples[:5])), FeatureCodec()
    x = samples[5]
    sizes = [bits_per_element(shared.encode(x, bits=b), x.size) for b in (2, 4, 6, 8)]
    assert sizes == sorted(sizes) and sizes[-1] < 8
    assert bits_per_element(shared.encode(x, bits=8), x.size) < bits_per_element(inline.encode(x, bits=8), x.size)


def test_bad_requests_are_rejected():
    codec = FeatureCodec(fit_tables([np.ones((2, 3), np.float32)], bits=(4,)))
    with pytest.raises(ValueError, match="bits"):
        codec.encode(np.ones(3, np.float32), bits=9)
    with pytest.raises(ValueError, match="float16/32/64"):
        codec.encode(np.ones(3, np.int32), bits=4)
    with pytest.raises(ValueError, match="no codebook"):
        codec.encode(np.ones((2, 3), np.float32), codebook_size=16)
    with pytest.raises(ValueError, match="channels"):
        codec.encode(np.ones((5, 3), np.float32), bits=4)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TinyCNN().eval()


def test_head_and_tail_reproduce_the_full_model(tiny_model):
    images, _ = synthetic_images(3, seed=4)
    x = torch.from_numpy(images)
    features, output = forward_with_features(tiny_model, "block1", x)
    np.testing.assert_array_equal(head(tiny_model, "block1", x), features)
    np.testing.assert_allclose(tail(tiny_model, "block1", torch.zeros_like(x), features), output, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="split points"):
        head(tiny_model, "nope", x)


def test_mpq_table_reports_rate_and_quality(tiny_model):
    images, _ = synthetic_images(12, seed=5)
    calibration = [f for f in head(tiny_model, "block2", torch.from_numpy(images[:6]))]
    codec = FeatureCodec(fit_tables(calibration, bits=(2, 4, 8)))
    rows = mpq_table(tiny_model, "block2", images[6:], codec, (2, 4, 8))
    assert [r.bits for r in rows] == [2, 4, 8]
    assert rows[0].bytes_per_sample < rows[1].bytes_per_sample < rows[2].bytes_per_sample
    assert rows[2].max_abs_diff < rows[0].max_abs_diff
    assert all(0.0 <= r.top1_agreement <= 1.0 for r in rows)
    assert rows[2].top1_agreement == 1.0
