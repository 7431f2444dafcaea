"""WriteCorpusShards: per input shard, atomic Parquet / WebDataset parts plus a manifest.

Every input shard ``<stem>.tar`` becomes ``corpus/<stem>-00000.parquet`` … (at most
``rows_per_shard`` rows each, sorted by key), ``dead_letters/<stem>.parquet`` when it had
failures, optionally ``webdataset/<stem>-00000.tar``, and last ``_manifests/<stem>.json``.
Each file is written under a temporary name and renamed, so a crashed run leaves no
half-written file under a final name; the manifest marks the shard done for ``--resume``.
"""

import io
import json
import os
import tarfile
import uuid
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.common import DEAD_LETTER_SCHEMA, DeadLetter
from schemas.corpus import CORPUS_SCHEMA, CorpusRow
from transforms.errors import DEAD_LETTER_TAG, count
from transforms.io.read_shards import ShardStats

STAGE = "WriteShards"
FORMATS = ("parquet", "webdataset")


class AccountingError(RuntimeError):
    """Raised when a shard's outputs plus dead letters do not add up to its inputs."""


def shard_stem(source: str) -> str:
    """Output name stem of an input shard: its base name without ``.tar``/``.tar.gz``."""
    base = os.path.basename(source.rstrip("/"))
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def manifest_path(output_dir: str, source: str) -> str:
    """Where the manifest that marks ``source`` as done lives."""
    return FileSystems.join(output_dir, "_manifests", shard_stem(source) + ".json")


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to a temporary sibling of ``path``, then renames it into place."""
    parent = os.path.dirname(path)
    if not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except IOError:  # another worker created it first
            pass
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


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
    """The inverse of :func:`corpus_table`: rows of a corpus Parquet table as ``CorpusRow``."""
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


def dead_letter_table(dead: Sequence[DeadLetter]) -> pa.Table:
    """Builds a ``DEAD_LETTER_SCHEMA`` table."""
    return pa.table(
        {name: [getattr(d, name) for d in dead] for name in DEAD_LETTER_SCHEMA.names},
        schema=DEAD_LETTER_SCHEMA,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialises a table as Parquet (zstd) in memory."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def webdataset_bytes(rows: Sequence[CorpusRow]) -> bytes:
    """A WebDataset tar with ``<key>.tokens.npy`` and ``<key>.json`` per row (mtime 0, so the
    bytes are identical on every run)."""
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            npy = io.BytesIO()
            np.save(npy, row.tokens.reshape(row.token_shape), allow_pickle=False)
            meta = {k: v for k, v in row._asdict().items() if k not in ("tokens", "token_shape")}
            for name, data in (
                (f"{row.key}.tokens.npy", npy.getvalue()),
                (f"{row.key}.json", json.dumps(meta, sort_keys=True).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def by_source(record: Any) -> Tuple[str, Any]:
    """Keys a record (anything with a ``source`` field) by its source shard."""
    return record.source, record


def group_by_source(inputs: Dict[str, beam.PCollection]) -> beam.PCollection:
    """Co-groups PCollections of records by source shard: ``(source, {name: [records]})``.

    Each input is keyed by a step labelled ``Key<Name>BySource``, so pass CamelCase names
    (``{"Rows": rows, "Dead": dead_letters, "Stats": stats}``); the grouped dict uses them
    lowercased (``"rows"``, ``"dead"``, ``"stats"``).
    """
    keyed = {name.lower(): pcoll | f"Key{name}BySource" >> beam.Map(by_source) for name, pcoll in inputs.items()}
    return keyed | "GroupBySource" >> beam.CoGroupByKey()


def records_read(stats: Iterable[ShardStats]) -> int:
    """How many records the reader produced for a shard (its ``ShardStats`` summed)."""
    return sum(s.records for s in stats)


def sorted_dead_letters(dead: Iterable[DeadLetter]) -> List[DeadLetter]:
    """Dead letters in a stable order (key, stage, message), so reruns write identical files."""
    return sorted(dead, key=lambda d: (d.key, d.stage, d.message))


def write_shard_dead_letters(output_dir: str, stem: str, dead: Sequence[DeadLetter]) -> List[str]:
    """Writes ``dead_letters/<stem>.parquet`` when there are any; returns the paths written."""
    if not dead:
        return []
    path = FileSystems.join(output_dir, "dead_letters", f"{stem}.parquet")
    write_atomic(path, parquet_bytes(dead_letter_table(dead)))
    return [path]


def write_manifest(output_dir: str, manifest: Dict[str, Any]) -> None:
    """Writes the manifest of ``manifest["source"]``; written last, it marks the shard done."""
    write_atomic(manifest_path(output_dir, manifest["source"]), json.dumps(manifest, indent=1).encode())


class WriteShardFn(beam.DoFn):
    """Writes one input shard's rows and dead letters, checks its accounting, then the manifest.

    Args:
        output_dir: Root of the output.
        rows_per_shard: Most rows in one output part.
        formats: Subset of ``FORMATS``.
    """

    def __init__(self, output_dir: str, rows_per_shard: int, formats: Sequence[str]):
        self._out = output_dir
        self._rows_per_shard = rows_per_shard
        self._formats = tuple(formats)

    def process(self, element: Tuple[str, Dict[str, Iterable]]) -> Iterator[Dict[str, Any]]:
        source, grouped = element
        rows = sorted(grouped["rows"], key=lambda r: r.key)
        dead = sorted_dead_letters(grouped["dead"])
        expected = records_read(grouped["stats"])
        if len(rows) + len(dead) != expected:
            raise AccountingError(
                f"{source}: read {expected} records but wrote {len(rows)} rows and "
                f"{len(dead)} dead letters"
            )
        stem = shard_stem(source)
        self._remove_stale(stem)
        files: List[str] = []
        for part, start in enumerate(range(0, len(rows), self._rows_per_shard)):
            chunk = rows[start : start + self._rows_per_shard]
            if "parquet" in self._formats:
                path = FileSystems.join(self._out, "corpus", f"{stem}-{part:05d}.parquet")
                write_atomic(path, parquet_bytes(corpus_table(chunk)))
                files.append(path)
            if "webdataset" in self._formats:
                path = FileSystems.join(self._out, "webdataset", f"{stem}-{part:05d}.tar")
                write_atomic(path, webdataset_bytes(chunk))
                files.append(path)
        files += write_shard_dead_letters(self._out, stem, dead)
        manifest = {
            "source": source,
            "records": expected,
            "rows": len(rows),
            "dead_letters": len(dead),
            "rows_by_modality": dict(Counter(r.modality for r in rows)),
            "dead_letters_by_stage": dict(Counter(d.stage for d in dead)),
            "dead_letters_by_type": dict(Counter(d.error_type for d in dead)),
            "tokens": int(sum(r.tokens.size for r in rows)),
            "tokens_by_modality": {
                m: int(sum(r.tokens.size for r in rows if r.modality == m))
                for m in sorted({r.modality for r in rows})
            },
            "source_bytes": int(sum(r.source_bytes for r in rows)),
            "tokenizers": sorted({f"{r.tokenizer}@{r.tokenizer_version}" for r in rows}),
            "files": files,
        }
        write_manifest(self._out, manifest)
        count(STAGE, "rows", len(rows))
        count(STAGE, "dead_letters", len(dead))
        yield manifest

    def _remove_stale(self, stem: str) -> None:
        """Deletes parts a previous run left for this shard, its manifest first: a crash while
        the shard is rewritten (e.g. by a dead-letter retry) leaves it unfinished for
        ``--resume``, never marked done with half its files."""
        patterns = [
            FileSystems.join(self._out, "_manifests", f"{stem}.json"),
            FileSystems.join(self._out, "corpus", f"{stem}-*.parquet"),
            FileSystems.join(self._out, "webdataset", f"{stem}-*.tar"),
            FileSystems.join(self._out, "dead_letters", f"{stem}.parquet"),
        ]
        stale = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
        if stale:
            FileSystems.delete(stale)


class WriteCorpusShards(beam.PTransform):
    """Groups rows, dead letters and read counts by source shard and writes each shard.

    Apply to a dict ``{"rows": ..., "dead_letters": ..., "stats": ...}``; returns the
    PCollection of per-shard manifests (dicts).

    Args:
        output_dir: Root of the output.
        rows_per_shard: Most rows in one output part.
        formats: Subset of ``FORMATS``.
    """

    def __init__(self, output_dir: str, rows_per_shard: int = 10_000, formats: Sequence[str] = ("parquet",)):
        super().__init__()
        self._fn = WriteShardFn(output_dir, rows_per_shard, formats)

    def expand(self, inputs):
        grouped = group_by_source({"Rows": inputs["rows"], "Dead": inputs[DEAD_LETTER_TAG], "Stats": inputs["stats"]})
        return grouped | "WriteShard" >> beam.ParDo(self._fn)


def read_manifests(output_dir: str) -> List[Dict[str, Any]]:
    """Loads every shard manifest under ``output_dir`` (sorted by source)."""
    pattern = FileSystems.join(output_dir, "_manifests", "*.json")
    manifests = []
    for result in FileSystems.match([pattern]):
        for meta in result.metadata_list:
            with FileSystems.open(meta.path) as f:
                manifests.append(json.loads(f.read()))
    return sorted(manifests, key=lambda m: m["source"])
