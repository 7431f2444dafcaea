"""JPEG-LM, AVC-LM and Opus tokenizers: round trips, determinism, hostile inputs, registry."""

import io
import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import ffmpeg_binary
from operators.media.video import iter_video_frames
from operators.tokenizers.avc import AvcTokenizer, count_frames
from operators.tokenizers.base import MediaError, Tokenizer
from operators.tokenizers.byte_tokens import BOS, EOS, bytes_to_tokens, tokens_to_bytes
from operators.tokenizers.jpeg import JpegTokenizer
from operators.tokenizers.opus import (
    OpusTokenizer,
    ogg_crc,
    ogg_packets,
    opus_packet_samples,
    pack_packets,
    unpack_packets,
)
from operators.tokenizers.registry import (
    DEFAULT_TOKENIZER_FOR_MODALITY,
    TOKENIZERS,
    build_tokenizer,
    tokenizer_modality,
)
from pipelines.tools.make_samples import audio_only_mp4, bomb_png, float_wav_bytes, synthetic_image, wav_bytes


def _image_bytes(width: int = 320, height: int = 200, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def _lavfi_mp4(source: str, seconds: float) -> bytes:
    args = [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
        f"{source}=size=320x240:rate=12:duration={seconds}", "-c:v", "libx264", "-threads", "1",
        "-pix_fmt", "yuv420p", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "pipe:",
    ]
    return subprocess.run(args, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def clip() -> bytes:
    return _lavfi_mp4("testsrc2", 2.0)


def _noise_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    noise = np.random.default_rng(0).normal(0, 0.2, int(rate * seconds))
    return wav_bytes(np.convolve(noise, np.ones(8) / 8, "same"), rate)


def _markers(jpeg: bytes) -> list:
    """(marker, segment) pairs up to the start of scan."""
    out, position = [], 2
    while jpeg[position + 1] != 0xDA:
        length = struct.unpack_from(">H", jpeg, position + 2)[0]
        out.append((jpeg[position + 1], jpeg[position : position + 2 + length]))
        position += 2 + length
    return out


# JPEG-LM -------------------------------------------------------------------------------


def test_jpeg_round_trip_equals_pillow_decode_of_full_jpeg():
    tokenizer = JpegTokenizer()
    for seed, (width, height) in enumerate([(320, 200), (200, 333), (256, 256)]):
        data = _image_bytes(width, height, seed)
        out = tokenizer.encode(data)
        square, size = tokenizer.prepare(data)
        reference = Image.open(io.BytesIO(tokenizer.full_jpeg(square))).convert("RGB")
        decoded = tokenizer.decode(out.tokens)
        assert decoded.size == (256, 256) and size == (width, height)
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(reference))
        assert out.meta == {"width": width, "height": height, "size": 256, "num_bytes": len(out.tokens) - 2}


def test_jpeg_tokens_are_table_free_bytes_with_restart_markers():
    tokenizer = JpegTokenizer()
    tokens = tokenizer.encode(_image_bytes()).tokens
    assert tokens.dtype == np.int32 and tokens[0] == BOS and tokens[-1] == EOS
    assert tokens[1:-1].min() >= 0 and tokens[1:-1].max() <= 255
    payload = tokens_to_bytes(tokens)
    kinds = [marker for marker, _ in _markers(payload)]
    assert 0xDB not in kinds and 0xC4 not in kinds and 0xDD in kinds  # no DQT/DHT, has DRI
    scan = payload[payload.index(b"\xff\xda") :]
    restarts = sum(scan.count(bytes([0xFF, 0xD0 + i])) for i in range(8))
    assert restarts == 256 // 16 - 1  # one per MCU row (16-pixel rows at 4:2:0), none after the last
    full = tokenizer.full_jpeg(tokenizer.prepare(_image_bytes())[0])
    full_tables = [seg for marker, seg in _markers(full) if marker in (0xDB, 0xC4)]
    shared_tables = [seg for marker, seg in _markers(tokenizer.tables[:-2] + b"\xff\xda") if marker in (0xDB, 0xC4)]
    assert sorted(full_tables) == sorted(shared_tables)


def test_jpeg_deterministic_configurable_and_picklable():
    data = _image_bytes(seed=5)
    tokenizer = JpegTokenizer(size=64, quality=50)
    copy = pickle.loads(pickle.dumps(tokenizer))
    first, second = tokenizer.encode(data).tokens, copy.encode(data).tokens
    np.testing.assert_array_equal(first, second)
    assert copy.decode(first).size == (64, 64)
    assert tokenizer.version != JpegTokenizer().version
    assert len(first) < len(JpegTokenizer().encode(data).tokens)


@pytest.mark.parametrize(
    "payload, message",
    [(b"", "empty"), (b"\xff\xd8garbage" * 40, "not a decodable image|corrupt"), (bomb_png(), "budget image_pixels")],
    ids=["empty", "garbage", "bomb"],
)
def test_jpeg_hostile_inputs(payload, message):
    with pytest.raises(MediaError, match=message):
        JpegTokenizer().encode(payload)


def test_jpeg_decode_rejects_foreign_tokens():
    with pytest.raises(MediaError, match="SOI"):
        JpegTokenizer().decode(np.array([BOS, 1, 2, 3, EOS]))
    with pytest.raises(MediaError, match="outside 0-255"):
        JpegTokenizer().decode(np.array([BOS, 255, 216, 300, EOS]))


# AVC-LM --------------------------------------------------------------------------------


def _nal_types(annexb: bytes) -> list:
    return [annexb[i + 3] & 0x1F for i in range(len(annexb) - 3) if annexb[i : i + 3] == b"\x00\x00\x01"]


def test_avc_recipe_structure(clip):
    tokenizer = AvcTokenizer()
    out = tokenizer.encode(clip)
    annexb = tokens_to_bytes(out.tokens)
    types = _nal_types(annexb)
    assert types[:2] == [7, 8] and 5 in types and 6 not in types  # SPS, PPS, IDR; banner SEI gone
    assert out.meta["num_frames"] == 6 and out.meta["duration_s"] == pytest.approx(2.0)
    assert (out.meta["width"], out.meta["height"]) == (320, 240)  # the source's size
    assert out.meta["source_duration_s"] in (None, pytest.approx(2.0, abs=0.1))
    slices = sum(t in (1, 5) for t in types)
    assert slices == 6 * (256 // 16) * (144 // 16)  # one macroblock per slice
    assert annexb[5] == 66  # profile_idc of the SPS: baseline


def test_avc_round_trip_matches_letterboxed_source(clip):
    tokenizer = AvcTokenizer()
    frames = tokenizer.decode(tokenizer.encode(clip).tokens)
    assert frames.shape == (6, 144, 256, 3) and frames.dtype == np.uint8
    # 320x240 fits as 192x144, padded with 32 black columns on each side.
    assert frames[:, :, :30].max() < 40 and frames[:, :, -30:].max() < 40
    source = np.stack(list(iter_video_frames(clip, 3, 192, 144)))
    error = np.mean((frames[:, :, 32:224].astype(float) - source.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / error) > 22


def test_avc_first_five_seconds_only():
    out = AvcTokenizer().encode(_lavfi_mp4("testsrc", 7.0))
    assert out.meta["num_frames"] == 15 and out.meta["duration_s"] == pytest.approx(5.0)


def test_avc_hostile_inputs():
    with pytest.raises(MediaError, match="no video stream"):
        AvcTokenizer().encode(audio_only_mp4(0.5))
    with pytest.raises(MediaError, match="not a decodable media file"):
        AvcTokenizer().encode(np.random.default_rng(0).bytes(3000))
    with pytest.raises(MediaError, match="no H.264 picture"):
        AvcTokenizer().decode(np.array([BOS, 0, 0, 1, 9, EOS]))
    assert count_frames(b"") == 0


# Opus ----------------------------------------------------------------------------------


def test_opus_round_trip_is_aligned_and_exact_length():
    tokenizer = OpusTokenizer()
    data = _noise_wav(1.25)
    out = tokenizer.encode(data)
    reference = decode_audio(data, 16000)
    waveform = tokenizer.decode(out.tokens)
    assert waveform.shape == reference.shape == (20000,)
    correlations = [np.corrcoef(reference[200:-200], np.roll(waveform, lag)[200:-200])[0, 1] for lag in range(-3, 4)]
    assert int(np.argmax(correlations)) == 3 and correlations[3] > 0.85
    assert out.meta["num_packets"] == 63 and out.meta["duration_s"] == pytest.approx(1.25)
    payload = tokens_to_bytes(out.tokens)
    assert {len(p) for p in unpack_packets(payload)[2]} == {16000 * 20 // 1000 // 8}  # CBR: 40 bytes


def test_opus_ogg_rebuild_matches_encoder_stream():
    tokenizer = OpusTokenizer()
    waveform = decode_audio(_noise_wav(0.5), 16000)
    args = [
        ffmpeg_binary(), "-loglevel", "error", "-f", "f32le", "-ar", "16000", "-ac", "1", "-i", "pipe:",
        "-c:a", "libopus", "-b:a", "16000", "-vbr", "off", "-f", "ogg", "pipe:",
    ]
    stream = subprocess.run(args, input=waveform.tobytes(), capture_output=True, check=True).stdout
    page_end = 27 + stream[26] + sum(stream[27 : 27 + stream[26]])
    page = bytearray(stream[:page_end])
    stored = struct.unpack_from("<I", page, 22)[0]
    page[22:26] = b"\0\0\0\0"
    assert ogg_crc(bytes(page)) == stored
    ours = tokenizer.to_ogg(bytes_to_tokens(tokenizer.to_payload(waveform)))
    assert list(ogg_packets(ours))[2:] == list(ogg_packets(stream))[2:]
    assert struct.unpack_from("<q", stream, stream.rindex(b"OggS") + 6) == struct.unpack_from(
        "<q", ours, ours.rindex(b"OggS") + 6
    )  # same final granule position, so the same end trimming


def test_opus_framing_helpers():
    packets = [b"\x78" + bytes(39), b"\x7b\x03" + bytes(300)]
    assert unpack_packets(pack_packets(312, 1234, packets)) == (312, 1234, packets)
    assert opus_packet_samples(packets[0]) == 960 and opus_packet_samples(packets[1]) == 3 * 960
    with pytest.raises(MediaError, match="ends inside"):
        unpack_packets(pack_packets(312, 10, packets)[:-5])


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.lists(st.binary(min_size=1, max_size=1400), max_size=6),
)
def test_packet_and_byte_framing_invert(pre_skip, num_samples, packets):
    payload = pack_packets(pre_skip, num_samples, packets)
    assert unpack_packets(payload) == (pre_skip, num_samples, packets)
    assert tokens_to_bytes(bytes_to_tokens(payload)) == payload


def test_opus_silence_and_hostile_inputs():
    tokenizer = OpusTokenizer()
    silent = tokenizer.decode(tokenizer.encode(wav_bytes(np.zeros(8000), 16000)).tokens)
    assert silent.shape == (8000,) and np.abs(silent).max() < 1e-3
    nan = np.full(4000, 0.1, dtype=np.float32)
    nan[::7] = np.nan
    with pytest.raises(MediaError, match="NaN"):
        tokenizer.encode(float_wav_bytes(nan, 16000))
    with pytest.raises(MediaError, match="empty"):
        tokenizer.encode(b"")
    with pytest.raises(MediaError, match="no audio stream"):
        tokenizer.encode(_lavfi_mp4("testsrc", 0.5))


# Determinism across processes and the registry --------------------------------------------

_ENCODE_IN_CHILD = """
import hashlib, json, sys
from operators.tokenizers.registry import build_tokenizer
paths = json.loads(sys.argv[1])
print(json.dumps({name: hashlib.sha256(build_tokenizer(name).encode(open(path, "rb").read()).tokens.tobytes()).hexdigest()
                  for name, path in paths.items()}))
"""


def test_tokens_identical_in_a_fresh_process(tmp_path, clip):
    import hashlib

    inputs = {"jpeg": synthetic_image(np.random.default_rng(4)), "avc": clip, "opus": _noise_wav(0.6)}
    paths = {}
    for name, payload in inputs.items():
        paths[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(payload)
    here = {name: hashlib.sha256(build_tokenizer(name).encode(payload).tokens.tobytes()).hexdigest()
            for name, payload in inputs.items()}
    child = subprocess.run([sys.executable, "-c", _ENCODE_IN_CHILD, json.dumps(paths)],
                           capture_output=True, check=True, text=True)
    assert json.loads(child.stdout) == here


def test_registry():
    assert set(DEFAULT_TOKENIZER_FOR_MODALITY.values()) <= set(TOKENIZERS)
    for modality, name in DEFAULT_TOKENIZER_FOR_MODALITY.items():
        tokenizer = build_tokenizer(name)
        assert isinstance(tokenizer, Tokenizer) and tokenizer.modality == modality == tokenizer_modality(name)
        assert tokenizer.name and tokenizer.version
        clone = pickle.loads(pickle.dumps(tokenizer))
        assert (clone.name, clone.version) == (tokenizer.name, tokenizer.version)
    assert build_tokenizer("opus", bitrate=24000).bitrate == 24000
    for name, bad in (("jpeg", {"quality": 0}), ("avc", {"width": 255}), ("opus", {"frame_ms": 7})):
        with pytest.raises(ValueError):
            build_tokenizer(name, **bad)
    with pytest.raises(ValueError, match="unknown tokenizer 'mp3'; known tokenizers") as error:
        build_tokenizer("mp3")
    assert all(repr(name) in str(error.value) for name in TOKENIZERS)
