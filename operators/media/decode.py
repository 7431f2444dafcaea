"""Decodes media payloads with ffmpeg (audio, video, probing) and Pillow (images).

ffmpeg is always driven through ``ffmpeg-python`` as an argument list (never a shell),
reads from a pipe or a local file only (``-protocol_whitelist file,pipe``) and is the
binary shipped by ``imageio-ffmpeg`` unless another one is configured. That binary has no
``ffprobe``, so :func:`probe` parses the stream summary ``ffmpeg -i`` prints on stderr.

Every failure caused by the payload raises :class:`operators.tokenizers.base.MediaError` with a
message that says what was wrong, so callers can turn it into a dead-letter row.
"""

import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ffmpeg
import numpy as np
from PIL import Image, ImageOps

from operators.tokenizers.base import MediaError

FFMPEG_ENV = "MEDIABEAM_FFMPEG"
PROTOCOL_WHITELIST = "file,pipe"
# Containers whose index may sit at the end of the file (ISO-BMFF / QuickTime): ffmpeg
# must seek to read them, so they go through a temporary file instead of a pipe.
_SEEKABLE_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_STDERR_TAIL = 8192


@functools.lru_cache(maxsize=None)
def _bundled_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_binary(override: Optional[str] = None) -> str:
    """Returns the ffmpeg executable every operator uses.

    Lookup order: ``override``, the ``MEDIABEAM_FFMPEG`` environment variable (a path or a
    command name on ``PATH``, e.g. ``ffmpeg`` for the system one), then the binary shipped
    with ``imageio-ffmpeg``.

    Raises:
        FileNotFoundError: If the configured binary does not exist, saying how to fix it.
    """
    configured = override or os.environ.get(FFMPEG_ENV)
    if not configured:
        return _bundled_ffmpeg()
    found = shutil.which(configured)
    if found is None:
        raise FileNotFoundError(
            f"ffmpeg binary {configured!r} (from {'parameter' if override else FFMPEG_ENV}) "
            f"is not an executable file or a command on PATH; fix the path or unset "
            f"{FFMPEG_ENV} to use the imageio-ffmpeg binary"
        )
    return found


def _check_payload(data: bytes | str) -> None:
    if isinstance(data, str):
        if not os.path.isfile(data):
            raise MediaError(f"media file {data!r} does not exist")
        if os.path.getsize(data) == 0:
            raise MediaError(f"media file {data!r} is empty (0 bytes)")
    elif not data:
        raise MediaError("empty media payload (0 bytes)")


@contextlib.contextmanager
def media_source(data: bytes | str) -> Iterator[tuple[str, Optional[bytes]]]:
    """Yields ``(ffmpeg input URL, bytes to feed on stdin or None)`` for a payload.

    Paths are passed as ``file:`` URLs (so a name such as ``-x`` or ``http:`` is never read
    as an option or a protocol). Bytes are piped, except ISO-BMFF/QuickTime payloads,
    which are written to a temporary file because their index may be at the end.
    """
    _check_payload(data)
    if isinstance(data, str):
        yield "file:" + os.path.abspath(data), None
        return
    if data[4:8] not in _SEEKABLE_ATOMS:
        yield "pipe:", data
        return
    fd, path = tempfile.mkstemp(prefix="mediabeam-", suffix=".media")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield "file:" + path, None
    finally:
        os.unlink(path)


def ffmpeg_input(url: str, **options: Any) -> ffmpeg.nodes.FilterableStream:
    """Returns an ``ffmpeg-python`` input restricted to the ``file,pipe`` protocols."""
    return ffmpeg.input(url, protocol_whitelist=PROTOCOL_WHITELIST, **options)


def ffmpeg_args(
    stream: ffmpeg.nodes.OutputStream, binary: Optional[str], feeds_stdin: bool, loglevel: str = "error"
) -> List[str]:
    """Compiles an ``ffmpeg-python`` graph to an argument list for :func:`run_ffmpeg`.

    Global options go first (ffmpeg ignores trailing ones); ``-nostdin`` is added unless
    the payload is fed on stdin.
    """
    binary_path, *rest = stream.compile(cmd=ffmpeg_binary(binary))
    extra = ["-hide_banner", "-loglevel", loglevel]
    if not feeds_stdin:
        extra.append("-nostdin")
    return [binary_path, *extra, *rest]


def ffmpeg_error(stderr: bytes, what: str) -> str:
    """Turns ffmpeg's stderr into a one-line reason naming what was being decoded."""
    text = stderr.decode("utf-8", "replace")
    if "matches no streams" in text or "does not contain any stream" in text:
        return f"no {what} stream in the payload"
    if "Invalid data found when processing input" in text:
        return "not a decodable media file (ffmpeg: Invalid data found when processing input)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "nvalid" in line] or lines or ["no output"]
    return f"ffmpeg could not decode the {what}: {errors[-1][:300]}"


