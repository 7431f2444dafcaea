"""Record types shared by every job: media samples in, dead letters out."""

from typing import Dict, NamedTuple


class MediaSample(NamedTuple):
    """One WebDataset sample: its ``__key__``, the shard it came from, and its members.

    Attributes:
        key: The WebDataset ``__key__`` (file name up to the first dot of the base name).
        source: URL or path of the shard (or folder) the sample was read from.
        members: Extension (lower case, without the leading dot, e.g. ``"jpg"`` or
            ``"seg.wav"``) to the member's raw bytes.
    """

    key: str
    source: str
    members: Dict[str, bytes]


class DeadLetter(NamedTuple):
    """A record that could not be processed, with where and why.

    Attributes:
        key: Key of the failed record (a synthetic ``<shard>#damage@<offset>`` key for
            damage inside a shard that could not be attributed to one sample).
        source: Shard or stream the record came from.
        stage: CamelCase label of the step that failed (``ReadShards``, ``Tokenize`` ...).
        error_type: Exception class name.
        message: Human-readable reason.
    """

    key: str
    source: str
    stage: str
    error_type: str
    message: str


class Filtered(NamedTuple):
    """A record a job left out on purpose (not an error), counted in the shard's accounting.

    Attributes:
        key: Key of the record.
        source: Shard it came from.
        reason: Why it was left out (short, stable text: it is counted per reason).
    """

    key: str
    source: str
    reason: str
