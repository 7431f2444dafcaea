"""operators.media (audio, video, image, probe): ffmpeg/Pillow decoding against references built in the test."""

import io
import os
import subprocess
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from operators.media import ffmpeg_io as media_decode
from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import MediaBudgetExceeded, ffmpeg_binary
from operators.media.image import decode_image
from operators.media.probe import probe
from operators.media.video import iter_video_frames
from operators.tokenizers.base import MediaError
from pipelines.tools.make_samples import audio_only_mp4, bomb_png, float_wav_bytes, synthetic_video, wav_bytes

RATE = 22050


def _tone(freq: float = 440.0, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def _lossless_video(frames: np.ndarray, fps: int, container: str = "matroska") -> bytes:
    """Encodes RGB frames losslessly (FFV1, RGB) so decoded pixels can be compared exactly."""
    count, height, width, _ = frames.shape
    args = [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:", "-c:v", "ffv1", "-pix_fmt", "bgr0",
        "-f", container, "pipe:",
    ]
    return subprocess.run(args, input=frames.tobytes(), capture_output=True, check=True).stdout


def _color_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _children() -> list:
    pid = os.getpid()
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as handle:
            names += handle.read().split()
    return names


def test_ffmpeg_binary_lookup_order(monkeypatch):
    bundled = ffmpeg_binary()
    assert os.access(bundled, os.X_OK)
    monkeypatch.setenv(media_decode.FFMPEG_ENV, bundled)
    assert ffmpeg_binary() == bundled
    monkeypatch.setenv(media_decode.FFMPEG_ENV, "/nonexistent/ffmpeg")
    with pytest.raises(FileNotFoundError, match="MEDIABEAM_FFMPEG"):
        ffmpeg_binary()
    assert ffmpeg_binary(bundled) == bundled


def test_decode_audio_resamples_and_keeps_the_tone():
    samples = decode_audio(wav_bytes(_tone(440.0, 1.0), RATE), sample_rate=16000)
    assert samples.dtype == np.float32 and abs(len(samples) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440.0) < 2.0
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_decode_audio_max_seconds_and_path_input(tmp_path):
    path = tmp_path / "tone.wav"
    path.write_bytes(wav_bytes(_tone(seconds=2.0), RATE))
    from_path = decode_audio(str(path), sample_rate=8000, max_seconds=0.5)
    from_bytes = decode_audio(path.read_bytes(), sample_rate=8000, max_seconds=0.5)
    assert len(from_path) == 4000
    np.testing.assert_array_equal(from_path, from_bytes)


def test_decode_audio_silence_is_zeros():
    samples = decode_audio(wav_bytes(np.zeros(RATE), RATE))
    assert samples.size > 0 and not samples.any()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty media payload"),
        (bytes(range(256)) * 8, "not a decodable media file"),
        (float_wav_bytes(np.array([0.1, np.nan, 0.2, np.inf] * 400, dtype=np.float32), 16000), "NaN or infinite"),
    ],
    ids=["empty", "garbage", "nan"],
)
def test_decode_audio_rejects_bad_payloads(payload, message):
    with pytest.raises(MediaError, match=message):
        decode_audio(payload)


def test_decode_audio_no_audio_stream():
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio(_lossless_video(_color_frames(3), fps=10))


def test_iter_video_frames_exact_pixels():
    frames = _color_frames(6)
    decoded = list(iter_video_frames(_lossless_video(frames, fps=10), fps=None, width=48, height=32))
    assert len(decoded) == 6
    np.testing.assert_array_equal(np.stack(decoded), frames)


def test_iter_video_frames_fps_size_and_max_seconds():
    video = _lossless_video(_color_frames(20), fps=10)
    halved = list(iter_video_frames(video, fps=5, width=24, height=16))
    assert len(halved) == 10 and halved[0].shape == (16, 24, 3) and halved[0].dtype == np.uint8
    assert len(list(iter_video_frames(video, fps=10, width=24, height=16, max_seconds=1.0))) == 10


def test_iter_video_frames_mp4_bytes_equal_path(tmp_path):
    video = synthetic_video(np.random.default_rng(1), with_audio=True)
    path = tmp_path / "clip.mp4"
    path.write_bytes(video)
    from_bytes = np.stack(list(iter_video_frames(video, 5, 32, 24)))
    from_path = np.stack(list(iter_video_frames(str(path), 5, 32, 24)))
    np.testing.assert_array_equal(from_bytes, from_path)


def test_iter_video_frames_early_close_reaps_ffmpeg():
    before = set(_children())
    frames = iter_video_frames(_lossless_video(_color_frames(30), fps=10), fps=None, width=48, height=32)
    first = next(frames)
    assert first.shape == (32, 48, 3)
    frames.close()
    assert set(_children()) <= before