def run_ffmpeg(args: Sequence[str], stdin: Optional[bytes]) -> subprocess.CompletedProcess:
    """Runs ffmpeg (no shell) to completion; for bounded outputs only, never whole videos."""
    return subprocess.run(
        list(args), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, check=False,
    )


def decode_audio(
    data: bytes | str,
    sample_rate: int = 16000,
    max_seconds: Optional[float] = None,
    ffmpeg_path: Optional[str] = None,
) -> np.ndarray:
    """Decodes the first audio stream to mono float32 at ``sample_rate``.

    Args:
        data: Encoded media bytes (any container ffmpeg reads) or a local file path.
        sample_rate: Output rate in Hz.
        max_seconds: Decode at most this many seconds from the start (``None``: all).
        ffmpeg_path: ffmpeg binary to use instead of the default (see :func:`ffmpeg_binary`).

    Returns:
        Samples ``[N]`` float32. Silent audio decodes to zeros, which is valid.

    Raises:
        MediaError: Empty or undecodable payload, no audio stream, no samples, or samples
            that are NaN or infinite.
    """
    with media_source(data) as (url, stdin):
        out_options: Dict[str, Any] = {"format": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": sample_rate}
        if max_seconds is not None:
            out_options["t"] = max_seconds
        stream = ffmpeg_input(url)["a:0"].output("pipe:", **out_options)
        proc = run_ffmpeg(ffmpeg_args(stream, ffmpeg_path, stdin is not None), stdin)
    if proc.returncode != 0:
        raise MediaError(ffmpeg_error(proc.stderr, "audio"))
    usable = len(proc.stdout) - len(proc.stdout) % 4
    samples = np.frombuffer(proc.stdout[:usable], dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise MediaError("the audio stream decoded to 0 samples")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - finite.sum())
        raise MediaError(f"audio has {bad} NaN or infinite samples out of {samples.size}")
    return samples


def iter_video_frames(
    data: bytes | str,
    fps: Optional[float],
    width: int,
    height: int,
    max_seconds: Optional[float] = None,
    input_format: Optional[str] = None,
    ffmpeg_path: Optional[str] = None,
) -> Iterator[np.ndarray]:
    """Streams RGB frames of the first video stream, one fixed-size pipe read per frame.

    The decoded video is never held in memory: ffmpeg writes ``rgb24`` frames to a pipe
    and each is read with one ``width * height * 3`` byte read. Piped input is fed from a
    thread so neither pipe can dead-lock. Closing the generator early kills ffmpeg.

    Args:
        data: Encoded media bytes or a local file path.
        fps: Output frame rate (frames are dropped/duplicated to match); ``None`` keeps
            every decoded frame.
        width: Output width in pixels (frames are scaled to exactly this size).
        height: Output height in pixels.
        max_seconds: Stop after this many seconds of output (``None``: whole video).
        input_format: Force an ffmpeg demuxer (e.g. ``"h264"`` for an Annex-B stream).
        ffmpeg_path: ffmpeg binary to use instead of the default.

    Yields:
        Frames ``[height, width, 3]`` uint8 (each its own writable buffer).

    Raises:
        MediaError: Empty or undecodable payload, no video stream, or no frame decoded.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    with media_source(data) as (url, stdin):
        in_options = {"format": input_format} if input_format else {}
        video = ffmpeg_input(url, **in_options)["v:0"]
        if fps is not None:
            video = video.filter("fps", fps=fps)
        video = video.filter("scale", width, height)
        out_options: Dict[str, Any] = {"format": "rawvideo", "pix_fmt": "rgb24"}
        if max_seconds is not None:
            out_options["t"] = max_seconds
        args = ffmpeg_args(video.output("pipe:", **out_options), ffmpeg_path, stdin is not None)
        yield from _stream_frames(args, stdin, width * height * 3, (height, width, 3))


def _stream_frames(
    args: Sequence[str], stdin: Optional[bytes], frame_bytes: int, shape: tuple[int, int, int]
) -> Iterator[np.ndarray]:
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr_tail = bytearray()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(stdin)
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()

    def drain() -> None:
        for chunk in iter(lambda: proc.stderr.read(4096), b""):
            stderr_tail.extend(chunk)
            del stderr_tail[:-_STDERR_TAIL]

    threads = [threading.Thread(target=drain, daemon=True)]
    if stdin is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    for thread in threads:
        thread.start()
    frames = 0
    finished = False
    try:
        while True:
            buffer = bytearray(frame_bytes)
            if proc.stdout.readinto(buffer) < frame_bytes:
                break
            frames += 1
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
        finished = True
    finally:
        if not finished:
            proc.kill()
        proc.stdout.close()
        returncode = proc.wait()
        for thread in threads:
            thread.join()
        proc.stderr.close()
    if returncode != 0:
        raise MediaError(ffmpeg_error(bytes(stderr_tail), "video"))
    if frames == 0:
        raise MediaError("the video stream decoded to 0 frames")


def decode_video(
    data: bytes | str,
    fps: Optional[float],
    width: int,
    height: int,
    max_frames: int,
    **options: Any,
) -> np.ndarray:
    """Decodes at most ``max_frames`` frames into one ``[N, height, width, 3]`` array.

    A bounded convenience over :func:`iter_video_frames` (same arguments and errors) for
    short clips whose frames are needed together, e.g. a tokenizer's reconstruction.
    """
    frames: List[np.ndarray] = []
    iterator = iter_video_frames(data, fps, width, height, **options)
    try:
        for frame in iterator:
            frames.append(frame)
            if len(frames) >= max_frames:
                break
    finally:
        iterator.close()
    return np.stack(frames)


def decode_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Decodes an image with Pillow into RGB, refusing oversized images before decoding.

    Only the header is parsed before the size check, so a tiny file that declares a huge
    canvas (a decompression bomb) is rejected without allocating its pixels. Pillow's own
    ``DecompressionBombError`` (above twice ``Image.MAX_IMAGE_PIXELS``) is reported the same
    way. The EXIF orientation is applied, and the first frame of animations is used.

    Args:
        data: Encoded image bytes (any format Pillow reads).
        max_pixels: Largest accepted ``width * height``.

    Returns:
        A loaded RGB image.

    Raises:
        MediaError: Empty, undecodable, truncated, or larger than ``max_pixels``.
    """
    _check_payload(data)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise MediaError(f"image too large to decode safely (limit {max_pixels} pixels): {error}") from error
    except Image.UnidentifiedImageError as error:
        raise MediaError("not a decodable image: Pillow cannot identify its format") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"not a decodable image: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise MediaError(
            f"image declares {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels}; refusing to decode it"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise MediaError(f"image data is corrupt or truncated: {error}") from error


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (.*)")
_SIZE = re.compile(r", (\d+)x(\d+)[ ,\n]")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_RATE = re.compile(r"(\d+) Hz")


def probe(data: bytes | str, ffmpeg_path: Optional[str] = None) -> Dict[str, Any]:
    """Describes a media payload by parsing ``ffmpeg -i`` (there is no ffprobe).

    Args:
        data: Encoded media bytes or a local file path.
        ffmpeg_path: ffmpeg binary to use instead of the default.

    Returns:
        ``duration`` (seconds or ``None`` if unknown), ``has_audio``, ``has_video``,
        ``width``/``height``/``fps`` of the first video stream and ``sample_rate`` of the
        first audio stream (``None`` when absent). Cover art is not counted as video.

    Raises:
        MediaError: Empty payload, or one ffmpeg does not recognise as media.
    """
    with media_source(data) as (url, stdin):
        stream = ffmpeg_input(url).output("-", format="null", t=0)
        proc = run_ffmpeg(ffmpeg_args(stream, ffmpeg_path, stdin is not None, loglevel="info"), stdin)
    info = parse_input_info(proc.stderr)
    if info is None:
        raise MediaError(ffmpeg_error(proc.stderr, "media"))
    return info


def parse_input_info(stderr: bytes) -> Optional[Dict[str, Any]]:
    """Parses the input summary ffmpeg logs at ``info`` level (see :func:`probe`).

    Returns ``None`` when the log has no ``Input #0`` section (ffmpeg did not recognise it).
    """
    text = stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        return None
    text = re.split(r"\n(?:Stream mapping|Output #0)", text[text.index("Input #0") :])[0]
    info: Dict[str, Any] = {
        "duration": None, "has_audio": False, "has_video": False,
        "width": None, "height": None, "fps": None, "sample_rate": None,
    }
    duration = _DURATION.search(text)
    if duration:
        hours, minutes, seconds = duration.groups()
        info["duration"] = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    for kind, details in _STREAM.findall(text):
        if kind == "Audio" and not info["has_audio"]:
            info["has_audio"] = True
            rate = _RATE.search(details)
            info["sample_rate"] = int(rate.group(1)) if rate else None
        elif kind == "Video" and not info["has_video"] and "attached pic" not in details:
            info["has_video"] = True
            size = _SIZE.search(details + "\n")
            if size:
                info["width"], info["height"] = int(size.group(1)), int(size.group(2))
            rate = _FPS.search(details) or _TBR.search(details)
            if rate:
                info["fps"] = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    return info
