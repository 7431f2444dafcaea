"""The token corpus table: one row per tokenized sample."""

from typing import NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa


class CorpusRow(NamedTuple):
    """One tokenized sample as it crosses Beam stages (tokens stay numpy, not torch).

    Attributes:
        key: WebDataset ``__key__`` of the sample.
        source: Shard (or folder) the sample came from.
        modality: ``image``, ``video`` or ``audio``.
        member: Extension of the member that was tokenized (``jpg``, ``mp4`` ...).
        tokenizer: Tokenizer name; with ``tokenizer_version`` it pins the token meaning.
        tokenizer_version: Tokenizer version.
        tokens: Flattened int32 tokens.
        token_shape: Shape before flattening (``(T,)`` or ``(T, C)``).
        duration_s: Media duration in seconds (audio/video).
        width: Width in pixels of the tokenized image/frames.
        height: Height in pixels of the tokenized image/frames.
        num_frames: Number of video frames tokenized.
        sample_rate: Audio sample rate of the tokenized signal.
        source_bytes: Size of the input member in bytes.
        sha1: SHA-1 of the input member (for deduplication).
    """

    key: str
    source: str
    modality: str
    member: str
    tokenizer: str
    tokenizer_version: str
    tokens: np.ndarray
    token_shape: Tuple[int, ...]
    duration_s: Optional[float]
    width: Optional[int]
    height: Optional[int]
    num_frames: Optional[int]
    sample_rate: Optional[int]
    source_bytes: int
    sha1: str


CORPUS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("member", pa.string(), nullable=False),
        pa.field("tokenizer", pa.string(), nullable=False),
        pa.field("tokenizer_version", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("token_shape", pa.list_(pa.int32()), nullable=False),
        pa.field("num_tokens", pa.int64(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_frames", pa.int32()),
        pa.field("sample_rate", pa.int32()),
        pa.field("source_bytes", pa.int64(), nullable=False),
        pa.field("sha1", pa.string(), nullable=False),
    ],
    metadata={"mediabeam.table": "corpus", "mediabeam.schema_version": "1"},
)
