"""FitCodebook (distributed k-means in Beam) and the fit-tokenizer job."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from operators.kernels import kmeans, nearest  # tests check the kernels directly
from operators.tokenizers import codebooks as cb
from operators.tokenizers import dual_image as dit
from operators.tokenizers import semantic_audio as sat
from pipelines import fit_tokenizer
from pipelines.common import ConfigError
from pipelines.tools.make_tokenizer_assets import write_fit_media
from transforms.fit_codebook import CentroidMeans, FitCodebook


def _data(seed=0, n=3000, k=6, d=5):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 6
    return (centers[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


_SEEN = []  # the in-process FnApiRunner runs DoFns in this process, so a module global collects


def _keep(value):
    _SEEN.append(value)
    return value


def _fit(batches, k, iterations=4, sample_size=400, seed=1, out=None):
    _SEEN.clear()
    with TestPipeline(runner=FnApiRunner()) as p:
        fitted = p | beam.Create(batches) | FitCodebook(k, iterations, seed, sample_size, output_dir=out)
        assert_that(fitted | beam.Map(_keep) | beam.Map(_rows), _equals(sum(map(len, batches))))
    return _SEEN[0]


def _rows(fitted):
    return fitted.rows


def _equals(value):
    def check(actual):
        assert list(actual) == [value], actual
    return check


def numpy_lloyd(x, k, iterations, sample_size, seed):
    """Plain numpy k-means from the same seeded sample and k-means++ start (float64 means)."""
    h = cb.row_hashes(x, seed)
    picked = sorted({(int(h[i]), x[i].tobytes()) for i in range(len(x))})[:sample_size]
    sample = np.stack([np.frombuffer(b, np.float32) for _, b in picked])
    c = cb.kmeans_plus_plus(sample, k, seed).astype(np.float64)
    for _ in range(iterations):
        d = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
        idx = d.argmin(1)
        c = np.stack([x[idx == j].mean(0) if (idx == j).any() else c[j] for j in range(k)])
    return c


def test_fit_matches_numpy_lloyd_and_saves(tmp_path):
    x = _data()
    fitted = _fit([x[i:i + 250] for i in range(0, len(x), 250)], 6, out=str(tmp_path))
    np.testing.assert_allclose(fitted.codebook, numpy_lloyd(x, 6, 4, 400, 1), atol=1e-4)
    assert fitted.rows == 3000 and fitted.counts.sum() == 3000 and fitted.iterations == 4
    assert len(fitted.inertia_history) == 5 and fitted.inertia_history[-1] <= fitted.inertia_history[0]
    _, dist = nearest.assign(x, fitted.codebook)
    assert fitted.inertia == pytest.approx(float(dist.mean()), rel=1e-5)
    saved, meta = cb.load_codebook(str(tmp_path))
    np.testing.assert_array_equal(saved, fitted.codebook)
    assert meta["codebook_size"] == 6 and meta["iterations"] == 4 and meta["inertia"] == fitted.inertia


def test_fit_is_deterministic_across_runs_and_batchings():
    x = _data(seed=3)
    a = _fit([x[i:i + 100] for i in range(0, 3000, 100)], 8, iterations=2)
    b = _fit([x[i:i + 1000] for i in range(0, 3000, 1000)][::-1], 8, iterations=2)
    assert a.codebook.tobytes() == b.codebook.tobytes()
    assert a.inertia == b.inertia


def test_empty_clusters_are_reseeded_to_farthest_sample_rows():
    sample = np.array([[0, 0], [0.1, 0], [10, 10], [5, 5]], np.float32)
    prev = np.array([[0, 0], [100, 100], [-100, -100]], np.float32)
    scale = kmeans.fixed_point_scale(sample)
    sums, counts = kmeans.update_sums(sample, np.zeros(4, np.int64), 3, scale)
    stats = cb.LloydStats(sums, counts, 0, 4)
    new, reseeded = cb.lloyd_update(prev, stats, scale, sample)
    assert reseeded == 2
    np.testing.assert_allclose(new[0], sample.mean(0), atol=1e-5)
    np.testing.assert_array_equal(new[1], sample[2])  # farthest from the surviving centroid
    np.testing.assert_array_equal(new[2], sample[0])  # next farthest


def test_fit_reseeds_when_duplicates_leave_clusters_empty():
    x = np.repeat(np.array([[0, 0], [5, 5], [9, 0]], np.float32), 200, axis=0)
    x[:5] += np.float32(0.01)
    fitted = _fit([x], 5, iterations=3, sample_size=100)
    assert (fitted.counts > 0).sum() == 4 and fitted.rows == 600  # 3 points + the perturbed copies
    assert fitted.reseeded >= 1


def test_centroid_means_are_payload_means_per_cluster():
    x = _data(seed=5, n=600)
    payload = np.concatenate([x * 2, x[:, :1]], axis=1)
    _SEEN.clear()
    with TestPipeline(runner=FnApiRunner()) as p:
        feats = p | "Feats" >> beam.Create([x[:300], x[300:]])
        fitted = feats | FitCodebook(4, 2, 0, 200)
        pairs = p | "Pairs" >> beam.Create([(x[:300], payload[:300]), (x[300:], payload[300:])])
        means = pairs | CentroidMeans(fitted)
        joined = means | beam.Map(_pair, beam.pvalue.AsSingleton(fitted)) | beam.Map(_keep)
        assert_that(joined | beam.Map(_table_shape), _equals((4, 6)))
    table, fitted = _SEEN[0]
    idx, _ = nearest.assign(x, fitted.codebook)
    ref = np.stack([payload[idx == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(table, ref, atol=1e-4)


def _pair(table, fitted):
    return table, fitted


def _table_shape(pair):
    return pair[0].shape


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fitmedia"))
    write_fit_media(folder, clips=2, images=6, seconds=3.0, seed=0)
    with open(os.path.join(folder, "broken.wav"), "wb") as f:
        f.write(b"RIFF garbage, not audio")
    return folder


def _image_args(media, out):
    return ["--input", media, "--modality", "image", "--codebook-size", "24", "--iterations", "3",
            "--sample-size", "400", "--image-size", "64", "--output", out]


def test_fit_tokenizer_image_same_tokens_on_1_and_2_workers(media, tmp_path):
    one = fit_tokenizer.run(_image_args(media, str(tmp_path / "one")))
    two = fit_tokenizer.run(_image_args(media, str(tmp_path / "two")) + [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert one["model"]["joint"]["rows"] == 6 * 64
    for name in ("semantic.npy", "pixel.npy"):
        assert (np.load(tmp_path / "one" / name).tobytes() == np.load(tmp_path / "two" / name).tobytes())
    data = open(os.path.join(media, "image_0003.png"), "rb").read()
    tokens = [dit.DualImageTokenizer(model_dir=str(tmp_path / w)).encode(data).tokens for w in ("one", "two")]
    np.testing.assert_array_equal(tokens[0], tokens[1])
    assert two["dead_letters"] == 0 and two["filtered_by_reason"] == {"other_modality": 3}  # 2 clips, broken.wav
    assert json.load(open(tmp_path / "two" / "model.json"))["codebook_size"] == 24


def _audio_args(media, out):
    return ["--input", media, "--modality", "audio", "--codebook-size", "16", "--acoustic-codebook-size", "8",
            "--acoustic-stages", "2", "--rate", "50", "--iterations", "2", "--sample-size", "100", "--output", out]


def _dead_keys(out):
    return sorted(json.loads(line)["key"] for f in glob.glob(f"{out}/__dead_letters/*.jsonl") for line in open(f))


def test_fit_tokenizer_audio_model_tokenizes_and_reports_dead_letters(media, tmp_path):
    out = str(tmp_path / "audio")
    summary = fit_tokenizer.run(_audio_args(media, out))
    assert _dead_keys(out) == ["broken"]
    assert (summary["rows"], summary["dead_letters"], summary["filtered_by_reason"]) == (2, 1, {"other_modality": 6})
    assert summary["records"] == summary["rows"] + summary["dead_letters"] + summary["filtered"] == 9
    model = sat.load_model(out)
    assert model.group == 2 and model.codebook_sizes() == (16, 8, 8)
    assert model.semantic_decoder.shape == (16, 512)
    data = open(os.path.join(media, "clip_0001.wav"), "rb").read()
    tokens = sat.SemanticAudioTokenizer(model_dir=out).encode(data)
    assert tokens.tokens.shape[1] == 3 and tokens.meta["rate"] == 50


def test_fit_tokenizer_resume_and_retry_refit_from_stored_rows(media, tmp_path):
    """Kills nothing, loses nothing: --resume with everything done runs nothing; a retry re-reads only the
    dead letter, reloads the kept training rows, keeps the shard's accounting and fits the same model."""
    out = str(tmp_path / "audio")
    first = fit_tokenizer.run(_audio_args(media, out))
    codebooks = {n: np.load(os.path.join(out, n)).tobytes() for n in ("semantic.npy", "acoustic_0.npy", "acoustic_1.npy")}
    resumed = fit_tokenizer.run(_audio_args(media, out) + ["--resume", "--no-report"])
    assert resumed["this_run"]["shards_run"] == 0 and resumed["rows"] == first["rows"]
    retried = fit_tokenizer.run(_audio_args(media, out) + ["--retry-dead-letters", "--no-report"])
    assert retried["retried_dead_letters"] == 1 and retried["recovered_by_retry"] == 0
    for field in ("records", "rows", "dead_letters", "filtered", "feature_rows_by_modality"):
        assert retried[field] == first[field], field
    manifest = json.load(open(glob.glob(f"{out}/__manifests/*.json")[0]))
    assert manifest["records"] == manifest["rows"] + manifest["dead_letters"] + manifest["filtered"]
    for name, data in codebooks.items():
        assert np.load(os.path.join(out, name)).tobytes() == data, name
    os.remove(os.path.join(out, "model.json"))  # a crash after the shards were written, before the model
    fit_tokenizer.run(_audio_args(media, out) + ["--resume", "--no-report"])
    assert np.load(os.path.join(out, "semantic.npy")).tobytes() == codebooks["semantic.npy"]


def test_fit_tokenizer_rejects_bad_flags(media, tmp_path):
    with pytest.raises(ConfigError, match="--modality"):
        fit_tokenizer.run(["--input", media, "--modality", "video", "--codebook-size", "8",
                           "--output", str(tmp_path)])
    with pytest.raises(ConfigError, match="matches no file"):
        fit_tokenizer.run(["--input", str(tmp_path / "nope"), "--modality", "audio", "--codebook-size", "8",
                           "--output", str(tmp_path)])
    with pytest.raises(ConfigError, match="--rate"):
        fit_tokenizer.run(["--input", media, "--modality", "audio", "--codebook-size", "8", "--rate", "75",
                           "--output", str(tmp_path)])
