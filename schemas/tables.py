"""Output tables: how each job's rows become Arrow tables and back, for ``ShardSink``.

A :class:`TableSpec` is everything the sink needs to know about one output table; jobs declare
theirs here (or next to their record type) and hand it to ``transforms.io.sink.ShardSink``.
"""

import dataclasses
import io
import json
import re
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from schemas.corpus import CORPUS_SCHEMA, CorpusRow

Row = Any


def no_fields(rows: Sequence[Row]) -> Dict[str, Any]:
    """Default ``manifest_fields``: nothing beyond the sink's own counts."""
    return {}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One output table.

    Attributes:
        name: Table name and product folder (``[a-z][a-z0-9_]*``), e.g. ``"corpus"``.
        schema: Arrow schema of the product files.
        to_table: Rows (NamedTuples with ``.source`` and ``.key``) to an Arrow table.
        from_table: The inverse, used to reload kept rows for ``--retry-dead-letters``.
        sort_key: Deterministic row order within a shard (ties must be identical rows).
        manifest_fields: Extra per-shard figures for the manifest (counts, token totals ...).
        webdataset_members: ``row -> [(member name, bytes)]`` for the WebDataset writer;
            None when the table has no WebDataset form.
    """

    name: str
    schema: pa.Schema
    to_table: Callable[[Sequence[Row]], pa.Table]
    from_table: Callable[[pa.Table], List[Row]]
    sort_key: Callable[[Row], Any]
    manifest_fields: Callable[[Sequence[Row]], Dict[str, Any]] = no_fields
    webdataset_members: Optional[Callable[[Row], List[Tuple[str, bytes]]]] = None

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"table name {self.name!r} must match [a-z][a-z0-9_]*")


def corpus_table(rows: Sequence[CorpusRow]) -> pa.Table:
    """Builds a ``CORPUS_SCHEMA`` table; token lists are assembled from numpy without copies
    through Python ints."""
    lengths = np.array([r.tokens.size for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([r.tokens for r in rows]) if rows else np.zeros(0, np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))
    columns: Dict[str, Any] = {
        name: [getattr(r, name) for r in rows]
        for name in CORPUS_SCHEMA.names
        if name not in ("tokens", "token_shape", "num_tokens")
    }
    columns["tokens"] = tokens
    columns["token_shape"] = [list(r.token_shape) for r in rows]
    columns["num_tokens"] = lengths
    return pa.table({name: columns[name] for name in CORPUS_SCHEMA.names}, schema=CORPUS_SCHEMA)


def corpus_rows(table: pa.Table) -> List[CorpusRow]:
    """The inverse of :func:`corpus_table`: rows of a corpus table as ``CorpusRow``."""
    tokens = table.column("tokens").combine_chunks()
    offsets = tokens.offsets.to_numpy()
    values = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
    fields = {name: table.column(name).to_pylist() for name in CorpusRow._fields if name != "tokens"}
    return [
        CorpusRow(
            **{name: fields[name][i] for name in fields if name != "token_shape"},
            tokens=values[offsets[i] : offsets[i + 1]].copy(),
            token_shape=tuple(fields["token_shape"][i]),
        )
        for i in range(table.num_rows)
    ]


def corpus_sort_key(row: CorpusRow) -> Tuple[str, str, str, str]:
    """Rows by key; duplicate keys (a hostile shard may repeat one) by member and content."""
    return row.key, row.member, row.tokenizer, row.sha1


def corpus_manifest_fields(rows: Sequence[CorpusRow]) -> Dict[str, Any]:
    """Per-shard corpus figures: rows and tokens per modality, input bytes, tokenizers."""
    return {
        "rows_by_modality": dict(sorted(Counter(r.modality for r in rows).items())),
        "tokens": int(sum(r.tokens.size for r in rows)),
        "tokens_by_modality": {
            m: int(sum(r.tokens.size for r in rows if r.modality == m)) for m in sorted({r.modality for r in rows})
        },
        "source_bytes": int(sum(r.source_bytes for r in rows)),
        "tokenizers": sorted({f"{r.tokenizer}@{r.tokenizer_version}" for r in rows}),
    }


def corpus_webdataset_members(row: CorpusRow) -> List[Tuple[str, bytes]]:
    """``<key>.tokens.npy`` (tokens in their shape) and ``<key>.json`` (every other field)."""
    npy = io.BytesIO()
    np.save(npy, row.tokens.reshape(row.token_shape), allow_pickle=False)
    meta = {k: v for k, v in row._asdict().items() if k not in ("tokens", "token_shape")}
    return [(f"{row.key}.tokens.npy", npy.getvalue()), (f"{row.key}.json", json.dumps(meta, sort_keys=True).encode())]


CORPUS_TABLE = TableSpec(
    name="corpus",
    schema=CORPUS_SCHEMA,
    to_table=corpus_table,
    from_table=corpus_rows,
    sort_key=corpus_sort_key,
    manifest_fields=corpus_manifest_fields,
    webdataset_members=corpus_webdataset_members,
)
