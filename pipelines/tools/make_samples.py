"""Writes the embedded sample shards: synthetic images, videos and audio, no download.

Not a Beam pipeline: a small deterministic generator that ``make demo`` and the tests use.
Media come from Pillow drawings, ffmpeg's ``lavfi`` test sources (``testsrc``,
``testsrc2``, ``smptebars``, ``sine``) and NumPy tones, so the same seed gives
byte-identical shards. Samples are captioned images, videos with sound, audio with
transcripts, audio-only MP4s, text-only samples and exact duplicates; each has a caption
(``.txt``, or a ``.json`` ``transcript`` field for audio) and a ``.json`` record. The last
sample of every shard is deliberately broken (garbage bytes named ``.jpg``/``.mp4``/``.wav``
or a zero-byte member) so a demo run shows dead letters. A broken sample's key starts with
:data:`DELIBERATELY_BROKEN_PREFIX` and its ``.json`` record says ``"deliberately_broken": true``,
so a job's summary can tell the demo's deliberate dead letters from real ones.

:func:`write_hostile_shards` builds the adversarial set the accounting tests use.

Usage::

    mediabeam make-samples --output samples/ --num-shards 4 --samples-per-shard 8 --seed 0
"""

import argparse
import io
import json
import os
import struct
import tarfile
import tempfile
import time
import wave
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw

from operators.media.ffmpeg_io import ffmpeg_args, run_ffmpeg
from pipelines.common import ConfigError

Member = Tuple[str, bytes]
DELIBERATELY_BROKEN_PREFIX = "broken-"
_BROKEN_KINDS = ("garbage.jpg", "garbage.mp4", "garbage.wav", "empty.jpg")
_VIDEO_SIZES = ((160, 120), (192, 108), (128, 128), (96, 160))
_VIDEO_SOURCES = ("testsrc", "testsrc2", "smptebars")
_WORDS = ("red", "blue", "green", "circle", "square", "tone", "chirp", "bars", "moving", "bright", "dark")


def write_tar(path: str, members: Sequence[Member]) -> int:
    """Writes ``(name, bytes)`` members to a tar atomically with fixed metadata.

    Member order is kept and owner, mode and mtime are fixed, so equal members give a
    byte-identical file. The file is written under a temporary name and renamed.

    Returns:
        The size of the written file in bytes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 1_700_000_000, 0o644
                tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return os.path.getsize(path)


def draw_random_shapes(image: Image.Image, rng: np.random.Generator, count: int, grow: int) -> None:
    """Draws ``count`` filled ellipses or rectangles of random place and colour onto ``image``.

    Each shape's box is grown by ``grow`` pixels right and down so none is empty.
    """
    width, height = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + grow, y1 + grow), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))


def synthetic_image(rng: np.random.Generator) -> bytes:
    """A JPEG of random rectangles and ellipses on a random background (random size)."""
    width, height = int(rng.integers(96, 480)), int(rng.integers(96, 360))
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw_random_shapes(image, rng, int(rng.integers(3, 9)), grow=1)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV of float samples in ``[-1, 1]``."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def float_wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """32-bit IEEE-float mono WAV (format tag 3); stores NaN/inf values unchanged."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def synthetic_audio(rng: np.random.Generator) -> bytes:
    """A WAV of a few tones or a chirp with light noise (random rate and length)."""
    sample_rate = int(rng.choice([16000, 22050, 44100]))
    t = np.arange(int(sample_rate * rng.uniform(1.0, 3.0))) / sample_rate
    if rng.random() < 0.5:
        signal = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 2000, int(rng.integers(1, 4))))
    else:
        f0, f1 = rng.uniform(100, 600), rng.uniform(1000, 4000)
        signal = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    signal = signal / max(1.0, float(np.abs(signal).max())) * 0.6 + rng.normal(0, 0.01, t.size)
    return wav_bytes(signal, sample_rate)


