"""Decodes the audio of an untrusted payload with ffmpeg, within the media budgets."""

from typing import Any, Dict, Optional

import numpy as np

from operators.media.ffmpeg_io import (
    AUDIO_FORMATS,
    DURATION_SLACK_S,
    MediaBudgetExceeded,
    duration_cap,
    ffmpeg_args,
    ffmpeg_error,
    ffmpeg_input,
    media_source,
    run_ffmpeg,
)
from operators.media.probe import declared_duration
from operators.tokenizers.base import MediaError
from schemas.budgets import DEFAULT_BUDGETS


def decode_audio(
    data: bytes | str,
    sample_rate: int = 16000,
    max_seconds: Optional[float] = None,
    ffmpeg_path: Optional[str] = None,
    *,
    first_channel: bool = False,
    formats: str = AUDIO_FORMATS,
    media_seconds: float = DEFAULT_BUDGETS.media_seconds,
    audio_samples: int = DEFAULT_BUDGETS.audio_samples,
) -> np.ndarray:
    """Decodes the first audio stream to mono float32 at ``sample_rate``.

    ffmpeg's output is capped with ``-t`` before it runs, so no payload can make it write (or
    this function hold) more than the budgets allow. Without ``max_seconds`` a payload that
    declares or decodes to more than the budget is refused rather than silently truncated, so a
    corpus never holds a clipped recording it believes is whole.

    Args:
        data: Encoded media bytes (a container in ``formats``) or a local file path.
        sample_rate: Output rate in Hz.
        max_seconds: Decode at most this many seconds from the start (``None``: all). Within the
            budgets this truncates; longer payloads are fine.
        ffmpeg_path: ffmpeg binary to use instead of the default (see ``ffmpeg_binary``).
        first_channel: Keep the first channel only instead of the downmix of all channels.
        formats: Demuxers the payload may use (``AUDIO_FORMATS``; narrower for internal streams).
        media_seconds: Budget: longest audio accepted, declared or decoded.
        audio_samples: Budget: most output samples (at ``sample_rate``) accepted.

    Returns:
        Samples ``[N]`` float32. Silent audio decodes to zeros, which is valid.

    Raises:
        MediaError: Empty or undecodable payload, a refused container, no audio stream, no
            samples, or samples that are NaN or infinite.
        MediaBudgetExceeded: The payload declares or decodes to more than ``media_seconds`` or
            ``audio_samples`` (the message names the budget).
    """
    by_samples = audio_samples / sample_rate
    by_seconds = media_seconds <= by_samples
    budget, limit = ("media_seconds", media_seconds) if by_seconds else ("audio_samples", audio_samples)
    seconds, truncating = duration_cap(max_seconds, min(media_seconds, by_samples))
    with media_source(data) as (url, stdin):
        out_options: Dict[str, Any] = {"format": "f32le", "acodec": "pcm_f32le", "ac": 1, "ar": sample_rate,
                                       "t": seconds}
        audio = ffmpeg_input(url, formats)["a:0"]
        if first_channel:
            audio = audio.filter("channelmap", map="0", channel_layout="mono")
        stream = audio.output("pipe:", **out_options)
        proc = run_ffmpeg(ffmpeg_args(stream, ffmpeg_path, stdin is not None, loglevel="info"), stdin)
    if proc.returncode != 0:
        raise MediaError(ffmpeg_error(proc.stderr, "audio"))
    usable = len(proc.stdout) - len(proc.stdout) % 4
    if not truncating:
        declared = declared_duration(proc.stderr)
        cap = min(media_seconds, by_samples)
        if declared is not None and declared > cap:
            raise MediaBudgetExceeded(budget, limit, f"the payload declares {declared:.1f} s of audio "
                                                     f"({declared * sample_rate:.0f} samples at {sample_rate} Hz)")
        if usable // 4 > (cap + DURATION_SLACK_S / 2) * sample_rate:
            raise MediaBudgetExceeded(budget, limit, f"the payload decodes to more than {cap:g} s of audio "
                                                     f"at {sample_rate} Hz")
    samples = np.frombuffer(proc.stdout[:usable], dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise MediaError("the audio stream decoded to 0 samples")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - finite.sum())
        raise MediaError(f"audio has {bad} NaN or infinite samples out of {samples.size}")
    return samples
