"""The ``documents`` table: one training document per kept sample, in the corpus vocabulary.

Written by build-corpus through ``ShardSink`` as ``<output>/documents/<shard name>-NNNNN.parquet``;
``tokens`` is the whole document (``bos, (<kind> ... </kind>)*, eos``) in the ids of
``<output>/__vocab.json`` (``operators.corpus.vocabulary``).
"""

import io
import json
from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from schemas.tables import TableSpec

VOCAB_FILE = "__vocab.json"
"""The corpus vocabulary, at the output's top. Its ``__`` prefix keeps it out of what Parquet
readers (``pyarrow.dataset``, DuckDB globs, HF ``datasets``) see when pointed at the output."""


class DocumentRow(NamedTuple):
    """One document as it crosses Beam stages (tokens stay numpy, never torch).

    Attributes:
        key: WebDataset ``__key__`` of the sample.
        source: Shard (or folder) the sample came from.
        template: Template that ordered the parts (``caption-then-image`` ...).
        modality: First of video, image, audio among the parts, else ``text``.
        tokens: int32 ids of the whole document in the global vocabulary.
        parts: ``kind:member`` per part in document order (``text:txt``, ``image:jpg``,
            ``audio:mp4`` for a video's sound, ``text:json.caption`` for a JSON field).
        part_tokens: Ids per part, its two markers included.
        duration_s: Duration of the first video (else audio) part, if any.
        width: Source width of the first image or video part, if known.
        height: Source height of the first image or video part, if known.
        source_bytes: Bytes of the members the document uses.
        media_sha1: SHA-1 of the media payloads (equal for exact duplicates).
    """

    key: str
    source: str
    template: str
    modality: str
    tokens: np.ndarray
    parts: Tuple[str, ...]
    part_tokens: Tuple[int, ...]
    duration_s: Optional[float]
    width: Optional[int]
    height: Optional[int]
    source_bytes: int
    media_sha1: str


DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("template", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("num_tokens", pa.int64(), nullable=False),
        pa.field("parts", pa.list_(pa.string()), nullable=False),
        pa.field("part_tokens", pa.list_(pa.int64()), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("source_bytes", pa.int64(), nullable=False),
        pa.field("media_sha1", pa.string(), nullable=False),
    ],
    metadata={"mediabeam.table": "documents", "mediabeam.schema_version": "1"},
)


def documents_table(rows: Sequence[DocumentRow]) -> pa.Table:
    """Rows → a ``DOCUMENTS_SCHEMA`` table (token lists assembled from numpy, no Python ints)."""
    lengths = np.array([r.tokens.size for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([r.tokens for r in rows]).astype(np.int32) if rows else np.zeros(0, np.int32)
    columns: Dict[str, Any] = {
        name: [getattr(r, name) for r in rows] for name in DOCUMENTS_SCHEMA.names
        if name not in ("tokens", "num_tokens", "parts", "part_tokens")
    }
    columns["tokens"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))
    columns["num_tokens"] = lengths
    columns["parts"] = [list(r.parts) for r in rows]
    columns["part_tokens"] = [list(r.part_tokens) for r in rows]
    return pa.table({name: columns[name] for name in DOCUMENTS_SCHEMA.names}, schema=DOCUMENTS_SCHEMA)


def document_rows(table: pa.Table) -> List[DocumentRow]:
    """The inverse of :func:`documents_table` (reloads kept rows for ``--retry-dead-letters``)."""
    tokens = table.column("tokens").combine_chunks()
    offsets = tokens.offsets.to_numpy()
    values = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
    fields = {name: table.column(name).to_pylist() for name in DocumentRow._fields if name != "tokens"}
    return [
        DocumentRow(**{name: fields[name][i] for name in fields if name not in ("parts", "part_tokens")},
                    tokens=values[offsets[i] : offsets[i + 1]].copy(), parts=tuple(fields["parts"][i]),
                    part_tokens=tuple(fields["part_tokens"][i]))
        for i in range(table.num_rows)
    ]


def document_sort_key(row: DocumentRow) -> Tuple[str, str, int, bytes]:
    """Rows by key; a repeated key (a hostile shard may repeat one) by media hash, then tokens."""
    return row.key, row.media_sha1, int(row.tokens.size), row.tokens.tobytes()


def part_kind(part: str) -> str:
    """``"audio:mp4"`` → ``"audio"``."""
    return part.split(":", 1)[0]


def documents_manifest_fields(rows: Sequence[DocumentRow]) -> Dict[str, Any]:
    """Per-shard figures: documents per modality and template, tokens (total and per part kind),
    parts per kind, input bytes."""
    tokens_by_kind: Counter = Counter()
    parts_by_kind: Counter = Counter()
    for row in rows:
        for part, n in zip(row.parts, row.part_tokens):
            tokens_by_kind[part_kind(part)] += int(n)
            parts_by_kind[part_kind(part)] += 1
    return {
        "rows_by_modality": dict(sorted(Counter(r.modality for r in rows).items())),
        "documents_by_template": dict(sorted(Counter(r.template for r in rows).items())),
        "tokens": int(sum(r.tokens.size for r in rows)),
        "tokens_by_modality": dict(sorted(tokens_by_kind.items())),
        "parts_by_kind": dict(sorted(parts_by_kind.items())),
        "source_bytes": int(sum(r.source_bytes for r in rows)),
    }


def documents_webdataset_members(row: DocumentRow) -> List[Tuple[str, bytes]]:
    """``<key>.tokens.npy`` (the document's ids) and ``<key>.json`` (every other field)."""
    npy = io.BytesIO()
    np.save(npy, row.tokens, allow_pickle=False)
    meta = {k: v for k, v in row._asdict().items() if k != "tokens"}
    meta.update(parts=list(row.parts), part_tokens=list(row.part_tokens))
    return [(f"{row.key}.tokens.npy", npy.getvalue()), (f"{row.key}.json", json.dumps(meta, sort_keys=True).encode())]


DOCUMENTS_TABLE = TableSpec(
    name="documents",
    schema=DOCUMENTS_SCHEMA,
    to_table=documents_table,
    from_table=document_rows,
    sort_key=document_sort_key,
    manifest_fields=documents_manifest_fields,
    webdataset_members=documents_webdataset_members,
)
