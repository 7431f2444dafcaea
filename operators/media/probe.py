"""Describes media payloads by parsing ``ffmpeg -i`` (the bundled ffmpeg has no ``ffprobe``)."""

import re
from typing import Any, Dict, Optional

from operators.media.ffmpeg_io import MEDIA_FORMATS, ffmpeg_args, ffmpeg_error, ffmpeg_input, media_source, run_ffmpeg
from operators.tokenizers.base import MediaError

_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (.*)")
_SIZE = re.compile(r", (\d+)x(\d+)[ ,\n]")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_RATE = re.compile(r"(\d+) Hz")


def probe(data: bytes | str, ffmpeg_path: Optional[str] = None) -> Dict[str, Any]:
    """Describes a media payload by parsing ``ffmpeg -i``.

    Args:
        data: Encoded media bytes or a local file path.
        ffmpeg_path: ffmpeg binary to use instead of the default.

    Returns:
        ``duration`` (seconds or ``None`` if unknown), ``has_audio``, ``has_video``,
        ``width``/``height``/``fps`` of the first video stream and ``sample_rate`` of the
        first audio stream (``None`` when absent). Cover art is not counted as video.

    Raises:
        MediaError: Empty payload, or one ffmpeg does not recognise as allowed media.
    """
    with media_source(data) as (url, stdin):
        stream = ffmpeg_input(url, MEDIA_FORMATS).output("-", format="null", t=0)
        proc = run_ffmpeg(ffmpeg_args(stream, ffmpeg_path, stdin is not None, loglevel="info"), stdin)
    info = parse_input_info(proc.stderr)
    if info is None:
        raise MediaError(ffmpeg_error(proc.stderr, "media"))
    return info


def declared_duration(stderr: bytes) -> Optional[float]:
    """The ``Duration:`` of input #0 in ffmpeg's ``info`` log, in seconds (``None``: unknown)."""
    match = _DURATION.search(stderr.decode("utf-8", "replace"))
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_input_info(stderr: bytes) -> Optional[Dict[str, Any]]:
    """Parses the input summary ffmpeg logs at ``info`` level (see :func:`probe`).

    Returns ``None`` when the log has no ``Input #0`` section (ffmpeg did not recognise it).
    """
    text = stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        return None
    text = re.split(r"\n(?:Stream mapping|Output #0)", text[text.index("Input #0") :])[0]
    info: Dict[str, Any] = {
        "duration": declared_duration(text.encode()), "has_audio": False, "has_video": False,
        "width": None, "height": None, "fps": None, "sample_rate": None,
    }
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
