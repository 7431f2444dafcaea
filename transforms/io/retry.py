"""Retrying dead letters alone: find them in a finished output, keep only their records.

A job writing through ``ShardSink`` can re-run just the failed records of finished shards:
:func:`dead_letter_keys` lists them per source shard, the job re-reads those shards and
:class:`KeepKeys` drops every record whose key did not fail, :class:`LoadKeptRows` reloads the
rows the previous run kept (minus any row sharing a retried key: a hostile shard may repeat a
key, and every record with that key is read again), and the sink rewrites each shard with both,
so ``records = rows + dead letters`` still holds per shard.
"""

from typing import Any, Callable, Dict, Iterator, List, Set

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.common import Filtered
from schemas.tables import TableSpec
from transforms.errors import count
from transforms.io.layout import join
from transforms.io.sink import read_manifest
from transforms.io.writers import read_dead_letters_jsonl, read_filtered_jsonl

STAGE = "RetryDeadLetters"


def _shard_records(output_dir: str, sources: List[str], file_field: str,
                   read: Callable[[bytes], List[Any]]) -> Dict[str, List[Any]]:
    """The records (dead letters or filtered) of each finished source among ``sources``, read
    from the file its manifest names under ``file_field``; sources with none are left out."""
    found: Dict[str, List[Any]] = {}
    for source in sources:
        manifest = read_manifest(output_dir, source)
        if manifest is None or not manifest.get(file_field):
            continue
        with FileSystems.open(join(output_dir, manifest[file_field])) as f:
            records = [r for r in read(f.read()) if r.source == source]
        if records:
            found[source] = records
    return found


def dead_letter_keys(output_dir: str, sources: List[str]) -> Dict[str, Set[str]]:
    """Keys of the dead letters of each finished source among ``sources`` (shards with no
    dead letters, or not finished, are left out)."""
    dead = _shard_records(output_dir, sources, "dead_letter_file", read_dead_letters_jsonl)
    return {source: {d.key for d in records} for source, records in dead.items()}


def filtered_records(output_dir: str, sources: List[str]) -> Dict[str, List[Filtered]]:
    """The filtered records an earlier run wrote for each finished source among ``sources``
    (a retry writes them again unchanged, so the shard's accounting still holds)."""
    return _shard_records(output_dir, sources, "filtered_file", read_filtered_jsonl)


class KeepKeys(beam.DoFn):
    """Keeps records (anything with ``key`` and ``source``) whose key is listed for their
    source; counts the kept ones as ``RetryDeadLetters/retried``.

    Args:
        keys: Source shard to the keys to keep.
    """

    def __init__(self, keys: Dict[str, Set[str]]):
        self._keys = {source: frozenset(k) for source, k in keys.items()}

    def process(self, record: Any) -> Iterator[Any]:
        if record.key in self._keys.get(record.source, ()):
            count(STAGE, "retried")
            yield record


class LoadKeptRows(beam.DoFn):
    """Loads the rows an earlier run wrote for a source shard (the Parquet parts its manifest
    lists), except rows whose key is retried, so a retry can write the shard again with the
    kept rows plus the retried ones.

    Args:
        output_dir: Root of the earlier run's output.
        spec: The output table (its Parquet parts are read back with ``spec.from_table``).
        retried: Source shard to the keys being retried.
    """

    def __init__(self, output_dir: str, spec: TableSpec, retried: Dict[str, Set[str]]):
        self._out = output_dir
        self._spec = spec
        self._retried = {source: frozenset(k) for source, k in retried.items()}

    def process(self, source: str) -> Iterator[Any]:
        manifest = read_manifest(self._out, source)
        if manifest is None:
            return
        skip = self._retried.get(source, frozenset())
        prefix = self._spec.name + "/"
        for rel in sorted(f for f in manifest["files"] if f.startswith(prefix) and f.endswith(".parquet")):
            with FileSystems.open(join(self._out, rel)) as f:
                rows = [r for r in self._spec.from_table(pq.read_table(f)) if r.key not in skip]
            count(STAGE, "kept_rows", len(rows))
            yield from rows