def test_iter_video_frames_errors():
    with pytest.raises(MediaError, match="no video stream"):
        list(iter_video_frames(audio_only_mp4(0.5), 3, 16, 16))
    with pytest.raises(MediaError, match="not a decodable media file"):
        list(iter_video_frames(b"\x00\x01garbage" * 100, 3, 16, 16))
    with pytest.raises(MediaError, match="empty"):
        list(iter_video_frames(b"", 3, 16, 16))


def test_decode_image_exact_and_rgb():
    rgba = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    image = decode_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(image), rgba[..., :3])


def test_decode_image_refuses_bombs_before_allocating():
    tracemalloc.start()
    with pytest.raises(MediaBudgetExceeded, match="budget image_pixels=64000000 exceeded: Pillow refused"):
        decode_image(bomb_png(30000, 30000))
    with pytest.raises(MediaError, match="budget image_pixels=64000000 exceeded: the image declares 9000x8000"):
        decode_image(bomb_png(9000, 8000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000


@pytest.mark.parametrize(
    "payload, message",
    [(b"", "empty"), (b"not an image" * 50, "not a decodable image")],
    ids=["empty", "garbage"],
)
def test_decode_image_rejects_bad_payloads(payload, message):
    with pytest.raises(MediaError, match=message):
        decode_image(payload)


def test_decode_image_truncated_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(_color_frames(1, 64, 64)[0]).save(buffer, format="JPEG")
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_probe_video_with_audio_and_audio_only():
    video = synthetic_video(np.random.default_rng(2), with_audio=True)
    info = probe(video)
    assert info["has_video"] and info["has_audio"]
    assert info["width"] in (96, 128, 160, 192) and info["fps"] in (10.0, 15.0)
    frames = len(list(iter_video_frames(video, None, 16, 16)))
    assert info["duration"] == pytest.approx(frames / info["fps"], abs=0.1)
    audio = probe(wav_bytes(_tone(), RATE))
    assert audio["has_audio"] and not audio["has_video"] and audio["sample_rate"] == RATE
    with pytest.raises(MediaError, match="not a decodable media file"):
        probe(b"garbage" * 100)


def test_decode_audio_budgets_refuse_long_payloads_and_allow_truncation(tmp_path):
    two_seconds = wav_bytes(_tone(seconds=2.0), RATE)
    with pytest.raises(MediaBudgetExceeded, match="budget media_seconds=1.5 exceeded: the payload decodes to more"):
        decode_audio(two_seconds, media_seconds=1.5)  # piped WAV: no declared duration, the output is counted
    path = tmp_path / "two.wav"
    path.write_bytes(two_seconds)
    declared = "budget media_seconds=1.5 exceeded: the payload declares 2.0 s"
    with pytest.raises(MediaBudgetExceeded, match=declared) as caught:
        decode_audio(str(path), media_seconds=1.5)
    assert caught.value.budget == "media_seconds"
    with pytest.raises(MediaBudgetExceeded, match="budget audio_samples=16000 exceeded"):
        decode_audio(two_seconds, sample_rate=16000, audio_samples=16000)
    assert len(decode_audio(two_seconds, sample_rate=8000, max_seconds=1.0, media_seconds=1.5)) == 8000
    assert len(decode_audio(two_seconds, sample_rate=8000, media_seconds=2.0)) == 16000


def test_iter_video_frames_budgets():
    video = _lossless_video(_color_frames(20), fps=10)
    with pytest.raises(MediaBudgetExceeded, match="budget video_frames=5 exceeded"):
        list(iter_video_frames(video, fps=None, width=16, height=16, video_frames=5))
    with pytest.raises(MediaBudgetExceeded, match="budget media_seconds=1 exceeded"):
        list(iter_video_frames(video, fps=10, width=16, height=16, media_seconds=1.0))
    assert len(list(iter_video_frames(video, fps=10, width=16, height=16, max_seconds=1.0, media_seconds=1.0))) == 10


def test_video_source_frames_are_held_to_the_pixel_budget():
    from operators.tokenizers.avc import AvcTokenizer

    video = _lossless_video(_color_frames(3), fps=10)
    with pytest.raises(MediaBudgetExceeded, match="budget image_pixels=1000 exceeded: decoding the video needs 48x32 frames"):
        list(iter_video_frames(video, fps=None, width=16, height=16, image_pixels=1000))
    with pytest.raises(MediaBudgetExceeded, match="budget image_pixels=1000 exceeded"):
        AvcTokenizer(seconds=1, image_pixels=1000).encode(video)
    assert len(list(iter_video_frames(video, fps=None, width=16, height=16, image_pixels=64 * 64))) == 3  # decoders may align sizes