def _ffmpeg_to_bytes(streams: List[Any], suffix: str, **output: Any) -> bytes:
    """Runs an ffmpeg graph writing to a temporary file (mp4 needs a seekable output)."""
    fd, path = tempfile.mkstemp(prefix="mediabeam-sample-", suffix=suffix)
    os.close(fd)
    try:
        stream = ffmpeg.output(*streams, path, fflags="+bitexact", flags="+bitexact", map_metadata=-1, **output)
        proc = run_ffmpeg(ffmpeg_args(stream.overwrite_output(), None, False), None)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed making a sample: {proc.stderr.decode(errors='replace')[-500:]}")
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def synthetic_video(rng: np.random.Generator, with_audio: Optional[bool] = None) -> bytes:
    """A short H.264 MP4 from an ffmpeg test source, optionally with a sine audio track."""
    width, height = _VIDEO_SIZES[int(rng.integers(len(_VIDEO_SIZES)))]
    source = _VIDEO_SOURCES[int(rng.integers(len(_VIDEO_SOURCES)))]
    duration = round(float(rng.uniform(1.0, 2.5)), 2)
    rate = int(rng.choice([10, 15]))
    streams = [ffmpeg.input(f"{source}=size={width}x{height}:rate={rate}:duration={duration}", f="lavfi")]
    options: Dict[str, Any] = {
        "vcodec": "libx264", "pix_fmt": "yuv420p", "preset": "veryfast", "crf": 30,
        "threads": 1, "movflags": "+faststart",
    }
    if with_audio if with_audio is not None else rng.random() < 0.5:
        frequency = int(rng.integers(200, 1200))
        streams.append(ffmpeg.input(f"sine=frequency={frequency}:duration={duration}", f="lavfi"))
        options.update({"acodec": "aac", "b:a": "48k", "ar": 22050})
    return _ffmpeg_to_bytes(streams, ".mp4", **options)


def audio_only_mp4(duration: float = 1.0, frequency: int = 440) -> bytes:
    """An MP4 (AAC in ISO-BMFF) with an audio stream (a sine tone) and no video stream."""
    tone = ffmpeg.input(f"sine=frequency={frequency}:duration={duration}", f="lavfi")
    return _ffmpeg_to_bytes([tone], ".mp4", acodec="aac", **{"b:a": "48k"}, movflags="+faststart")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _caption(rng: np.random.Generator, kind: str) -> str:
    words = [str(w) for w in rng.choice(_WORDS, size=3)]
    return f"a synthetic {kind}: {' '.join(words)}"


def _sample_members(key: str, kind: str, rng: np.random.Generator, broken: bool) -> List[Member]:
    """A sample's members: its media, a caption (``.txt``, or the ``.json`` ``transcript`` for
    audio) and a ``.json`` record."""
    record: Dict[str, Any] = {"key": key, "kind": kind, "deliberately_broken": broken}
    if kind == "image":
        media = [(f"{key}.jpg", synthetic_image(rng))]
    elif kind == "video":
        media = [(f"{key}.mp4", synthetic_video(rng, with_audio=True))]
    elif kind in ("audio", "audio-mp4"):
        duration, frequency = round(float(rng.uniform(1.0, 2.0)), 2), int(rng.integers(200, 2000))
        media = [(f"{key}.wav", synthetic_audio(rng))] if kind == "audio" else \
            [(f"{key}.mp4", audio_only_mp4(duration, frequency))]
    elif kind == "text":
        media = []
    else:
        payload = b"" if kind.startswith("empty") else rng.bytes(int(rng.integers(64, 2048)))
        media = [(f"{key}.{kind.split('.')[1]}", payload)]
    caption = _caption(rng, kind)
    if kind in ("audio", "audio-mp4"):
        record["transcript"] = caption
        return media + [(f"{key}.json", json.dumps(record, sort_keys=True).encode())]
    record["caption"] = caption
    return media + [(f"{key}.json", json.dumps(record, sort_keys=True).encode()), (f"{key}.txt", caption.encode())]


def _duplicate_of(original: List[Member], original_key: str, key: str) -> List[Member]:
    """An exact duplicate of a sample under another key (same media and caption; the ``.json``
    record names the new key and the original)."""
    members = []
    for name, payload in original:
        ext = name[len(original_key) + 1 :]
        if ext == "json":
            record = {**json.loads(payload), "key": key, "duplicate_of": original_key}
            payload = json.dumps(record, sort_keys=True).encode()
        members.append((f"{key}.{ext}", payload))
    return members


