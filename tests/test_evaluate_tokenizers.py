"""evaluate-tokenizers end to end on tiny generated shards (FnApiRunner): rows, accounting,
figures recomputed from the operators, summary, report, --resume, --retry-dead-letters, bad flags."""

import json
import os

import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from batch_inputs import check_accounting, png_bytes, read_dead_letters, read_rows, wav_bytes

from operators.quality.audio import stoi
from operators.quality.image import psnr, ssim
from operators.quality.round_trip import jpeg_round_trip, opus_round_trip
from operators.tokenizers.jpeg import JpegTokenizer
from operators.tokenizers.opus import OpusTokenizer
from pipelines import evaluate_tokenizers
from pipelines.common import ConfigError
from pipelines.tools.make_samples import write_tar

FLAGS = ["--tokenizer", "jpeg,opus", "--setting", "jpeg.quality=10,60", "--setting", "jpeg.size=32",
         "--setting", "opus.bitrate=6000,16000", "--no-asr", "--progress-interval", "1"]


def in_process():
    return TestPipeline(runner=FnApiRunner())


def image(seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:40, 0:48] / 48.0
    return np.clip(np.stack([x, y, (x + y) / 2]) + 0.05 * rng.standard_normal((3, 40, 48)), 0, 1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_shards")
    first = str(folder / "shard-000000.tar")
    write_tar(first, [("img-0.png", png_bytes(image(0))), ("img-1.png", png_bytes(image(1))),
                      ("voice-0.wav", wav_bytes(0.5, seed=2)), ("voice-0.transcript.txt", b"two tones"),
                      ("broken-0.png", b"not an image"), ("meta-0.json", b"{}")])
    second = str(folder / "shard-000001.tar")
    write_tar(second, [("img-2.png", png_bytes(image(3)))])
    return first, second


def test_job_measures_every_setting_and_accounts_for_every_evaluation(shards, tmp_path):
    out = str(tmp_path / "q")
    summary = evaluate_tokenizers.run(["--input", *shards, "--output", out, *FLAGS], in_process())
    manifests = check_accounting(out, shards)
    first = manifests[shards[0]]
    # 3 images (2 good, 1 broken) x 2 jpeg settings + 1 audio x 2 opus settings; the json-only sample is filtered
    assert (first["rows"], first["dead_letters"], first["filtered"]) == (6, 2, 1)
    assert first["records"] == 9 and manifests[shards[1]]["rows"] == 2
    assert summary["records"] == summary["rows"] + summary["dead_letters"] + summary["filtered"] == 11
    dead = read_dead_letters(out)
    assert {d["key"] for d in dead} == {"broken-0"} and all(d["stage"] == "Evaluate" for d in dead)
    assert sorted(d["message"].split(":")[0] for d in dead) == ["jpeg quality=10,size=32", "jpeg quality=60,size=32"]

    rows = {(r["key"], r["setting"]): r for r in read_rows(out, "quality")}
    assert len(rows) == 8
    png = png_bytes(image(0))
    for quality in (10, 60):
        row = rows["img-0", f"quality={quality},size=32"]
        trip = jpeg_round_trip(JpegTokenizer(size=32, quality=quality), png)
        assert row["psnr_db"] == pytest.approx(psnr(trip.reference, trip.decoded), abs=1e-9)
        assert row["ssim"] == pytest.approx(ssim(trip.reference, trip.decoded), abs=1e-9)
        assert row["bits"] == 8 * trip.output.meta["num_bytes"] and row["num_tokens"] == trip.output.tokens.size
        assert row["pesq_wb"] is None and row["duration_s"] is None
    assert rows["img-0", "quality=60,size=32"]["psnr_db"] > rows["img-0", "quality=10,size=32"]["psnr_db"]
    voice = rows["voice-0", "bitrate=16000"]
    trip = opus_round_trip(OpusTokenizer(bitrate=16000), wav_bytes(0.5, seed=2))
    assert voice["stoi"] == pytest.approx(stoi(trip.reference, trip.decoded, 16000), abs=1e-9)
    assert voice["duration_s"] == pytest.approx(0.5) and voice["bits_per_s"] == pytest.approx(voice["bits"] / 0.5)
    assert voice["mel_distance_db"] > 0 and voice["asr_wer"] is None and voice["psnr_db"] is None

    with open(os.path.join(out, "__job", "summary.json")) as f:
        saved = json.load(f)
    table = {(e["tokenizer"], e["setting"]): e for e in saved["by_setting"]}
    assert set(table) == {("jpeg", "quality=10,size=32"), ("jpeg", "quality=60,size=32"),
                          ("opus", "bitrate=6000"), ("opus", "bitrate=16000")}
    jpeg10 = [r for r in rows.values() if r["setting"] == "quality=10,size=32"]
    assert table["jpeg", "quality=10,size=32"]["psnr_db"] == pytest.approx(
        np.mean([r["psnr_db"] for r in jpeg10]), abs=1e-4)
    assert saved["worst"]["psnr_db"][0]["value"] == pytest.approx(min(r["psnr_db"] for r in rows.values()
                                                                       if r["psnr_db"] is not None), abs=1e-4)
    with open(os.path.join(out, "__job", "report.html")) as f:
        page = f.read()
    assert 'id="rate-quality"' in page and 'id="quality-image-psnr_db"' in page and 'id="quality-audio-stoi"' in page
    assert page.count("<svg") >= 5 and "img-" in page


def test_resume_and_retry_keep_the_accounting(shards, tmp_path):
    out = str(tmp_path / "q")
    flags = ["--tokenizer", "jpeg", "--setting", "jpeg.quality=10,60", "--setting", "jpeg.size=32", "--no-cnn",
             "--no-report"]
    evaluate_tokenizers.run(["--input", shards[0], "--output", out, *flags], in_process())
    resumed = evaluate_tokenizers.run(["--input", *shards, "--output", out, "--resume", *flags], in_process())
    assert resumed["skipped_by_resume"] == 1 and resumed["rows"] == 6
    before = sorted((r["key"], r["setting"], r["psnr_db"]) for r in read_rows(out, "quality"))
    retried = evaluate_tokenizers.run(["--input", *shards, "--output", out, "--retry-dead-letters", *flags],
                                      in_process())
    check_accounting(out, shards)
    # the broken sample's one key is retried (both its jpeg settings fail again); the audio and
    # json-only samples are filtered: 3 images x 2 settings + 2 filtered, + 2 evaluations of shard 2
    assert retried["retried_dead_letters"] == 1 and retried["dead_letters"] == 2 and retried["records"] == 10
    assert sorted((r["key"], r["setting"], r["psnr_db"]) for r in read_rows(out, "quality")) == before


@pytest.mark.parametrize("flags,message", [
    (["--tokenizer", "jpeg,nope"], "unknown tokenizer"),
    (["--tokenizer", "jpeg", "--setting", "opus.bitrate=6000"], "not evaluated"),
    (["--tokenizer", "jpeg", "--setting", "jpeg.qualty=10"], "valid keys"),
    (["--tokenizer", "opus", "--no-asr", "--setting", "opus.bitrate=10"], "bitrate"),
    (["--tokenizer", "opus", "--asr-model", "/nonexistent.nemo"], "does not exist"),
    (["--tokenizer", "jpeg", "--setting", "jpeg.quality="], "gives no value"),
    (["--tokenizer", "jpeg", "--cnn-model", "/nonexistent.pt"], "does not exist"),
    (["--tokenizer", "avc", "--x3d-random-weights", "--x3d-weights", "/x.pyth"], "one of"),
])
def test_bad_flags_fail_before_running(flags, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        evaluate_tokenizers.run(["--input", str(tmp_path), "--output", str(tmp_path / "o"), *flags])


def test_sweeps_cross_the_keys_of_one_tokenizer():
    swept = evaluate_tokenizers.parse_settings(["jpeg.quality=10,50", "jpeg.size=32", "jpeg.quality=50"])
    assert swept == {"jpeg": {"quality": [10, 50], "size": [32]}}
    settings = evaluate_tokenizers.expand_settings(["jpeg", "opus"], swept, {"media_seconds": 30.0})
    assert [(s.tokenizer, s.label) for s in settings] == [
        ("jpeg", "quality=10,size=32"), ("jpeg", "quality=50,size=32"), ("opus", "default")]
    assert settings[2].kwargs == {"media_seconds": 30.0}  # budgets reach the tokenizers that take them


def test_asr_agreement_and_reference_wer_come_from_the_recogniser(shards, tmp_path):
    from batch_inputs import tiny_asr_model

    from operators.asr.nemo_checkpoint import load_nemo
    from operators.quality.text import word_errors

    model = tiny_asr_model(str(tmp_path / "tiny.nemo"))
    out = str(tmp_path / "q")
    flags = ["--tokenizer", "opus", "--setting", "opus.bitrate=6000", "--asr-model", model, "--no-report"]
    summary = evaluate_tokenizers.run(["--input", shards[0], "--output", out, *flags], in_process())
    check_accounting(out, [shards[0]])
    assert summary["asr_model"] == "tiny.nemo"
    (row,) = read_rows(out, "quality")
    asr = load_nemo(model)
    trip = opus_round_trip(OpusTokenizer(bitrate=6000), wav_bytes(0.5, seed=2))
    original, decoded = asr.transcribe([trip.reference])[0], asr.transcribe([trip.decoded])[0]
    assert (row["asr_text_original"], row["asr_text_decoded"]) == (original, decoded)
    assert row["asr_wer"] == pytest.approx(word_errors(original, decoded).wer)
    assert row["reference_text"] == "two tones"
    assert row["reference_wer"] == pytest.approx(word_errors("two tones", original).wer)
    assert summary["by_setting"][0]["reference_wer"] == pytest.approx(row["reference_wer"])


def test_video_rows_hold_frame_fidelity_and_x3d_agreement(tmp_path):
    from batch_inputs import video_bytes

    from operators.quality.image import frames_psnr, frames_ssim
    from operators.quality.machine import x3d_clip_scores
    from operators.quality.round_trip import avc_round_trip
    from operators.tokenizers.avc import AvcTokenizer
    from operators.video.x3d import build_x3d

    clip = video_bytes(str(tmp_path / "clip.mp4"), 1.0)
    shard = str(tmp_path / "video-000000.tar")
    write_tar(shard, [("clip-0.mp4", clip)])
    out = str(tmp_path / "q")
    flags = ["--tokenizer", "avc", "--setting", "avc.qp=20,45", "--setting", "avc.width=64", "--setting",
             "avc.height=48", "--x3d-random-weights", "--x3d-model", "tiny", "--no-report"]
    summary = evaluate_tokenizers.run(["--input", shard, "--output", out, *flags], in_process())
    check_accounting(out, [shard])
    assert summary["x3d_model"] == "x3d_tiny@random-weights"
    rows = {r["setting"]: r for r in read_rows(out, "quality")}
    net = build_x3d("tiny").eval()
    for qp in (20, 45):
        row = rows[f"qp={qp},width=64,height=48"]
        trip = avc_round_trip(AvcTokenizer(qp=qp, width=64, height=48), clip)
        assert row["psnr_db"] == pytest.approx(frames_psnr(trip.reference, trip.decoded), abs=1e-9)
        assert row["ssim"] == pytest.approx(frames_ssim(trip.reference, trip.decoded), abs=1e-9)
        same = np.argmax(x3d_clip_scores(net, trip.reference)) == np.argmax(x3d_clip_scores(net, trip.decoded))
        assert row["x3d_top1_agree"] == float(same)
        assert row["duration_s"] == pytest.approx(1.0) and row["bits_per_s"] == pytest.approx(row["bits"])
    assert rows["qp=20,width=64,height=48"]["psnr_db"] > rows["qp=45,width=64,height=48"]["psnr_db"]


def test_image_rows_hold_the_split_model_agreement(shards, tmp_path):
    from operators.compression.split_compute import load_model
    from operators.quality.machine import cnn_image_scores

    out = str(tmp_path / "q")
    flags = ["--tokenizer", "jpeg", "--setting", "jpeg.quality=5,95", "--setting", "jpeg.size=32", "--no-report"]
    summary = evaluate_tokenizers.run(["--input", shards[1], "--output", out, *flags], in_process())
    assert summary["cnn_model"] == "tiny_cnn.pt"
    net = load_model()
    for row in read_rows(out, "quality"):
        quality = int(row["setting"].split(",")[0].split("=")[1])
        trip = jpeg_round_trip(JpegTokenizer(size=32, quality=quality), png_bytes(image(3)))
        same = np.argmax(cnn_image_scores(net, trip.reference)) == np.argmax(cnn_image_scores(net, trip.decoded))
        assert row["cnn_top1_agree"] == float(same)
    table = {e["setting"]: e for e in summary["by_setting"]}
    assert set(table) == {"quality=5,size=32", "quality=95,size=32"}
    assert all(e["cnn_top1_agree"] in (0.0, 1.0) for e in table.values())
