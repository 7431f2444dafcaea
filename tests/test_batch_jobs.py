"""transcribe, video-features and compress-features on the Job base: per-shard accounting,
``--resume`` and ``--retry-dead-letters`` (tiny generated inputs, a few seconds per job)."""

import os

import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from batch_inputs import (
    check_accounting,
    png_bytes,
    read_dead_letters,
    read_rows,
    tiny_asr_model,
    video_bytes,
    wav_bytes,
    write_file,
)

from pipelines import compress_features, transcribe, video_features
from pipelines.common import ConfigError
from pipelines.tools.make_samples import write_tar


def in_process():
    return TestPipeline(runner=FnApiRunner())


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory):
    return tiny_asr_model(str(tmp_path_factory.mktemp("asr") / "tiny.nemo"))


def test_transcribe_resume_and_retry(asr_model, tmp_path):
    folder = tmp_path / "clips"
    write_file(str(folder / "one.wav"), wav_bytes(0.6, seed=1))
    write_file(str(folder / "two.flac.wav"), wav_bytes(0.4, seed=2))
    write_file(str(folder / "bad.wav"), b"RIFF broken")
    single = write_file(str(tmp_path / "single.wav"), wav_bytes(0.5, seed=3))
    out = str(tmp_path / "out")
    flags = ["--output", out, "--model", asr_model, "--no-report"]
    first = transcribe.run(["--input", str(folder), single, *flags], in_process())
    manifests = check_accounting(out, [str(folder), single])
    assert (manifests[str(folder)]["rows"], manifests[str(folder)]["dead_letters"]) == (2, 1)
    before = {r["key"]: r["text"] for r in read_rows(out, "transcripts")}
    assert first["transcripts"] == 3 and first["dead_letters"] == 1

    shard = str(tmp_path / "more.tar")  # a tar shard: an audio sample, a broken one, a text-only one
    write_tar(shard, [("s1.wav", wav_bytes(0.3, seed=4)), ("s2.wav", b"junk"), ("s3.txt", b"no audio here")])
    resumed = transcribe.run(["--input", str(folder), single, shard, "--resume", *flags], in_process())
    assert resumed["skipped_by_resume"] == 2 and resumed["this_run"]["shards_run"] == 1
    manifests = check_accounting(out, [str(folder), single, shard])
    assert (manifests[shard]["rows"], manifests[shard]["dead_letters"], manifests[shard]["filtered"]) == (1, 1, 1)

    write_file(str(folder / "bad.wav"), wav_bytes(0.5, seed=5))  # fixed: only it is transcribed again
    retried = transcribe.run(["--input", str(folder), single, shard, "--retry-dead-letters", *flags], in_process())
    assert retried["retried_dead_letters"] == 2 and retried["recovered_by_retry"] == 1
    assert retried["stage_throughput"]["Read"]["elements"] == 1  # s2.wav still fails to decode
    manifests = check_accounting(out, [str(folder), single, shard])
    assert manifests[str(folder)]["dead_letters"] == 0 and manifests[shard]["filtered"] == 1
    after = {r["key"]: r["text"] for r in read_rows(out, "transcripts")}
    assert {k: after[k] for k in before} == before and "bad.wav" in after
    assert [d["key"] for d in read_dead_letters(out)] == ["s2"]  # tar samples keep their WebDataset key


def test_transcribe_multi_processing_matches_in_process(asr_model, tmp_path):
    files = [write_file(str(tmp_path / "in" / f"clip{i:02d}.wav"), wav_bytes(0.3, seed=i, freq=200 + 10 * i))
             for i in range(64)]
    flags = ["--input", str(tmp_path / "in" / "*.wav"), "--model", asr_model, "--no-report", "--threads", "1"]
    transcribe.run([*flags, "--output", str(tmp_path / "one")], in_process())
    summary = transcribe.run([*flags, "--output", str(tmp_path / "mp"), "--direct_num_workers", "2",
                              "--direct_running_mode", "multi_processing"])
    assert summary["shards"] == 64 and summary["transcripts"] == 64
    check_accounting(str(tmp_path / "mp"), files)
    assert len(os.listdir(tmp_path / "mp" / "transcripts")) == 64  # one part per input shard
    assert read_rows(str(tmp_path / "mp"), "transcripts") == read_rows(str(tmp_path / "one"), "transcripts")


def test_transcribe_refuses_a_bad_model_before_running(tmp_path):
    bad = write_file(str(tmp_path / "bad.nemo"), b"PK not really a zip")
    audio = write_file(str(tmp_path / "a.wav"), wav_bytes(0.3))
    with pytest.raises(ConfigError, match="cannot be used") as err:
        transcribe.run(["--input", audio, "--output", str(tmp_path / "out"), "--model", bad])
    assert err.value.code == 2 and not os.path.exists(tmp_path / "out")


VIDEO_FLAGS = ["--model", "tiny", "--random-weights", "--size", "32", "--fps", "8", "--window", "3",
               "--num-classes", "5", "--no-report"]


