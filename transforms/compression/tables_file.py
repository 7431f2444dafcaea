"""``__codec/tables.bin``: the codec tables every stream of a compress-features output refers to.

The tables are written before any shard is coded (the coding steps take the *written*
tables as their side input), so a shard marked done always has its tables on disk; a
resumed run or a dead-letter retry loads them instead of fitting new ones, so every stream
of one output decodes with the same file.
"""

from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from operators.compression.tables import CodecTables
from transforms.io.layout import join, write_atomic

TABLES_FILE = "__codec/tables.bin"
"""Beside the product, in a ``__`` folder that Parquet dataset readers skip."""


def tables_path(output_dir: str) -> str:
    """Where the tables of ``output_dir`` live."""
    return join(output_dir, TABLES_FILE)


def load_tables(output_dir: str) -> Optional[bytes]:
    """The serialised tables of an earlier run, or None if there are none."""
    path = tables_path(output_dir)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def _write(tables: Optional[bytes], output_dir: str) -> Optional[bytes]:
    write_atomic(tables_path(output_dir), tables or CodecTables([]).to_bytes())
    return tables


class WriteTables(beam.PTransform):
    """Writes the singleton tables PCollection to ``tables.bin`` and passes it on, so steps
    that use its output as a side input run only once the file exists."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output = output_dir

    def expand(self, tables):
        return tables | "WriteTablesFile" >> beam.Map(_write, self._output)
