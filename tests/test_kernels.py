"""CPU kernels (nearest centroid, k-means update, residual VQ) against plain numpy references."""

import numpy as np
import pytest

from operators.kernels import device, kmeans, nearest, nearest_int8, rvq

needs_vnni = pytest.mark.skipif(not nearest_int8.vnni_available(), reason="host CPU lacks AVX-512 VNNI")


def _separated(rng, n, d, k):
    """Points near distinct centroids, so the argmin has a clear winner (no float ties)."""
    centroids = rng.standard_normal((k, d)).astype(np.float32) * 4
    owner = rng.integers(0, k, n)
    x = centroids[owner] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return x, centroids


@pytest.mark.parametrize("method", ["auto", "fp32"])
@pytest.mark.parametrize(
    "n,d,k",
    [(1, 1, 1), (5, 3, 2), (47, 17, 63), (48, 64, 64), (49, 65, 65), (301, 130, 200), (97, 768, 129)],
)
def test_assign_matches_numpy(n, d, k, method):
    rng = np.random.default_rng(n * 1000 + d + k)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    idx, dist = nearest.assign(x, nearest.PackedCodebook(c, method=method))
    ref_idx, ref_dist = nearest.assign_reference(x, c)
    ref_at_ours = ((x.astype(np.float64) - c[idx]) ** 2).sum(1)
    # Chosen centroid is optimal up to float32 rounding, and usually the very same index.
    np.testing.assert_allclose(ref_at_ours, ref_dist, rtol=1e-4, atol=1e-3 * d)
    assert (idx == ref_idx).mean() > 0.97
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3 * d)


def test_assign_exact_on_separated_data_and_packed_reuse():
    rng = np.random.default_rng(1)
    x, c = _separated(rng, 500, 32, 100)
    packed = nearest.PackedCodebook(c)
    idx, _ = nearest.assign(x, packed)
    np.testing.assert_array_equal(idx, nearest.assign_reference(x, c)[0])
    np.testing.assert_array_equal(nearest.nearest(x, packed, device="cpu")[0], idx)


@pytest.mark.parametrize("method", ["auto", "fp32"])
def test_ties_go_to_lowest_index(method):
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    x = np.tile(np.array([[1.0, 0.0]], np.float32), (70, 1))
    idx, dist = nearest.assign(x, nearest.PackedCodebook(c, method=method))
    assert (idx == 0).all() and np.allclose(dist, 0.0)


def test_assign_empty_input():
    idx, dist = nearest.assign(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32))
    assert idx.shape == dist.shape == (0,) and idx.dtype == np.int64


def test_assign_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        nearest.assign(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="K > 0"):
        nearest.PackedCodebook(np.zeros((0, 4), np.float32))


def _exact(x, c):
    """Asserts the int8 path returns exactly the float64 reference argmin; returns its info."""
    idx, dist, info = nearest.assign_info(x, nearest.PackedCodebook(c, method="int8"))
    ref_idx, ref_dist = nearest.assign_reference(x, c)
    assert info["path"] == "int8"
    np.testing.assert_array_equal(idx, ref_idx)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(dist, ref_dist.astype(np.float32), rtol=1e-6, atol=1e-6 * (1 + ref_dist.max()))
    return info


@needs_vnni
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (5, 3, 2), (47, 17, 63), (49, 65, 65), (301, 130, 200), (97, 768, 129)])
def test_int8_path_is_exact_on_gaussian_data(n, d, k):
    rng = np.random.default_rng(n * 1000 + d + k)
    info = _exact(rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((k, d)).astype(np.float32))
    assert 1 <= info["candidates"] <= k and info["second_pass_rows"] == info["fallback_rows"] == 0


@needs_vnni
def test_int8_path_is_exact_on_clustered_outlier_and_zero_data():
    rng = np.random.default_rng(4)
    x, c = _separated(rng, 300, 36, 90)
    _exact(x, c)
    x = rng.standard_normal((200, 36)).astype(np.float32)
    c = rng.standard_normal((90, 36)).astype(np.float32)
    x[::7] *= 1e4  # rows spanning 8 orders of magnitude
    x[1::7] *= 1e-4
    x[2::11, 5] = 3e3  # one huge coordinate: coarse int8 scale for the rest of the row
    c[3, :4] *= 1e3
    c[7] = 0.0
    x[4] = 0.0
    x[5] = c[11]
    _exact(x, c)


@needs_vnni
def test_int8_path_breaks_duplicate_and_near_ties_by_float64():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 30)).astype(np.float32)
    twin = base.copy()
    twin[:, 0] = np.nextafter(twin[:, 0], np.float32(np.inf))  # distance gap ~1e-7: below fp32/int8 resolution
    c = np.concatenate([base, twin, base])[rng.permutation(120)]
    x = base[rng.integers(0, 40, 150)] + 0.3 * rng.standard_normal((150, 30)).astype(np.float32)
    _exact(x, c)
    x = np.tile(np.array([[1.0, 0.0, 2.0]], np.float32), (50, 1))
    _exact(x, np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [5.0, 1.0, 1.0], [1.0, 0.0, 2.0]], np.float32))


