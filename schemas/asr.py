"""Rows of the ``transcribe`` job: one transcript per audio file (or dead letter)."""

from typing import List, NamedTuple

import pyarrow as pa


class AudioItem(NamedTuple):
    """Decoded audio crossing from the reader to the model stage.

    Attributes:
        key: Stable record key (the file name without its extension).
        source: Path of the file.
        samples: Mono float32 samples at 16 kHz (numpy, cheap to shuffle between stages).
    """

    key: str
    source: str
    samples: object


class TranscriptRow(NamedTuple):
    """One transcribed file.

    Attributes:
        key: Record key (file name without extension).
        source: Path of the audio file.
        text: Greedy transcript.
        tokens: Token ids of the transcript (model vocabulary, blank excluded).
        duration_s: Audio duration in seconds.
        model: Model file name (``asr_default.nemo`` for the embedded model).
        att_context: Attention context ``"L,R"`` the model ran with (look-ahead R × 80 ms).
        decoder: ``ctc`` or ``rnnt``.
        streaming: True if transcribed through the cache-aware streaming steps.
    """

    key: str
    source: str
    text: str
    tokens: List[int]
    duration_s: float
    model: str
    att_context: str
    decoder: str
    streaming: bool


ASR_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("att_context", pa.string(), nullable=False),
        pa.field("decoder", pa.string(), nullable=False),
        pa.field("streaming", pa.bool_(), nullable=False),
    ],
    metadata={"mediabeam.table": "transcripts", "mediabeam.schema_version": "1"},
)
