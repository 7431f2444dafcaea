"""Encode, decode and keep what the tokenizer saw: the reference a reconstruction is measured against.

A tokenizer first normalises its input (JPEG-LM crops to a square, AVC-LM resamples to a low
frame rate and letterboxes, the audio tokenizers resample to mono 16 kHz), so the fair reference
for its reconstruction is that normalised input, not the original file. :data:`ROUND_TRIPS`
holds one function per registered tokenizer that returns it with the tokens and the decoded
media; a new tokenizer is evaluated by adding one entry.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional

import numpy as np

from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import ffmpeg_args, ffmpeg_error, media_source, run_ffmpeg
from operators.media.image import decode_image
from operators.tokenizers.base import MediaError, TokenOutput


class RoundTrip(NamedTuple):
    """One media item through one tokenizer and back.

    Attributes:
        output: The tokens and the tokenizer's meta.
        reference: What the tokenizer saw: ``[H, W, 3]`` uint8 image, ``[N, H, W, 3]`` uint8
            frames, or ``[N]`` float32 mono waveform.
        decoded: The reconstruction, in the reference's form (frames may number differently).
        sample_rate: Audio rate of ``reference`` and ``decoded`` (None for images and video).
    """

    output: TokenOutput
    reference: np.ndarray
    decoded: np.ndarray
    sample_rate: Optional[int] = None


def jpeg_round_trip(tokenizer: Any, data: bytes) -> RoundTrip:
    """JPEG-LM: the reference is the resized, centre-cropped square the tokenizer encodes."""
    square, _ = tokenizer.prepare(data)
    out = tokenizer.encode(data)
    return RoundTrip(out, np.asarray(square), np.asarray(tokenizer.decode(out.tokens)))


def dual_image_round_trip(tokenizer: Any, data: bytes) -> RoundTrip:
    """dual-image: the reference is the model-size square crop in uint8."""
    from operators.tokenizers.dual_image import crop_square

    image = decode_image(data, tokenizer.max_pixels)
    pixels = crop_square(image, tokenizer.model.size)
    out = tokenizer.encode_pixels(pixels)
    reference = np.rint(pixels * 255).astype(np.uint8)
    return RoundTrip(out, reference, tokenizer.decode(out.tokens))


def letterboxed_frames(tokenizer: Any, data: bytes) -> np.ndarray:
    """The frames AVC-LM encodes, before x264: the first ``seconds`` at ``fps``, scaled to fit
    and padded to ``width × height`` in ``yuv420p`` (as the encoder's filter graph negotiates it),
    converted to RGB as a decoder does, ``[N, H, W, 3]`` uint8."""
    with media_source(data) as (url, stdin):
        # scaled and padded in x264's pixel format, as the encoder's input
        video = tokenizer.letterboxed(url).filter("format", "yuv420p")
        output = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", t=tokenizer.seconds)
        proc = run_ffmpeg(ffmpeg_args(output, tokenizer.ffmpeg_path, stdin is not None), stdin)
    if proc.returncode != 0:
        raise MediaError(ffmpeg_error(proc.stderr, "video"))
    frame = tokenizer.width * tokenizer.height * 3
    count = len(proc.stdout) // frame
    return np.frombuffer(proc.stdout[: count * frame], np.uint8).reshape(count, tokenizer.height, tokenizer.width, 3)


def avc_round_trip(tokenizer: Any, data: bytes) -> RoundTrip:
    """AVC-LM: the reference is the resampled, letterboxed clip fed to x264."""
    out = tokenizer.encode(data)
    return RoundTrip(out, letterboxed_frames(tokenizer, data), tokenizer.decode(out.tokens))


def opus_round_trip(tokenizer: Any, data: bytes) -> RoundTrip:
    """Opus: the reference is the mono waveform at the tokenizer's rate."""
    wave = decode_audio(data, tokenizer.sample_rate, tokenizer.max_seconds, tokenizer.ffmpeg_path, **tokenizer.budgets)
    out = tokenizer.encode(data)
    return RoundTrip(out, wave, tokenizer.decode(out.tokens), tokenizer.sample_rate)


def semantic_audio_round_trip(tokenizer: Any, data: bytes) -> RoundTrip:
    """semantic-audio: the reference is the first channel at 16 kHz; the reconstruction is the
    Griffin-Lim waveform of the decoded mel."""
    from operators.tokenizers.semantic_audio import SAMPLE_RATE, decode_first_channel

    wave = decode_first_channel(data, SAMPLE_RATE, tokenizer.max_seconds, tokenizer.media_seconds,
                                tokenizer.audio_samples)
    out = tokenizer.encode_wave(wave)
    return RoundTrip(out, wave, tokenizer.decode(out.tokens), SAMPLE_RATE)


ROUND_TRIPS: Dict[str, Callable[[Any, bytes], RoundTrip]] = {
    "jpeg": jpeg_round_trip,
    "dual-image": dual_image_round_trip,
    "avc": avc_round_trip,
    "opus": opus_round_trip,
    "semantic-audio": semantic_audio_round_trip,
}
"""Registry name (``operators.tokenizers.registry``) → round trip."""
