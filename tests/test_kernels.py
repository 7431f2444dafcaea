"""CPU kernels (nearest centroid, k-means update, residual VQ) against plain numpy references.

The int8 tests run once per ISA path (``avx512_vnni``, ``avx_vnni``, ``avx2``) that Numba's target
can execute: on an AVX-512 VNNI host all three run in-process (AVX2 instructions exist there);
elsewhere the ones the CPU lacks are skipped with the reason. ``test_avx2_host_gives_identical_outputs``
runs the AVX2 path as compiled for a CPU without AVX-512 (``cpu.AVX2_EMULATION``) in a subprocess
and checks that tokens, distances, k-means sums and RVQ codes are bit-identical to this host's.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from operators.kernels import cpu, device, int8_codes, kmeans, nearest, nearest_fp32, nearest_int8, rvq, tiles


def _path(isa):
    reason = f"Numba target lacks the {isa} instructions (features: {sorted(cpu.compile_features())[:8]}...)"
    return pytest.param(isa, marks=pytest.mark.skipif(not cpu.supports(isa), reason=reason), id=isa)


INT8_PATHS = [_path(isa) for isa in nearest.INT8_PATHS]
ALL_PATHS = INT8_PATHS + [pytest.param("other", id="other")]
TILE_PATHS = {tiles.ZmmVnni: "avx512_vnni", tiles.YmmVnni: "avx_vnni", tiles.YmmMaddubsPairs: "avx2",
              tiles.YmmMaddubs: "avx2"}
INT8_TILES = [pytest.param(cls(), marks=_path(isa).marks, id=cls.__name__) for cls, isa in TILE_PATHS.items()]


def _separated(rng, n, d, k):
    """Points near distinct centroids, so the argmin has a clear winner (no float ties)."""
    centroids = rng.standard_normal((k, d)).astype(np.float32) * 4
    owner = rng.integers(0, k, n)
    x = centroids[owner] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return x, centroids


@pytest.mark.parametrize("isa", ALL_PATHS)
@pytest.mark.parametrize("method", ["auto", "fp32"])
@pytest.mark.parametrize(
    "n,d,k",
    [(1, 1, 1), (5, 3, 2), (47, 17, 63), (48, 64, 64), (49, 65, 65), (301, 130, 200), (97, 768, 129)],
)
def test_assign_matches_numpy(n, d, k, method, isa):
    rng = np.random.default_rng(n * 1000 + d + k)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    idx, dist = nearest.assign(x, nearest.PackedCodebook(c, method=method, isa=isa))
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


@pytest.mark.parametrize("isa", ALL_PATHS)
@pytest.mark.parametrize("method", ["auto", "fp32"])
def test_ties_go_to_lowest_index(method, isa):
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    x = np.tile(np.array([[1.0, 0.0]], np.float32), (70, 1))
    idx, dist = nearest.assign(x, nearest.PackedCodebook(c, method=method, isa=isa))
    assert (idx == 0).all() and np.allclose(dist, 0.0)


def test_assign_empty_input():
    idx, dist = nearest.assign(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32))
    assert idx.shape == dist.shape == (0,) and idx.dtype == np.int64


def test_assign_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        nearest.assign(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="K > 0"):
        nearest.PackedCodebook(np.zeros((0, 4), np.float32))


def _exact(x, c, tile):
    """Asserts the int8 filter on ``tile`` returns exactly the float64 reference argmin; returns its info."""
    idx, dist, info = nearest_int8.search(x, c, int8_codes.Int8Codebook(c, tile))
    ref_idx, ref_dist = nearest.assign_reference(x, c)
    np.testing.assert_array_equal(idx, ref_idx)
    atol = 1e-6 * (1 + min(ref_dist.max(), 3e38))
    with np.errstate(over="ignore"):  # distances beyond float32 range are inf on both sides
        np.testing.assert_allclose(dist.astype(np.float32), ref_dist.astype(np.float32), rtol=1e-6, atol=atol)
    return info


@pytest.mark.parametrize("tile", INT8_TILES)
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (5, 3, 2), (47, 17, 63), (49, 65, 65), (301, 130, 200), (97, 768, 129)])
def test_int8_path_is_exact_on_gaussian_data(n, d, k, tile):
    rng = np.random.default_rng(n * 1000 + d + k)
    x, c = rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((k, d)).astype(np.float32)
    info = _exact(x, c, tile)
    assert 1 <= info["candidates"] <= k and info["second_pass_rows"] == info["fallback_rows"] == 0


@pytest.mark.parametrize("tile", INT8_TILES)
def test_int8_path_is_exact_on_clustered_outlier_and_zero_data(tile):
    rng = np.random.default_rng(4)
    x, c = _separated(rng, 300, 36, 90)
    _exact(x, c, tile)
    x = rng.standard_normal((200, 36)).astype(np.float32)
    c = rng.standard_normal((90, 36)).astype(np.float32)
    x[::7] *= 1e4  # rows spanning 8 orders of magnitude
    x[1::7] *= 1e-4
    x[2::11, 5] = 3e3  # one huge coordinate: coarse int8 scale for the rest of the row
    c[3, :4] *= 1e3
    c[7] = 0.0
    x[4] = 0.0
    x[5] = c[11]
    _exact(x, c, tile)


@pytest.mark.parametrize("tile", INT8_TILES)
def test_int8_path_breaks_duplicate_and_near_ties_by_float64(tile):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 30)).astype(np.float32)
    twin = base.copy()
    twin[:, 0] = np.nextafter(twin[:, 0], np.float32(np.inf))  # distance gap ~1e-7: below fp32/int8 resolution
    c = np.concatenate([base, twin, base])[rng.permutation(120)]
    x = base[rng.integers(0, 40, 150)] + 0.3 * rng.standard_normal((150, 30)).astype(np.float32)
    _exact(x, c, tile)
    x = np.tile(np.array([[1.0, 0.0, 2.0]], np.float32), (50, 1))
    _exact(x, np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [5.0, 1.0, 1.0], [1.0, 0.0, 2.0]], np.float32), tile)


@pytest.mark.parametrize("tile", INT8_TILES)
def test_int8_bounds_enclose_the_true_score(tile):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((37, 45)).astype(np.float32) * 3
    c = rng.standard_normal((70, 45)).astype(np.float32)
    x[3] = 0.0
    x[4] *= 1e3
    c[5] = 0.0
    c[6, :3] *= 1e4
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    score = (c64 * c64).sum(1)[None] - 2 * x64 @ c64.T
    lower, upper = nearest_int8.bounds(x, int8_codes.Int8Codebook(c, tile))
    each_upper = np.stack([nearest_int8.bounds(x, int8_codes.Int8Codebook(c[j:j + 1], tile))[1] for j in range(70)], 1)
    assert (lower <= score).all() and (each_upper >= score).all()
    np.testing.assert_array_equal(upper, each_upper.min(1))
    scale = np.linalg.norm(x64, axis=1)[:, None] * np.linalg.norm(c64, axis=1)[None]
    assert np.median((each_upper - lower) / np.maximum(scale, 1e-30)) < 0.1  # and they are not vacuous


@pytest.mark.parametrize("tile", INT8_TILES)
def test_int8_candidate_overflow_takes_second_pass_and_float64_fallback(tile):
    rng = np.random.default_rng(7)
    c = np.concatenate([rng.standard_normal((20, 24)), np.ones((300, 24)), rng.standard_normal((20, 24))])
    x = np.ones((60, 24), np.float32) + 0.01 * rng.standard_normal((60, 24)).astype(np.float32)
    x[::2] = rng.standard_normal((30, 24)).astype(np.float32) * 3
    info = _exact(x, c.astype(np.float32), tile)  # 300 tied survivors overflow the 256-entry buffer
    assert info["second_pass_rows"] >= 30 and info["fallback_rows"] == 0 and info["candidates"] > 100
    x = rng.standard_normal((30, 8)).astype(np.float32)
    x[3] *= np.float32(1e30)  # still within the filter's float32 range
    x[4] = np.float32(3e38)  # ||x̃|| overflows float32: this row falls back
    c = rng.standard_normal((70, 8)).astype(np.float32)
    assert _exact(x, c, tile)["fallback_rows"] == 1
    huge = rng.standard_normal((50, 8)).astype(np.float32) * np.float32(1e20)  # ||c||² overflows float32
    assert not int8_codes.Int8Codebook(huge, tile).finite
    assert _exact(rng.standard_normal((30, 8)).astype(np.float32) * np.float32(1e20), huge, tile)["fallback_rows"] == 30


@pytest.mark.parametrize("isa", INT8_PATHS)
def test_int8_and_fp32_paths_agree(isa):
    rng = np.random.default_rng(8)
    x, c = _separated(rng, 250, 70, 150)
    fast, fast_dist, info = nearest.assign_info(x, nearest.PackedCodebook(c, method="int8", isa=isa))
    slow, slow_dist, slow_info = nearest.assign_info(x, nearest.PackedCodebook(c, method="fp32", isa=isa))
    assert (info["path"], slow_info["path"]) == ("int8", "fp32")
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_allclose(fast_dist, slow_dist, rtol=1e-4, atol=1e-3)
    assert nearest.PackedCodebook(c, isa=isa).method == "int8"


def test_int8_paths_give_identical_indices_and_distances():
    """Every int8 tile returns the float64 argmin and the same float32 distance, bit for bit."""
    paths = [isa for isa in nearest.INT8_PATHS if cpu.supports(isa)]
    if len(paths) < 2:
        pytest.skip(f"only {paths} can run on this host: nothing to compare")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 48)).astype(np.float32)
    c = np.concatenate([rng.standard_normal((150, 48)), x[:50] + 1e-6]).astype(np.float32)  # near-ties too
    results = [nearest.assign(x, nearest.PackedCodebook(c, isa=isa)) for isa in paths]
    for idx, dist in results[1:]:
        np.testing.assert_array_equal(idx, results[0][0])
        np.testing.assert_array_equal(dist, results[0][1])


@pytest.mark.parametrize("tile", [tiles.ZmmFma(), tiles.YmmFma(), tiles.XmmMulAdd()], ids=lambda t: type(t).__name__)
def test_fp32_tiles_match_numpy(tile):
    if type(tile) is tiles.ZmmFma and "avx512f" not in cpu.compile_features():
        pytest.skip("Numba target lacks AVX-512F: zmm float32 tile cannot run")
    rng = np.random.default_rng(10)
    x, c = _separated(rng, 301, 37, 70)
    idx, dist = nearest_fp32.assign(x, nearest_fp32.Fp32Codebook(c, tile))
    ref_idx, ref_dist = nearest.assign_reference(x, c)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)


def test_fp32_fma_tiles_agree_bit_for_bit():
    """Each lane sums its dims in order with one FMA each, so zmm and ymm tiles give equal scores."""
    if "avx512f" not in cpu.compile_features():
        pytest.skip("Numba target lacks AVX-512F: only the ymm float32 tile runs here")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((500, 40)).astype(np.float32)
    c = rng.standard_normal((300, 40)).astype(np.float32)
    wide = nearest_fp32.assign(x, nearest_fp32.Fp32Codebook(c, tiles.ZmmFma()))
    narrow = nearest_fp32.assign(x, nearest_fp32.Fp32Codebook(c, tiles.YmmFma()))
    np.testing.assert_array_equal(wide[0], narrow[0])
    np.testing.assert_array_equal(wide[1], narrow[1])


def test_isa_dispatch():
    assert nearest.isa_path() == cpu.isa_path() == cpu.select_path(cpu.compile_features())
    assert cpu.select_path(frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vnni"})) == "avx512_vnni"
    assert cpu.select_path(frozenset({"avx2", "fma", "avx512f", "avx512bw"})) == "avx2"  # Skylake-SP
    assert cpu.select_path(frozenset({"avx2", "fma", "avxvnni"})) == "avx_vnni"
    assert cpu.select_path(frozenset({"avx2", "fma"})) == "avx2"
    assert cpu.select_path(frozenset({"avx", "sse4.2"})) == "other"
    assert cpu.host_class(frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"})) == "avx512_vnni"
    assert cpu.host_class(frozenset({"avx2", "fma"})) == "avx2"
    report = cpu.report()
    assert report["isa_path"] == cpu.isa_path() and report["host_class"] in cpu.ISA_PATHS
    expected = "int8" if cpu.isa_path() != "other" else "fp32"
    assert nearest.PackedCodebook(np.ones((3, 4), np.float32)).method == expected
    assert nearest.PackedCodebook(np.ones((3, int8_codes.MAX_DIM + 1), np.float32)).method == "fp32"
    assert type(nearest.int8_tile("avx2", int8_codes.PAIRS_MAX_DIM)) is tiles.YmmMaddubsPairs
    assert type(nearest.int8_tile("avx2", int8_codes.PAIRS_MAX_DIM + 1)) is tiles.YmmMaddubs
    with pytest.raises(ValueError, match="ISA path must be"):
        nearest.PackedCodebook(np.ones((3, 4), np.float32), isa="neon")
    with pytest.raises(ValueError, match="needs an int8 ISA path"):
        nearest.PackedCodebook(np.ones((3, 4), np.float32), method="int8", isa="other")


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


def test_update_sums_handles_values_beyond_the_vectorised_rounding():
    """Rows with |x·scale| >= 2^51 or non-finite values take the plain conversion (as the reference)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((9000, 13)).astype(np.float32)
    x[5, 3], x[11, 4], x[13, 1] = 5e12, -(2.0**40), 2.0**31
    idx = rng.integers(0, 7, 9000)
    scale = 2.0**20
    sums, counts = kmeans.update_sums(x, idx, 7, scale)
    ref_sums, ref_counts = kmeans.update_sums_reference(x, idx, 7, scale)
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(counts, ref_counts)


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


