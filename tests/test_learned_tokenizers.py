"""Kaldi fbank vs a from-the-definition reference; semantic-audio and dual-image tokenizers."""

import io
import math
import os
import wave

import numpy as np
import pytest
import torch

from operators.kernels import nearest, rvq
from operators.media import kaldi_fbank
from operators.tokenizers import dual_image as dit
from operators.tokenizers import semantic_audio as sat
from operators.tokenizers.base import MediaError, Tokenizer
from operators.tokenizers.codebooks import kmeans_plus_plus
from operators.tokenizers.encoders import DctPatchEncoder, load_patch_encoder
from operators.tokenizers.registry import build_tokenizer
from pipelines.tools.make_tokenizer_assets import synthetic_clip, synthetic_picture


def kaldi_reference(wave_: np.ndarray) -> np.ndarray:
    """Kaldi's fbank written frame by frame from its definition (slow, float64)."""
    sr, length, hop, n_fft = 16000, 400, 160, 512
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / 129
    banks = np.zeros((128, 257))
    for b in range(128):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for i in range(256):
            m = mel(i * sr / n_fft)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    window = [0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1)) for n in range(length)]
    dft = np.exp(-2j * np.pi * np.outer(np.arange(257), np.arange(n_fft)) / n_fft)
    rows = []
    for start in range(0, len(wave_) - length + 1, hop):
        frame = [float(v) for v in wave_[start:start + length]]
        mean = sum(frame) / length
        frame = [v - mean for v in frame]
        emph = [frame[0] - 0.97 * frame[0]] + [frame[n] - 0.97 * frame[n - 1] for n in range(1, length)]
        padded = np.zeros(n_fft)
        padded[:length] = [e * w for e, w in zip(emph, window)]
        power = np.abs(dft @ padded) ** 2
        rows.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return np.array(rows)