SAMPLE_KINDS = ("image", "image", "video", "audio", "duplicate", "audio-mp4", "text", "video")
"""Sample ``i`` of a shard is ``SAMPLE_KINDS[i % 8]`` (the last sample of a shard is broken)."""


def write_sample_shards(
    output: str, num_shards: int = 4, samples_per_shard: int = 8, seed: int = 0
) -> Dict[str, Any]:
    """Writes ``shard-000000.tar`` ... with captioned images, videos with sound, audio with
    transcripts, audio-only MP4s, text-only samples and exact duplicates.

    Sample ``i`` of a shard is of kind :data:`SAMPLE_KINDS` ``[i % 8]``; a ``duplicate`` is an
    exact copy (media and caption) of the shard's first sample under a new key. The last
    sample of each shard (when a shard has at least two) is broken, cycling through garbage
    ``.jpg``, garbage ``.mp4``, garbage ``.wav`` and a zero-byte ``.jpg``; its key is
    ``broken-s<shard>-<index>`` (see :data:`DELIBERATELY_BROKEN_PREFIX`).

    Returns:
        ``{"shards": {path: num_samples}, "kinds": {key: kind}, "broken": [keys],
        "duplicates": {key: key of the original}, "bytes": total_bytes}``.
    """
    os.makedirs(output, exist_ok=True)
    result: Dict[str, Any] = {"shards": {}, "kinds": {}, "broken": [], "duplicates": {}, "bytes": 0}
    for shard in range(num_shards):
        rng = np.random.default_rng([seed, shard])
        members: List[Member] = []
        first: Optional[Tuple[str, List[Member]]] = None
        for index in range(samples_per_shard):
            broken = samples_per_shard >= 2 and index == samples_per_shard - 1
            key = f"{DELIBERATELY_BROKEN_PREFIX if broken else ''}s{shard:06d}-{index:04d}"
            kind = _BROKEN_KINDS[shard % len(_BROKEN_KINDS)] if broken else SAMPLE_KINDS[index % len(SAMPLE_KINDS)]
            if kind == "duplicate" and first is not None:
                sample = _duplicate_of(first[1], first[0], key)
                result["duplicates"][key] = first[0]
            else:
                kind = "image" if kind == "duplicate" else kind
                sample = _sample_members(key, kind, rng, broken)
            first = first or (key, sample)
            members.extend(sample)
            result["kinds"][key] = kind
            if broken:
                result["broken"].append(key)
        path = os.path.join(output, f"shard-{shard:06d}.tar")
        result["bytes"] += write_tar(path, members)
        result["shards"][path] = samples_per_shard
    return result


