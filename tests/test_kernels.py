"""CPU kernels (nearest centroid, k-means update, residual VQ) against plain numpy references."""

import numpy as np
import pytest

from operators.kernels import device, kmeans, nearest, rvq


def _separated(rng, n, d, k):
    """Points near distinct centroids, so the argmin has a clear winner (no float ties)."""
    centroids = rng.standard_normal((k, d)).astype(np.float32) * 4
    owner = rng.integers(0, k, n)
    x = centroids[owner] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return x, centroids


@pytest.mark.parametrize(
    "n,d,k",
    [(1, 1, 1), (5, 3, 2), (47, 17, 63), (48, 64, 64), (49, 65, 65), (301, 130, 200), (97, 768, 129)],
)
def test_assign_matches_numpy(n, d, k):
    rng = np.random.default_rng(n * 1000 + d + k)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    idx, dist = nearest.assign(x, c)
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


def test_ties_go_to_lowest_index():
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    x = np.tile(np.array([[1.0, 0.0]], np.float32), (70, 1))
    idx, dist = nearest.assign(x, c)
    assert (idx == 0).all() and np.allclose(dist, 0.0)


def test_assign_empty_input():
    idx, dist = nearest.assign(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32))
    assert idx.shape == dist.shape == (0,) and idx.dtype == np.int64


def test_assign_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        nearest.assign(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="K > 0"):
        nearest.PackedCodebook(np.zeros((0, 4), np.float32))


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