def _host_outputs() -> dict:
    """Outputs that must not depend on the host: tokens, distances, k-means codebooks, RVQ codes."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3000, 40)).astype(np.float32)
    x[::5] *= 10.0  # uneven row scales
    centroids = x[rng.choice(3000, 96, replace=False)].copy()
    centroids[7] = centroids[8]  # an exact duplicate: ties to the lower index
    out = {}
    scale = kmeans.fixed_point_scale(x)
    for step in range(3):  # Lloyd iterations
        idx, dist = nearest.assign(x, centroids)
        sums, counts = kmeans.update_sums(x, idx, len(centroids), scale)
        out[f"tokens{step}"], out[f"dist{step}"], out[f"sums{step}"] = idx, dist, sums
        filled = counts > 0
        centroids[filled] = (sums[filled] / scale / counts[filled, None]).astype(np.float32)
    out["codebook"] = centroids
    big = x[:700].copy()  # beyond the vectorised rounding of AVX2 builds: the plain conversion
    big[::7, 3], big[1::7, 5] = 2.0**31, -(2.0**40)
    out["sums_big"] = kmeans.update_sums(big, idx[:700], len(centroids), 2.0**20)[0]
    books = [centroids, 0.1 * rng.standard_normal((64, 40)).astype(np.float32)]
    out["rvq"], out["residual"] = rvq.rvq_encode(x, books, device="cpu")
    return {"isa": cpu.isa_path(), "digest": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                                              for k, v in out.items()}}


def test_avx2_host_gives_identical_outputs():
    """The kernels compiled for an AVX2-only CPU (``cpu.AVX2_EMULATION``, in a subprocess) give the
    same bits as this host's path."""
    if not {"avx2", "fma"} <= cpu.host_flags():
        pytest.skip("host CPU lacks AVX2/FMA: cannot run the AVX2 build")
    if cpu.isa_path() == "other":
        pytest.skip("this host runs the float32 path, whose near-ties may differ: nothing to compare")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **cpu.AVX2_EMULATION}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    code = ("import json, sys; sys.path[:0] = ['tests', '.']; import test_kernels; "
            "print(json.dumps(test_kernels._host_outputs()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["isa"] == "avx2"
    assert theirs["digest"] == _host_outputs()["digest"]
