"""Decodes the video of an untrusted payload with ffmpeg, frame by frame, within the budgets."""

import contextlib
import subprocess
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from operators.media.ffmpeg_io import (
    DURATION_SLACK_S,
    VIDEO_FORMATS,
    MediaBudgetExceeded,
    check_pixel_budget,
    duration_cap,
    ffmpeg_args,
    ffmpeg_error,
    ffmpeg_input,
    media_source,
)
from operators.media.probe import declared_duration
from operators.tokenizers.base import MediaError
from schemas.budgets import DEFAULT_BUDGETS

_STDERR_KEEP = 8192


def iter_video_frames(
    data: bytes | str,
    fps: Optional[float],
    width: int,
    height: int,
    max_seconds: Optional[float] = None,
    input_format: Optional[str] = None,
    ffmpeg_path: Optional[str] = None,
    *,
    media_seconds: float = DEFAULT_BUDGETS.media_seconds,
    video_frames: int = DEFAULT_BUDGETS.video_frames,
    image_pixels: int = DEFAULT_BUDGETS.image_pixels,
) -> Iterator[np.ndarray]:
    """Streams RGB frames of the first video stream, one fixed-size pipe read per frame.

    The decoded video is never held in memory: ffmpeg writes ``rgb24`` frames to a pipe
    and each is read with one ``width * height * 3`` byte read. Piped input is fed from a
    thread so neither pipe can dead-lock. Closing the generator early kills ffmpeg. ffmpeg's
    output is capped with ``-t``; without ``max_seconds`` a payload that declares or decodes to
    more than the budgets is refused (ffmpeg is killed as soon as that is known).

    Args:
        data: Encoded media bytes (a container in ``VIDEO_FORMATS``) or a local file path.
        fps: Output frame rate (frames are dropped/duplicated to match); ``None`` keeps
            every decoded frame.
        width: Output width in pixels (frames are scaled to exactly this size).
        height: Output height in pixels.
        max_seconds: Stop after this many seconds of output (``None``: whole video).
        input_format: Force an ffmpeg demuxer from ``VIDEO_FORMATS`` (e.g. ``"h264"`` for an
            Annex-B stream).
        ffmpeg_path: ffmpeg binary to use instead of the default.
        media_seconds: Budget: longest video accepted, declared or decoded.
        video_frames: Budget: most frames yielded.
        image_pixels: Budget: largest source frame ffmpeg may decode (its ``-max_pixels``).

    Yields:
        Frames ``[height, width, 3]`` uint8 (each its own writable buffer).

    Raises:
        MediaError: Empty or undecodable payload, a refused container, no video stream, or no
            frame decoded.
        MediaBudgetExceeded: More than ``media_seconds`` declared or decoded, more than
            ``video_frames`` frames, or source frames over ``image_pixels``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if input_format is not None and input_format not in VIDEO_FORMATS.split(","):
        raise ValueError(f"input_format {input_format!r} is not one of the allowed demuxers {VIDEO_FORMATS}")
    seconds, truncating = duration_cap(max_seconds, media_seconds)
    with media_source(data) as (url, stdin):
        in_options: Dict[str, Any] = {"max_pixels": image_pixels}
        if input_format:
            in_options["format"] = input_format
        video = ffmpeg_input(url, VIDEO_FORMATS, **in_options)["v:0"]
        if fps is not None:
            video = video.filter("fps", fps=fps)
        video = video.filter("scale", width, height)
        out_options: Dict[str, Any] = {"format": "rawvideo", "pix_fmt": "rgb24", "t": seconds}
        args = ffmpeg_args(video.output("pipe:", **out_options), ffmpeg_path, stdin is not None, loglevel="info")
        limits = _Limits(None if truncating else media_seconds, fps, video_frames, image_pixels)
        yield from _stream_frames(args, stdin, width * height * 3, (height, width, 3), limits)


class _Limits:
    """The budgets one stream is held to, checked per frame and from ffmpeg's log."""

    def __init__(self, media_seconds: Optional[float], fps: Optional[float], video_frames: int, image_pixels: int):
        self.media_seconds = media_seconds
        self.fps = fps
        self.video_frames = video_frames
        self.image_pixels = image_pixels

    def check(self, frames: int, stderr_head: bytes) -> None:
        if frames > self.video_frames:
            raise MediaBudgetExceeded("video_frames", self.video_frames, "the payload decodes to more frames")
        if self.media_seconds is None:
            return
        declared = declared_duration(stderr_head)
        if declared is not None and declared > self.media_seconds:
            raise MediaBudgetExceeded("media_seconds", self.media_seconds,
                                      f"the payload declares {declared:.1f} s of video")
        if self.fps and frames > (self.media_seconds + DURATION_SLACK_S / 2) * self.fps:
            raise MediaBudgetExceeded("media_seconds", self.media_seconds,
                                      f"the payload decodes to more than {self.media_seconds:g} s of video")


def _stream_frames(
    args: Sequence[str], stdin: Optional[bytes], frame_bytes: int, shape: tuple[int, int, int], limits: _Limits
) -> Iterator[np.ndarray]:
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr_head, stderr_tail = bytearray(), bytearray()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(stdin)
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()

    def drain() -> None:
        for chunk in iter(lambda: proc.stderr.read(4096), b""):
            if len(stderr_head) < _STDERR_KEEP:
                stderr_head.extend(chunk[: _STDERR_KEEP - len(stderr_head)])
            stderr_tail.extend(chunk)
            del stderr_tail[:-_STDERR_KEEP]

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
            limits.check(frames, bytes(stderr_head))
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
        check_pixel_budget(bytes(stderr_head + stderr_tail), limits.image_pixels)
        raise MediaError(ffmpeg_error(bytes(stderr_tail), "video"))
    limits.check(frames, bytes(stderr_head))
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

    A bounded convenience over :func:`iter_video_frames` (same arguments, budgets and errors)
    for short clips whose frames are needed together, e.g. a tokenizer's reconstruction.
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
