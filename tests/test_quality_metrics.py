"""operators/quality: each measure against a reference computation on tiny inputs."""

import math

import numpy as np
import pytest

from operators.quality import aggregate, audio, image, rate, text

RATE = 16000


def speech_like(seconds=1.5, seed=0):
    """A voiced, syllable-modulated signal PESQ's voice activity detector accepts."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    voiced = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560, 1100), 1))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.3 * voiced * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def test_psnr_of_a_known_shift_and_of_identity():
    from skimage.metrics import peak_signal_noise_ratio

    a = np.random.default_rng(0).integers(0, 240, (16, 20, 3)).astype(np.uint8)
    shifted = a + np.uint8(10)  # MSE = 100 exactly
    assert image.psnr(a, shifted) == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-12)
    assert image.psnr(a, shifted) == pytest.approx(peak_signal_noise_ratio(a, shifted, data_range=255), abs=1e-12)
    assert image.psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        image.psnr(a, a[:8])


@pytest.mark.parametrize("shape,data_range", [((23, 31, 3), 255), ((19, 17), 255), ((12, 12, 3), 1.0)])
def test_ssim_matches_scikit_image(shape, data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random(shape) * data_range
    b = np.clip(a + rng.normal(0, 0.1 * data_range, shape), 0, data_range)
    channel_axis = -1 if len(shape) == 3 else None
    expected = structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis)
    assert image.ssim(a, b, data_range) == pytest.approx(expected, abs=1e-12)
    assert image.ssim(a, a, data_range) == pytest.approx(1.0, abs=1e-12)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 7x7"):
        image.ssim(np.zeros((5, 9)), np.zeros((5, 9)))


def test_video_measures_pool_aligned_frames():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (3, 12, 14, 3)).astype(np.uint8)
    dec = np.clip(ref.astype(int) + rng.integers(-9, 10, ref.shape), 0, 255).astype(np.uint8)[:2]  # one frame short
    mse = np.mean((ref[:2].astype(float) - dec) ** 2)
    assert image.frames_psnr(ref, dec) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    per_frame = [structural_similarity(ref[i], dec[i], data_range=255, channel_axis=-1) for i in range(2)]
    assert image.frames_ssim(ref, dec) == pytest.approx(np.mean(per_frame), abs=1e-12)
    assert image.frames_psnr(ref, dec[:0]) is None and image.frames_ssim(ref[:0], dec) is None


def test_pesq_of_identical_signals_is_the_top_score_and_drops_with_noise():
    from pesq import pesq

    clean = speech_like()
    noisy = clean + 0.05 * np.random.default_rng(3).standard_normal(clean.size).astype(np.float32)
    assert audio.pesq_wb(clean, clean) == pytest.approx(4.644, abs=0.01)
    assert audio.pesq_wb(clean, noisy) == pytest.approx(pesq(RATE, clean, noisy, "wb"), abs=1e-6)
    assert audio.pesq_wb(clean, noisy) < 3.5
    assert audio.pesq_wb(np.zeros(RATE, np.float32), np.zeros(RATE, np.float32)) is None  # no speech: undefined
    with pytest.raises(ValueError, match="16 kHz"):
        audio.pesq_wb(clean, clean, sample_rate=8000)


def test_stoi_is_one_on_identity_and_compares_the_common_start():
    from pystoi import stoi

    clean = speech_like()
    noisy = clean + 0.1 * np.random.default_rng(4).standard_normal(clean.size).astype(np.float32)
    assert audio.stoi(clean, clean, RATE) == pytest.approx(1.0, abs=1e-6)
    longer = np.concatenate([noisy, np.ones(800, np.float32)])  # a codec's padding is ignored
    assert audio.stoi(clean, longer, RATE) == pytest.approx(stoi(clean, noisy, RATE), abs=1e-9)


def test_mel_distance_of_a_gain_is_its_power_ratio_in_db():
    clean = speech_like() + 0.05 * np.random.default_rng(6).standard_normal(RATE * 3 // 2).astype(np.float32)
    assert audio.mel_distance_db(clean, clean, RATE) == 0.0
    # Kaldi's fbank is linear up to the power spectrum: doubling the amplitude adds log(4) to every
    # bin above the log floor; the noise lifts every bin with a non-empty filter above it
    from operators.media.kaldi_fbank import EPS, fbank

    above_floor = float(np.mean(fbank(clean) > np.log(EPS) + 1e-3))
    assert 0.9 < above_floor <= 1.0
    expected = 10 * math.log10(4) * above_floor
    assert audio.mel_distance_db(clean, 2 * clean, RATE) == pytest.approx(expected, abs=1e-4)
    assert audio.mel_distance_db(clean[:100], clean[:100], RATE) is None  # shorter than one frame


@pytest.mark.parametrize("reference,hypothesis,errors", [
    ("one two three four", "one xx three", 2),  # one substitution, one deletion
    ("go stop", "go go stop stop", 2),  # two insertions
    ("yes", "yes", 0),
    ("", "", 0),
    ("", "five", 1),
    ("Front Center", "five seven", 2),
])
def test_word_errors_of_hand_made_pairs(reference, hypothesis, errors):
    got = text.word_errors(reference, hypothesis)
    assert got.errors == errors
    assert got.reference_words == len(reference.split())
    assert got.wer == (errors / len(reference.split()) if reference else float(errors > 0))


def test_word_error_rate_matches_jiwer():
    import jiwer

    rng = np.random.default_rng(5)
    vocab = ["zero", "one", "two", "stop", "go", "left"]
    for _ in range(30):
        ref = " ".join(rng.choice(vocab, rng.integers(1, 9)))
        hyp = " ".join(rng.choice(vocab, rng.integers(0, 9)))
        assert text.word_errors(ref, hyp).wer == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12)


def test_rate_figures_from_each_kind_of_tokenizer_meta():
    byte_tokens = rate.rate_of(np.zeros(1002, np.int32), {"num_bytes": 1000, "duration_s": 2.0})
    assert byte_tokens == rate.Rate(1002, 2.0, 501.0, 8000.0, 4000.0)
    image_tokens = rate.rate_of(np.zeros(256, np.int64), {"bits_per_image": 2048.0, "width": 128})
    assert image_tokens == rate.Rate(256, None, None, 2048.0, None)
    learned = rate.rate_of(np.zeros((100, 3), np.int32), {"bitrate_bps": 1100.0, "duration_s": 2.0})
    assert learned.num_tokens == 300 and learned.bits == 2200.0 and learned.tokens_per_s == 150.0
    assert rate.item_bits(10, {}, vocabulary_size=256) == 80.0
    with pytest.raises(ValueError, match="cannot tell the bits"):
        rate.item_bits(10, {})


def test_aggregates_per_setting_and_worst_samples():
    rows = [
        {"key": "a", "source": "s", "tokenizer": "opus", "setting": "bitrate=6000", "modality": "audio",
         "tokenizer_version": "v", "num_tokens": 10, "tokens_per_s": 5.0, "bits": 80.0, "bits_per_s": 40.0,
         "pesq_wb": 2.0, "stoi": 0.5, "asr_wer": 0.5, "asr_word_errors": 1, "asr_reference_words": 2},
        {"key": "b", "source": "s", "tokenizer": "opus", "setting": "bitrate=6000", "modality": "audio",
         "tokenizer_version": "v", "num_tokens": 30, "tokens_per_s": 15.0, "bits": 240.0, "bits_per_s": 120.0,
         "pesq_wb": None, "stoi": 0.7, "asr_wer": 0.0, "asr_word_errors": 0, "asr_reference_words": 6},
        {"key": "c", "source": "s", "tokenizer": "jpeg", "setting": "default", "modality": "image",
         "tokenizer_version": "v", "num_tokens": 7, "bits": 40.0, "psnr_db": math.inf, "ssim": 1.0},
        {"key": "d", "source": "s", "tokenizer": "jpeg", "setting": "default", "modality": "image",
         "tokenizer_version": "v", "num_tokens": 9, "bits": 56.0, "psnr_db": 30.0, "ssim": 0.9},
    ]
    table = {(e["tokenizer"], e["setting"]): e for e in aggregate.by_setting(rows)}
    opus, jpeg = table["opus", "bitrate=6000"], table["jpeg", "default"]
    assert opus["rows"] == 2 and opus["bits_per_s"] == 80.0 and opus["pesq_wb"] == 2.0
    assert opus["stoi"] == pytest.approx(0.6) and opus["asr_wer"] == pytest.approx(1 / 8)  # corpus WER
    assert jpeg["psnr_db"] == 30.0 and jpeg["lossless"] == 1 and jpeg["ssim"] == pytest.approx(0.95)
    worst = aggregate.worst_samples(rows, 1)
    assert worst["psnr_db"] == [{"key": "d", "source": "s", "tokenizer": "jpeg", "setting": "default", "value": 30.0}]
    assert worst["asr_wer"][0]["key"] == "a" and worst["stoi"][0]["key"] == "a"
    same_recording = [{**rows[0], "setting": s, "reference_wer": 1.0} for s in ("x", "y")]
    assert len(aggregate.worst_samples(same_recording + rows[1:], 5)["reference_wer"]) == 1


def test_measurer_compares_decisions_and_transcribes_each_reference_once():
    from operators.quality.measures import Measurer
    from operators.quality.round_trip import RoundTrip

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    brighter = frames + 200

    def classify(clip):  # a stand-in classifier: class 1 for bright clips
        return np.array([1.0, clip.mean() / 100])

    video = Measurer(classify_clip=classify)
    assert video.measure("video", RoundTrip(None, frames, frames))["x3d_top1_agree"] == 1.0
    assert video.measure("video", RoundTrip(None, frames, brighter))["x3d_top1_agree"] == 0.0
    heard = []

    def transcribe(wave):
        heard.append(len(wave))
        return "yes no" if len(heard) == 1 else "yes"

    wave = speech_like()
    figures = Measurer(transcribe).measure("audio", RoundTrip(None, wave, wave, RATE), "yes no")
    assert (figures["asr_text_original"], figures["asr_text_decoded"], figures["asr_wer"]) == ("yes no", "yes", 0.5)
    assert figures["reference_wer"] == 0.0 and len(heard) == 2
    assert figures["stoi"] == pytest.approx(1.0, abs=1e-6) and figures["mel_distance_db"] == 0.0