@needs_vnni
def test_int8_bounds_enclose_the_true_score():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((37, 45)).astype(np.float32) * 3
    c = rng.standard_normal((70, 45)).astype(np.float32)
    x[3] = 0.0
    x[4] *= 1e3
    c[5] = 0.0
    c[6, :3] *= 1e4
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    score = (c64 * c64).sum(1)[None] - 2 * x64 @ c64.T
    lower, upper = nearest_int8.bounds(x, nearest_int8.Int8Codebook(c))
    each_upper = np.stack([nearest_int8.bounds(x, nearest_int8.Int8Codebook(c[j:j + 1]))[1] for j in range(70)], 1)
    assert (lower <= score).all() and (each_upper >= score).all()
    np.testing.assert_array_equal(upper, each_upper.min(1))
    scale = np.linalg.norm(x64, axis=1)[:, None] * np.linalg.norm(c64, axis=1)[None]
    assert np.median((each_upper - lower) / np.maximum(scale, 1e-30)) < 0.1  # and they are not vacuous


@needs_vnni
def test_int8_candidate_overflow_takes_second_pass_and_float64_fallback():
    rng = np.random.default_rng(7)
    c = np.concatenate([rng.standard_normal((20, 24)), np.ones((300, 24)), rng.standard_normal((20, 24))])
    x = np.ones((60, 24), np.float32) + 0.01 * rng.standard_normal((60, 24)).astype(np.float32)
    x[::2] = rng.standard_normal((30, 24)).astype(np.float32) * 3
    info = _exact(x, c.astype(np.float32))  # 300 tied survivors overflow the 256-entry buffer
    assert info["second_pass_rows"] >= 30 and info["fallback_rows"] == 0 and info["candidates"] > 100
    x = rng.standard_normal((30, 8)).astype(np.float32)
    x[3] *= np.float32(1e30)  # still within the filter's float32 range
    x[4] = np.float32(3e38)  # ||x̃|| overflows float32: this row falls back
    c = rng.standard_normal((70, 8)).astype(np.float32)
    assert _exact(x, c)["fallback_rows"] == 1
    huge = rng.standard_normal((50, 8)).astype(np.float32) * np.float32(1e20)  # ||c||² overflows float32
    assert not nearest_int8.Int8Codebook(huge).finite
    assert _exact(rng.standard_normal((30, 8)).astype(np.float32) * np.float32(1e20), huge)["fallback_rows"] == 30


@needs_vnni
def test_int8_and_fp32_paths_agree():
    rng = np.random.default_rng(8)
    x, c = _separated(rng, 250, 70, 150)
    fast, fast_dist, info = nearest.assign_info(x, nearest.PackedCodebook(c, method="int8"))
    slow, slow_dist, slow_info = nearest.assign_info(x, nearest.PackedCodebook(c, method="fp32"))
    assert (info["path"], slow_info["path"]) == ("int8", "fp32")
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_allclose(fast_dist, slow_dist, rtol=1e-4, atol=1e-3)
    assert nearest.PackedCodebook(c).method == "int8"


def test_packed_codebook_rejects_unknown_method():
    with pytest.raises(ValueError, match="method must be"):
        nearest.PackedCodebook(np.ones((2, 3), np.float32), method="bf16")


def test_update_sums_matches_numpy_and_is_split_independent():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 24)).astype(np.float32)
    idx = rng.integers(0, 37, 20000)
    scale = kmeans.fixed_point_scale(x)
    sums, counts = kmeans.update_sums(x, idx, 37, scale)
    ref_sums, ref_counts = kmeans.update_sums_reference(x, idx, 37, scale)
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(counts, ref_counts)
    halves = [kmeans.update_sums(x[s], idx[s], 37, scale) for s in (slice(0, 7001), slice(7001, None))]
    np.testing.assert_array_equal(halves[0][0] + halves[1][0], sums)
    means = sums / scale / np.maximum(counts, 1)[:, None]
    ref_means = np.stack([x[idx == j].mean(0) if (idx == j).any() else np.zeros(24) for j in range(37)])
    np.testing.assert_allclose(means, ref_means, atol=1e-5)


def test_fixed_point_scale_is_power_of_two():
    scale = kmeans.fixed_point_scale(np.array([3.0, -100.0]))
    assert np.log2(scale) == int(np.log2(scale)) and 100 * scale <= 2**21


def test_rvq_matches_reference_and_decodes():
    rng = np.random.default_rng(3)
    books = [rng.standard_normal((32, 16)).astype(np.float32) * s for s in (2.0, 0.5, 0.1)]
    x = (books[0][rng.integers(0, 32, 400)] + books[1][rng.integers(0, 32, 400)]).astype(np.float32)
    codes, residual = rvq.rvq_encode(x, books, device="cpu")
    np.testing.assert_array_equal(codes, rvq.rvq_encode_reference(x, books))
    np.testing.assert_allclose(rvq.rvq_decode(codes, books) + residual, x, atol=1e-5)
    errors = [np.mean((x - rvq.rvq_decode(codes[:, : s + 1], books[: s + 1])) ** 2) for s in range(2)]
    assert errors[0] > 0.1 and errors[1] < 1e-10  # x is exactly a sum of stage-0 and stage-1 codewords


def test_auto_device_is_cpu_without_gpu():
    if device.cuda_available():
        pytest.skip("a GPU is present; auto picks CUDA here")
    assert device.resolve("auto") == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        device.resolve("cuda")
    with pytest.raises(ValueError, match="device must be"):
        device.resolve("tpu")