def write_hostile_shards(directory: str, seed: int = 0) -> Dict[str, Any]:
    """Writes the adversarial shards the accounting tests run the corpus job on.

    ``hostile-000000.tar`` holds one sample per hazard (each a single media member):
    garbage bytes named ``.jpg``/``.mp4``/``.wav``, zero-byte ``.jpg`` and ``.wav``, a member
    named ``../../x.jpg``, a PNG declaring 30000x30000 pixels, NaN-valued float audio, an
    audio-only MP4, plus good controls (image, video, tone, silent audio).
    ``hostile-000001.tar`` holds three samples and is cut inside the third member's data.

    Returns:
        ``{"shards": {path: num_samples}, "expected": {key: "row" | "dead_letter"},
        "reasons": {key: hazard}}``. ``num_samples`` counts distinct sample keys (the
        escaping member's key is ``../../x``); ``expected`` is the outcome with the default
        tokenizers: every sample is either a corpus row or a dead-letter row.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng([seed, 999])
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 0.5
    nan_audio = tone.astype(np.float32)
    nan_audio[::100] = np.nan
    hazards = [
        ("good-image", "jpg", synthetic_image(rng), "row", "valid JPEG"),
        ("good-video", "mp4", synthetic_video(rng, with_audio=True), "row", "valid MP4"),
        ("good-audio", "wav", wav_bytes(tone, 16000), "row", "valid WAV tone"),
        ("silent-audio", "wav", wav_bytes(np.zeros(16000), 16000), "row", "1 s of digital silence"),
        ("garbage-jpg", "jpg", rng.bytes(1500), "dead_letter", "random bytes named .jpg"),
        ("garbage-mp4", "mp4", rng.bytes(1500), "dead_letter", "random bytes named .mp4"),
        ("garbage-wav", "wav", rng.bytes(1500), "dead_letter", "random bytes named .wav"),
        ("empty-jpg", "jpg", b"", "dead_letter", "zero-byte .jpg member"),
        ("empty-wav", "wav", b"", "dead_letter", "zero-byte .wav member"),
        ("../../x", "jpg", synthetic_image(rng), "dead_letter", "member name escapes with ../"),
        ("bomb-png", "png", bomb_png(), "dead_letter", "PNG declaring 30000x30000 pixels"),
        ("nan-audio", "wav", float_wav_bytes(nan_audio, 16000), "dead_letter", "float WAV with NaN samples"),
        ("audio-only-mp4", "mp4", audio_only_mp4(), "row", "MP4 with no video stream: an audio document"),
    ]
    result: Dict[str, Any] = {"shards": {}, "expected": {}, "reasons": {}}
    clean = os.path.join(directory, "hostile-000000.tar")
    write_tar(clean, [(f"{key}.{ext}", payload) for key, ext, payload, _, _ in hazards])
    result["shards"][clean] = len(hazards)
    for key, _, _, expected, reason in hazards:
        result["expected"][key] = expected
        result["reasons"][key] = reason

    truncated = os.path.join(directory, "hostile-000001.tar")
    other_tone = np.sin(2 * np.pi * 660 * np.arange(16000) / 16000) * 0.5  # not a duplicate of good-audio
    cut = [("trunc-a", "jpg", synthetic_image(rng)), ("trunc-b", "wav", wav_bytes(other_tone, 16000)),
           ("trunc-c", "jpg", synthetic_image(rng))]
    write_tar(truncated, [(f"{key}.{ext}", payload) for key, ext, payload in cut])
    with tarfile.open(truncated) as tar:
        last = tar.getmembers()[-1]
    with open(truncated, "r+b") as handle:
        handle.truncate(last.offset_data + last.size // 2)  # cut inside the third member's data
    result["shards"][truncated] = len(cut)
    for key, outcome, reason in (("trunc-a", "row", "before the damage"), ("trunc-b", "row", "before the damage"),
                                 ("trunc-c", "dead_letter", "member cut by truncation")):
        result["expected"][key] = outcome
        result["reasons"][key] = reason
    return result


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """CLI entry point: parses flags, writes the sample shards and prints a summary."""
    parser = argparse.ArgumentParser(prog="mediabeam make-samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory the shards are written to")
    parser.add_argument("--num-shards", type=int, default=4, help="number of shards (default 4)")
    parser.add_argument("--samples-per-shard", type=int, default=8, help="samples per shard (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical shards")
    parser.add_argument("--hostile", action="store_true",
                        help="also write hostile-00000{0,1}.tar (corrupt and adversarial members)")
    args = parser.parse_args(argv)
    if args.num_shards < 1 or args.samples_per_shard < 1:
        raise ConfigError("--num-shards and --samples-per-shard must be at least 1")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output!r} exists and is not a directory; choose a directory")
    started = time.perf_counter()
    result = write_sample_shards(args.output, args.num_shards, args.samples_per_shard, args.seed)
    if args.hostile:
        result["hostile"] = write_hostile_shards(args.output, args.seed)
    good = [kind for key, kind in result["kinds"].items() if key not in result["broken"]]
    counts = ", ".join(f"{good.count(kind)} {kind}" for kind in sorted(set(good)))
    print(
        f"wrote {len(result['shards'])} shards ({sum(result['shards'].values())} samples, "
        f"{result['bytes'] / 1e6:.2f} MB) to {args.output} in {time.perf_counter() - started:.1f} s: "
        f"{counts}, {len(result['broken'])} deliberately broken (keys {DELIBERATELY_BROKEN_PREFIX}*)"
    )
    return result