def test_fbank_matches_kaldi_definition():
    rng = np.random.default_rng(0)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3000) / 16000) + 0.05 * rng.standard_normal(3000))
    ours = kaldi_fbank.fbank(x.astype(np.float32))
    ref = kaldi_reference(x.astype(np.float32))
    assert ours.shape == ref.shape == (1 + (3000 - 400) // 160, 128)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_fbank_edges_and_silence():
    assert kaldi_fbank.fbank(np.zeros(399, np.float32)).shape == (0, 128)
    assert kaldi_fbank.fbank(np.zeros(400, np.float32)).shape == (1, 128)
    silent = kaldi_fbank.fbank(np.zeros(1600, np.float32))
    np.testing.assert_allclose(silent, np.log(np.finfo(np.float32).eps))
    assert kaldi_fbank.mel_banks()[:, -1].max() == 0  # Nyquist column unused, as in Kaldi


def test_patches_layout_and_round_trip():
    fb = np.random.default_rng(1).standard_normal((1500, 128)).astype(np.float32)
    patches, n_time = sat.mel_patches(fb)
    assert n_time == 94 and patches.shape == (94 * 8, 256)
    np.testing.assert_array_equal(patches[8 + 3].reshape(16, 16), fb[16:32, 48:64])
    np.testing.assert_array_equal(sat.unpatch(patches, 1500), fb)
    np.testing.assert_allclose(sat.denormalise(sat.normalise(fb)), fb, atol=1e-5)
    assert sat.normalise(np.array([-4.2677393], np.float32))[0] == 0


def _wav(channels: np.ndarray) -> bytes:
    pcm = (np.clip(np.atleast_2d(channels).T, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(pcm.tobytes())
    return buf.getvalue()


def _lloyd(x: np.ndarray, k: int, seed: int, iterations: int = 6) -> np.ndarray:
    c = kmeans_plus_plus(x, k, seed)
    for _ in range(iterations):
        idx, _ = nearest.assign(x, c)
        c = np.stack([x[idx == j].mean(0) if (idx == j).any() else c[j] for j in range(k)])
    return c.astype(np.float32)


def _audio_model(tmp_path, group: int, stages: int = 2, k: int = 32, clips=None) -> str:
    rng = np.random.default_rng(group)
    enc = DctPatchEncoder((16, 16), 16)
    feats, targets = [], []
    for clip in clips if clips is not None else [synthetic_clip(rng, 4.0) for _ in range(3)]:
        f, t, _ = sat.clip_rows(enc, clip, group)
        feats.append(f)
        targets.append(t)
    feats, targets = np.concatenate(feats), np.concatenate(targets)
    sem = kmeans_plus_plus(feats, k, 0)
    idx, _ = nearest.assign(feats, sem)
    table = np.stack([targets[idx == j].mean(0) if (idx == j).any() else np.zeros(targets.shape[1])
                      for j in range(k)]).astype(np.float32)
    residual, books = targets - table[idx], []
    for s in range(stages):
        books.append(_lloyd(residual, 16, s))
        residual = residual - books[-1][nearest.assign(residual, books[-1])[0]]
    folder = str(tmp_path / f"audio_g{group}_s{stages}")
    sat.save_model(folder, sat.SemanticAudioModel(group, enc, sem, table, tuple(books), {}))
    return folder


@pytest.mark.parametrize("rate,group", [(100, 1), (50, 2), (25, 4)])
def test_semantic_audio_tokens_layout_rate_and_reference(tmp_path, rate, group):
    tok = sat.SemanticAudioTokenizer(model_dir=_audio_model(tmp_path, group), device="cpu")
    assert isinstance(tok, Tokenizer)
    clip = synthetic_clip(np.random.default_rng(9), 3.0)
    out = tok.encode(_wav(clip))
    wave_ = sat.decode_first_channel(_wav(clip))
    frames = kaldi_fbank.num_frames(wave_.size)
    assert out.tokens.shape == (math.ceil(frames / 16) * 8 // group, 3)
    assert out.meta["rate"] == rate and out.meta["rows_per_s"] == 50 / group
    assert out.meta["bitrate_bps"] == pytest.approx(50 / group * (5 + 4 + 4))
    feats, targets, _ = sat.clip_rows(tok.model.encoder, wave_, group)
    sem = nearest.assign_reference(feats, tok.model.semantic)[0]
    np.testing.assert_array_equal(out.tokens[:, 0], sem)
    residual = targets - tok.model.semantic_decoder[sem]
    np.testing.assert_array_equal(out.tokens[:, 1:], rvq.rvq_encode_reference(residual, tok.model.acoustic))
    np.testing.assert_array_equal(tok.encode(_wav(clip)).tokens, out.tokens)


def test_acoustic_tokens_improve_reconstruction_and_decode_to_audio(tmp_path):
    clip = synthetic_clip(np.random.default_rng(5), 3.0)
    ref = kaldi_fbank.fbank(clip)
    errors = []
    for stages in (0, 1, 2):
        tok = sat.SemanticAudioTokenizer(model_dir=_audio_model(tmp_path, 1, stages, clips=[clip]),
                                         device="cpu", griffin_lim_iterations=4)
        out = tok.encode_wave(clip)
        errors.append(float(np.mean((ref - tok.decode_mel(out.tokens, ref.shape[0])) ** 2)))
    assert errors[0] > errors[1] > errors[2]
    audio = tok.decode(out.tokens, ref.shape[0])
    assert audio.dtype == np.float32 and abs(audio.size - clip.size) < 400 and np.isfinite(audio).all()


def test_first_channel_only_and_bad_audio(tmp_path):
    tok = sat.SemanticAudioTokenizer(model_dir=_audio_model(tmp_path, 1), device="cpu")
    rng = np.random.default_rng(3)
    left, right = synthetic_clip(rng, 1.0), synthetic_clip(rng, 1.0)
    np.testing.assert_array_equal(tok.encode(_wav(np.stack([left, right]))).tokens,
                                  tok.encode(_wav(left)).tokens)
    with pytest.raises(MediaError):
        tok.encode(b"not audio at all")
    with pytest.raises(MediaError, match="shorter than one"):
        tok.encode(_wav(np.zeros(100)))


def test_plugin_encoders_load_from_local_files(tmp_path):
    weight = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    bias = np.arange(16, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    from safetensors.numpy import save_file

    save_file({"weight": weight, "bias": bias}, str(tmp_path / "enc.safetensors"))
    torch.save({"weight": torch.from_numpy(weight)}, str(tmp_path / "enc_state.pt"))
    scripted = torch.jit.script(torch.nn.Linear(256, 16))
    scripted.save(str(tmp_path / "enc_ts.pt"))
    np.testing.assert_allclose(load_patch_encoder(str(tmp_path / "enc.safetensors"))(x), x @ weight.T + bias,
                               atol=1e-4)
    np.testing.assert_allclose(load_patch_encoder(str(tmp_path / "enc_state.pt"))(x), x @ weight.T, atol=1e-4)
    with torch.no_grad():
        expected = scripted(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_patch_encoder(str(tmp_path / "enc_ts.pt"))(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        load_patch_encoder(str(tmp_path / "missing.pt"))


def test_model_folder_round_trip_and_encoder_override(tmp_path):
    rng = np.random.default_rng(1)
    enc = DctPatchEncoder((8, 8, 3), 18)
    semantic, pixel = rng.normal(size=(4, 18)).astype(np.float32), rng.random((4, 192)).astype(np.float32)
    folder = str(tmp_path / "dual")
    dit.save_model(folder, dit.DualImageModel(64, 8, 2.0, 0.5, enc, semantic, pixel, {"note": "x"}), float16=True)
    assert np.load(os.path.join(folder, "pixel.npy")).dtype == np.float16
    model = dit.load_model(folder)
    np.testing.assert_array_equal(model.semantic, semantic)  # the semantic codebook stays float32
    np.testing.assert_allclose(model.pixel, pixel, atol=1e-3)
    assert model.pixel.dtype == np.float32 and model.info["note"] == "x"
    assert (model.semantic_weight, model.pixel_weight) == (2.0, 0.5)
    patches = rng.random((3, 192)).astype(np.float32)
    np.testing.assert_array_equal(model.encoder(patches), enc(patches))
    weight = rng.normal(size=(18, 192)).astype(np.float32)
    torch.save({"weight": torch.from_numpy(weight)}, str(tmp_path / "enc.pt"))
    override = dit.load_model(folder, encoder_path=str(tmp_path / "enc.pt"))
    np.testing.assert_allclose(override.encoder(patches), patches @ weight.T, atol=1e-4)
    with pytest.raises(ValueError, match="fit-tokenizer --modality audio"):
        sat.load_model(str(tmp_path / "empty"))


def _image_model(tmp_path, ws=1.0, wp=1.0) -> str:
    rng = np.random.default_rng(0)
    enc = DctPatchEncoder((8, 8, 3), 18)
    rows = [dit.joint_features(enc, dit.image_patches(
        dit.crop_square(dit.decode_image(synthetic_picture(rng)), 64), 8), ws, wp) for _ in range(6)]
    joint = kmeans_plus_plus(np.concatenate(rows), 48, 0)
    semantic, pixel = dit.split_joint(joint, 18, ws, wp)
    folder = str(tmp_path / f"image_{ws}_{wp}")
    dit.save_model(folder, dit.DualImageModel(64, 8, ws, wp, enc, semantic, pixel, {}))
    return folder


def test_dual_image_shared_index_is_weighted_argmin(tmp_path):
    folder = _image_model(tmp_path)
    data = synthetic_picture(np.random.default_rng(42))
    for ws, wp in ((1.0, 1.0), (3.0, 0.5), (1.0, 0.0)):
        tok = dit.DualImageTokenizer(model_dir=folder, semantic_weight=ws, pixel_weight=wp, device="cpu")
        out = tok.encode(data)
        m = tok.model
        pixels = dit.crop_square(dit.decode_image(data), 64)
        patches = dit.image_patches(pixels, 8)
        sem = m.encoder(patches).astype(np.float64)
        d_sem = ((sem[:, None] - m.semantic[None]) ** 2).mean(-1)
        d_pix = ((patches[:, None] - m.pixel[None]) ** 2).mean(-1)
        total = ws * d_sem + wp * d_pix
        chosen = total[np.arange(len(total)), out.tokens]
        np.testing.assert_allclose(chosen, total.min(1), rtol=1e-4, atol=1e-6)
        recon = tok.decode(out.tokens)
        assert recon.shape == (64, 64, 3) and out.tokens.shape == (64,)
        assert out.meta["psnr_db"] == pytest.approx(dit.psnr(pixels, m.pixel[out.tokens].reshape(8, 8, 8, 8, 3)
                                                            .transpose(0, 2, 1, 3, 4).reshape(64, 64, 3)))
    with pytest.raises(MediaError):
        tok.encode(b"\x89PNG garbage")


def test_registry_builds_learned_tokenizers_with_shipped_defaults():
    for name, modality in (("semantic-audio", "audio"), ("dual-image", "image")):
        tok = build_tokenizer(name)
        assert tok.modality == modality and isinstance(tok, Tokenizer)
    audio_dir = sat.DEFAULT_MODEL_DIR
    if not os.path.isfile(os.path.join(audio_dir, "model.json")):
        pytest.fail("shipped default models missing: run `mediabeam make-tokenizer-assets`")
    clip = synthetic_clip(np.random.default_rng(11), 2.0)
    out = build_tokenizer("semantic-audio").encode(_wav(clip))
    assert out.tokens.shape[1] == 3 and out.meta["bitrate_bps"] > 0
    img = build_tokenizer("dual-image").encode(synthetic_picture(np.random.default_rng(12)))
    assert img.tokens.ndim == 1 and img.meta["psnr_db"] > 15