def test_video_features_resume_and_retry(tmp_path):
    good = video_bytes(str(tmp_path / "good.mp4"), 2.0)
    first_shard = str(tmp_path / "v-000.tar")
    second_shard = str(tmp_path / "v-001.tar")
    write_tar(first_shard, [("a.mp4", good), ("b.mp4", b"not a video" * 30), ("c.txt", b"caption only")])
    out = str(tmp_path / "out")
    summary = video_features.run(["--input", first_shard, "--output", out, *VIDEO_FLAGS], in_process())
    check_accounting(out, [first_shard])
    assert (summary["videos"], summary["dead_letters"], summary["skipped_no_video"]) == (1, 1, 1)
    assert summary["frames"] == len(read_rows(out, "frames")) > 0
    decoded = summary["stage_throughput"]["Frames"]["elements"]  # frames stepped, one per decoded frame

    # One run both resumes (the new shard runs whole, a is not stepped again) and retries (b, now fixed).
    write_tar(first_shard, [("a.mp4", good), ("b.mp4", good), ("c.txt", b"caption only")])
    write_tar(second_shard, [("d.mp4", good)])
    retried = video_features.run(["--input", first_shard, second_shard, "--output", out, "--retry-dead-letters",
                                  *VIDEO_FLAGS], in_process())
    assert retried["retried_dead_letters"] == 1 and retried["recovered_by_retry"] == 1
    assert retried["this_run"]["shards_run"] == 2
    assert retried["stage_throughput"]["Frames"]["elements"] == 2 * decoded  # b and d only
    manifests = check_accounting(out, [first_shard, second_shard])
    assert (manifests[first_shard]["rows"], manifests[first_shard]["filtered"]) == (2, 1)
    by_video = {}
    for r in read_rows(out, "frames"):
        by_video.setdefault((r["source"], r["key"]), []).append(r["values"])
    assert by_video[(first_shard, "a")] == by_video[(first_shard, "b")] == by_video[(second_shard, "d")]
    again = video_features.run(["--input", first_shard, second_shard, "--output", out, "--resume", *VIDEO_FLAGS],
                               in_process())
    assert again["skipped_by_resume"] == 2 and again["this_run"]["shards_run"] == 0


def test_video_features_refuses_bad_weights_before_running(tmp_path):
    shard = str(tmp_path / "s.tar")
    write_tar(shard, [("a.txt", b"x")])
    weights = write_file(str(tmp_path / "X3D_S.pyth"), b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        video_features.run(["--input", shard, "--output", str(tmp_path / "o"), "--weights", weights])
    assert not os.path.exists(tmp_path / "o")


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    import torch

    from operators.compression.split_compute import TinyCNN

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("cnn") / "tiny.pt")
    torch.save(TinyCNN().state_dict(), path)
    return path


def test_compress_features_resume_and_retry(tiny_cnn, tmp_path):
    from operators.compression.split_compute import synthetic_images

    images, _ = synthetic_images(6, seed=4)
    pngs = [png_bytes(image) for image in images]
    first_shard, second_shard = str(tmp_path / "i-000.tar"), str(tmp_path / "i-001.tar")
    write_tar(first_shard, [("p0.png", pngs[0]), ("p1.png", pngs[1]), ("p2.png", b"broken png")])
    out = str(tmp_path / "out")
    flags = ["--output", out, "--model", tiny_cnn, "--split-at", "block1", "--bits", "2,8", "--no-report"]
    summary = compress_features.run(["--input", first_shard, *flags], in_process())
    check_accounting(out, [first_shard])
    assert (summary["samples"], summary["dead_letters"], summary["feature_rows"]) == (2, 1, 4)
    tables = open(os.path.join(out, "__codec", "tables.bin"), "rb").read()

    # One run both resumes (the new shard runs whole) and retries (p2, now fixed).
    write_tar(first_shard, [("p0.png", pngs[0]), ("p1.png", pngs[1]), ("p2.png", pngs[2])])
    write_tar(second_shard, [("p3.png", pngs[3]), ("p4.png", pngs[4])])
    retried = compress_features.run(["--input", first_shard, second_shard, "--retry-dead-letters", *flags],
                                    in_process())
    assert retried["retried_dead_letters"] == 1 and retried["recovered_by_retry"] == 1
    assert retried["stage_throughput"]["Extract"]["elements"] == 3  # p2, p3 and p4; p0 and p1 were kept
    manifests = check_accounting(out, [first_shard, second_shard])
    assert manifests[first_shard]["rows"] == 3 and retried["feature_rows"] == 5 * 2
    # The new and retried shards were coded with the first run's tables: one file decodes all.
    assert open(os.path.join(out, "__codec", "tables.bin"), "rb").read() == tables
    assert len({(r["rate"], r["tables_id"]) for r in read_rows(out, "features")}) == 2  # one table per rate
    assert np.isfinite([r["max_abs_diff"] for r in read_rows(out, "features")]).all()
    again = compress_features.run(["--input", first_shard, second_shard, "--resume", *flags], in_process())
    assert again["skipped_by_resume"] == 2 and again["this_run"]["shards_run"] == 0


def test_compress_features_refuses_a_bad_model_before_running(tmp_path):
    shard = str(tmp_path / "s.tar")
    write_tar(shard, [("a.txt", b"x")])
    bad = write_file(str(tmp_path / "bad.pt"), b"not a state dict")
    with pytest.raises(ConfigError, match="not a TinyCNN state dict"):
        compress_features.run(["--input", shard, "--output", str(tmp_path / "o"), "--model", bad])
    assert not os.path.exists(tmp_path / "o")
