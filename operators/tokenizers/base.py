"""The contract every tokenizer operator follows (no Beam import here)."""

from typing import Any, Dict, NamedTuple, Protocol, Tuple, runtime_checkable

import numpy as np

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ts")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "aac")
MODALITY_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS, "audio": AUDIO_EXTENSIONS}


class MediaError(ValueError):
    """Raised when a media payload is empty, corrupt, too large or otherwise unusable."""


class MissingStream(MediaError):
    """Raised when a payload is valid media without the stream a tokenizer needs (e.g. an
    audio-only MP4 given to the video tokenizer), so a caller can route it elsewhere.

    Attributes:
        has_audio: The payload holds an audio stream.
        has_video: The payload holds a video stream.
    """

    def __init__(self, message: str, has_audio: bool, has_video: bool):
        super().__init__(message)
        self.has_audio = has_audio
        self.has_video = has_video


class TokenOutput(NamedTuple):
    """What a tokenizer returns for one media item.

    Attributes:
        tokens: Integer tokens, shape ``[T]`` or ``[T, C]`` (e.g. ``[T, 1 + n_acoustic]``).
        meta: Measurements a user would filter on: ``duration_s``, ``width``, ``height``,
            ``num_frames``, ``sample_rate``, ``bitrate_bps``, ``rms_dbfs`` (any subset).
    """

    tokens: np.ndarray
    meta: Dict[str, Any]


@runtime_checkable
class Tokenizer(Protocol):
    """A deterministic media → tokens operator.

    Attributes:
        name: Stable name recorded in every output row (e.g. ``"jpeg-lm"``).
        version: Bumped whenever the same input could give different tokens.
        modality: ``"image"``, ``"video"`` or ``"audio"``.
    """

    name: str
    version: str
    modality: str

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded media payload; raises ``MediaError`` on bad input."""

    def decode(self, tokens: np.ndarray) -> Any:
        """Reconstructs media from tokens (image, frames or waveform)."""


def rms_dbfs(wave: np.ndarray) -> float:
    """RMS level of a float waveform in dB relative to full scale (digital silence: -inf)."""
    power = float(np.mean(np.square(wave, dtype=np.float64))) if np.size(wave) else 0.0
    return 10 * float(np.log10(power)) if power > 0 else float("-inf")


def modality_of(extension: str) -> str | None:
    """Returns the modality of a member extension (``"seg.jpg"`` counts as ``"jpg"``)."""
    ext = extension.rsplit(".", 1)[-1].lower()
    for modality, extensions in MODALITY_EXTENSIONS.items():
        if ext in extensions:
            return modality
    return None


def first_member(members: Dict[str, bytes], modality: str) -> Tuple[str, bytes] | None:
    """Returns ``(extension, payload)`` of the first member of ``modality`` in sorted order."""
    for ext in sorted(members):
        if modality_of(ext) == modality:
            return ext, members[ext]
    return None
