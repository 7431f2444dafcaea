"""Rows of the ``transcribe`` job: one transcript per audio record (or dead letter)."""

from typing import Any, Dict, List, NamedTuple, Sequence, Tuple, Union

import pyarrow as pa

from schemas.tables import TableSpec


class AudioRef(NamedTuple):
    """An audio record before decoding: where its payload is.

    Attributes:
        key: Record key, unique within its shard: the WebDataset ``__key__`` for tar
            shards, the path relative to the folder (extension included) for folders, the
            file name (extension included) for a single file.
        source: The input shard (tar file, folder or single audio file).
        payload: Encoded bytes (tar member) or a local file path.
    """

    key: str
    source: str
    payload: Union[bytes, str]


class AudioItem(NamedTuple):
    """Decoded audio crossing from the reader to the model stage.

    Attributes:
        key: Record key (see ``AudioRef``).
        source: The input shard.
        samples: Mono float32 samples at 16 kHz (numpy, cheap to shuffle between stages).
    """

    key: str
    source: str
    samples: object


class TranscriptRow(NamedTuple):
    """One transcribed audio record.

    Attributes:
        key: Record key (see ``AudioRef``).
        source: The input shard.
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


def transcript_table(rows: Sequence[TranscriptRow]) -> pa.Table:
    """Builds an ``ASR_SCHEMA`` table from rows (in the given order)."""
    return pa.table({name: [getattr(r, name) for r in rows] for name in ASR_SCHEMA.names}, schema=ASR_SCHEMA)


def transcript_rows(table: pa.Table) -> List[TranscriptRow]:
    """The inverse of :func:`transcript_table`."""
    return [TranscriptRow(**{name: record[name] for name in TranscriptRow._fields}) for record in table.to_pylist()]


def _transcript_order(row: TranscriptRow) -> Tuple[str, str]:
    return row.key, row.text


def _transcript_fields(rows: Sequence[TranscriptRow]) -> Dict[str, Any]:
    return {"audio_s": round(float(sum(r.duration_s for r in rows)), 3), "models": sorted({r.model for r in rows})}


TRANSCRIPTS_TABLE = TableSpec(
    name="transcripts",
    schema=ASR_SCHEMA,
    to_table=transcript_table,
    from_table=transcript_rows,
    sort_key=_transcript_order,
    manifest_fields=_transcript_fields,
)
"""``<output>/transcripts/<shard name>-00000.parquet``: one row per transcribed audio record."""
