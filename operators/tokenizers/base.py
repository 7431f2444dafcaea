"""The contract every tokenizer operator follows (no Beam import here)."""

from typing import Any, Dict, NamedTuple, Protocol, Tuple, runtime_checkable

import numpy as np

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ts")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "aac")
MODALITY_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS, "audio": AUDIO_EXTENSIONS}


class MediaError(ValueError):
    """Raised when a media payload is empty, corrupt, too large or otherwise unusable."""


class TokenOutput(NamedTuple):
    """What a tokenizer returns for one media item.

    Attributes:
        tokens: Integer tokens, shape ``[T]`` or ``[T, C]`` (e.g. ``[T, 1 + n_acoustic]``).
        meta: Measurements a user would filter on: ``duration_s``, ``width``, ``height``,
            ``num_frames``, ``sample_rate``, ``bitrate_bps`` (any subset).
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
