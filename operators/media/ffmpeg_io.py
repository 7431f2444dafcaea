"""Runs ffmpeg on untrusted payloads: which binary, which protocols and demuxers, how errors read.

ffmpeg is always driven through ``ffmpeg-python`` as an argument list (never a shell) and is the
binary shipped by ``imageio-ffmpeg`` unless another one is configured. Every input is opened
through :func:`ffmpeg_input`, the one place that restricts it:

* protocols: ``file`` and ``pipe`` only (``-protocol_whitelist``), so no network, ``data:``,
  ``concat:`` or ``subfile`` URLs;
* demuxers: a fixed list per use (``-format_whitelist``): plain media containers only. Manifest,
  playlist and script demuxers (``dash``, ``hls``, ``concat``/``ffconcat``, ``imf``, ``sbg``,
  ``tty``, ``image2`` patterns, …) are refused, so a payload can neither make ffmpeg read other
  local files into the output nor synthesise hours of audio from a few bytes. Nested demuxers
  inherit both lists.

Every failure caused by the payload raises :class:`operators.tokenizers.base.MediaError` with a
message that says what was wrong, so callers can turn it into a dead-letter row; a payload over a
budget raises :class:`MediaBudgetExceeded` (both a ``MediaError`` and a
:class:`schemas.budgets.BudgetExceeded`).
"""

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from typing import Any, Iterator, List, Optional, Sequence

import ffmpeg

from operators.tokenizers.base import MediaError
from schemas.budgets import BudgetExceeded

FFMPEG_ENV = "MEDIABEAM_FFMPEG"
PROTOCOL_WHITELIST = "file,pipe"
_CONTAINERS = "mov,mp4,m4a,3gp,matroska,webm,avi,mpegts,flv,asf,ogg"
AUDIO_FORMATS = _CONTAINERS + ",wav,w64,flac,mp3,aac,aiff,caf,wv,ac3,eac3,au,amr"
"""Demuxers an audio payload may use: audio files and the containers audio travels in."""
VIDEO_FORMATS = _CONTAINERS + ",mpeg,ivf,nut,gif,h264,hevc"
"""Demuxers a video payload may use: video containers and raw H.264/HEVC elementary streams."""
MEDIA_FORMATS = ",".join(dict.fromkeys((AUDIO_FORMATS + "," + VIDEO_FORMATS).split(",")))
"""Demuxers :func:`operators.media.probe.probe` accepts (audio or video)."""
# Containers whose index may sit at the end of the file (ISO-BMFF / QuickTime): ffmpeg
# must seek to read them, so they go through a temporary file instead of a pipe.
_SEEKABLE_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
DURATION_SLACK_S = 0.25
"""Extra seconds ffmpeg may output past a budget, so "longer than the budget" is observable."""


class MediaBudgetExceeded(BudgetExceeded, MediaError):
    """A payload declares or decodes to more than a budget allows (a ``MediaError`` too)."""


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


def check_payload(data: bytes | str) -> None:
    """Raises ``MediaError`` for an empty payload or a path that is missing or empty."""
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
    check_payload(data)
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


def ffmpeg_input(url: str, formats: str, **options: Any) -> ffmpeg.nodes.FilterableStream:
    """Returns an ``ffmpeg-python`` input restricted to ``file,pipe`` and the demuxers ``formats``.

    Args:
        url: ``pipe:`` or a ``file:`` URL (see :func:`media_source`).
        formats: Comma-separated demuxer names allowed for this input, e.g. ``AUDIO_FORMATS``;
            a payload in any other format fails with "Format not on whitelist".
        **options: Further ffmpeg input options (e.g. ``format="f32le"``).
    """
    return ffmpeg.input(url, protocol_whitelist=PROTOCOL_WHITELIST, format_whitelist=formats, **options)


def ffmpeg_args(
    stream: ffmpeg.nodes.OutputStream, binary: Optional[str], feeds_stdin: bool, loglevel: str = "error"
) -> List[str]:
    """Compiles an ``ffmpeg-python`` graph to an argument list for :func:`run_ffmpeg`.

    Global options go first (ffmpeg ignores trailing ones); ``-nostdin`` is added unless
    the payload is fed on stdin, and progress statistics are off.
    """
    binary_path, *rest = stream.compile(cmd=ffmpeg_binary(binary))
    extra = ["-hide_banner", "-nostats", "-loglevel", loglevel]
    if not feeds_stdin:
        extra.append("-nostdin")
    return [binary_path, *extra, *rest]


def ffmpeg_error(stderr: bytes, what: str) -> str:
    """Turns ffmpeg's stderr into a one-line reason naming what was being decoded."""
    text = stderr.decode("utf-8", "replace")
    if "Format not on whitelist" in text:
        return (f"refused: the payload's container is not an allowed {what} format (manifests, "
                f"playlists and scripts such as dash, hls, concat or sbg are never read)")
    if "matches no streams" in text or "does not contain any stream" in text:
        return f"no {what} stream in the payload"
    if "Invalid data found when processing input" in text:
        return "not a decodable media file (ffmpeg: Invalid data found when processing input)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "nvalid" in line] or lines or ["no output"]
    return f"ffmpeg could not decode the {what}: {errors[-1][:300]}"


def check_pixel_budget(stderr: bytes, image_pixels: int) -> None:
    """Raises ``MediaBudgetExceeded`` if ffmpeg stopped because a frame exceeded ``-max_pixels``."""
    text = stderr.decode("utf-8", "replace")
    if "exceeds specified max pixel count" in text:
        line = next(line for line in text.splitlines() if "exceeds specified max pixel count" in line)
        size = line.split("Picture size ", 1)[-1].split(" ", 1)[0]
        raise MediaBudgetExceeded("image_pixels", image_pixels, f"decoding the video needs {size} frames")


def run_ffmpeg(args: Sequence[str], stdin: Optional[bytes]) -> subprocess.CompletedProcess:
    """Runs ffmpeg (no shell) to completion; only for outputs bounded by ``-t`` or the input."""
    return subprocess.run(
        list(args), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, check=False,
    )


def duration_cap(max_seconds: Optional[float], budget_seconds: float) -> tuple[float, bool]:
    """Returns ``(ffmpeg -t value, truncating)`` for a decode of at most ``max_seconds``.

    ``max_seconds`` within the budget is a request to truncate: exactly that much is decoded and
    longer payloads are fine. Otherwise the whole payload is wanted, so ffmpeg may write slightly
    more than the budget (:data:`DURATION_SLACK_S`) and a longer payload is refused.
    """
    if max_seconds is not None and max_seconds <= budget_seconds:
        return float(max_seconds), True
    return budget_seconds + DURATION_SLACK_S, False
