"""Output formats: each writer turns one shard's sorted rows into named, encoded parts.

Writers only encode; :class:`transforms.io.sink.ShardSink` decides when to write and makes
every write atomic. All encodings are deterministic (same rows, same bytes), so reruns and
resumed runs write identical files.
"""

import io
import json
import tarfile
from typing import Any, List, NamedTuple, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.common import DeadLetter, Filtered
from schemas.tables import TableSpec
from transforms.io.layout import WEBDATASET_DIR, part_file

FORMATS = ("parquet", "webdataset")

Part = Tuple[str, Sequence[Any]]


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialises a table as Parquet (zstd) in memory."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def records_jsonl(records: Sequence[NamedTuple]) -> bytes:
    """Dead letters or filtered records as JSON Lines: one object with the record's fields per line.

    Strings that are not valid Unicode (lone surrogates from undecodable file names) are
    written as JSON ``\\udcXX`` escapes, so the file is always valid UTF-8.
    """
    return b"".join(json.dumps(r._asdict(), sort_keys=True).encode("ascii") + b"\n" for r in records)


def read_dead_letters_jsonl(data: bytes) -> List[DeadLetter]:
    """The inverse of :func:`records_jsonl` for dead letters."""
    return [DeadLetter(**json.loads(line)) for line in data.splitlines() if line.strip()]


def read_filtered_jsonl(data: bytes) -> List[Filtered]:
    """The inverse of :func:`records_jsonl` for filtered records."""
    return [Filtered(**json.loads(line)) for line in data.splitlines() if line.strip()]


class PartWriter:
    """Base of the product writers: splits rows into parts of at most ``rows_per_file``.

    Args:
        rows_per_file: Most rows in one output file.
    """

    extension = ""

    def __init__(self, rows_per_file: int = 10_000):
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be at least 1")
        self.rows_per_file = rows_per_file

    def folder(self, spec: TableSpec) -> str:
        """Folder of the parts, relative to the output folder."""
        raise NotImplementedError

    def encode(self, spec: TableSpec, rows: Sequence[Any]) -> bytes:
        """One part's bytes."""
        raise NotImplementedError

    def parts(self, spec: TableSpec, name: str, rows: Sequence[Any]) -> List[Part]:
        """``(relative path, rows)`` of every part written for output name ``name``."""
        chunks = range(0, len(rows), self.rows_per_file)
        return [
            (part_file(self.folder(spec), name, i, self.extension), rows[start : start + self.rows_per_file])
            for i, start in enumerate(chunks)
        ]


class ParquetWriter(PartWriter):
    """The product: ``<table>/<name>-00000.parquet`` with the table's schema (zstd)."""

    extension = "parquet"

    def folder(self, spec: TableSpec) -> str:
        return spec.name

    def encode(self, spec: TableSpec, rows: Sequence[Any]) -> bytes:
        return parquet_bytes(spec.to_table(rows))


class WebDatasetWriter(PartWriter):
    """A WebDataset copy: ``__webdataset/<table>/<name>-00000.tar`` with the members of
    ``spec.webdataset_members(row)`` per row (mtime 0 and fixed modes: identical bytes on
    every run)."""

    extension = "tar"

    def folder(self, spec: TableSpec) -> str:
        return f"{WEBDATASET_DIR}/{spec.name}"

    def encode(self, spec: TableSpec, rows: Sequence[Any]) -> bytes:
        if spec.webdataset_members is None:
            raise ValueError(f"table {spec.name!r} declares no WebDataset members")
        sink = io.BytesIO()
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row in rows:
                for member, data in spec.webdataset_members(row):
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        return sink.getvalue()


class NullWriter(PartWriter):
    """Writes no product (manifests and dead letters only), e.g. for dry runs."""

    def parts(self, spec: TableSpec, name: str, rows: Sequence[Any]) -> List[Part]:
        return []


def format_writers(formats: Sequence[str], rows_per_file: int) -> List[PartWriter]:
    """Writers for ``--format`` values (a subset of :data:`FORMATS`).

    Raises:
        ValueError: An unknown format, naming the valid ones.
    """
    classes = {"parquet": ParquetWriter, "webdataset": WebDatasetWriter}
    unknown = [f for f in formats if f not in classes]
    if unknown or not formats:
        raise ValueError(f"unknown output format {unknown}; choose from {FORMATS}")
    return [classes[f](rows_per_file) for f in formats]
