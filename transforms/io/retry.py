"""Retrying dead letters alone: find them in a finished output, keep only their records.

A batch job that writes ``dead_letters/<stem>.parquet`` (``DEAD_LETTER_SCHEMA``) and a
manifest per input shard can re-run just the failed records: :func:`dead_letter_keys` lists
them per source shard, the job re-reads those shards and :class:`KeepKeys` drops every
record that did not fail, :class:`LoadCorpusRows` loads the rows the previous run kept, and
the job's writer rewrites each shard with both, so ``inputs = rows + dead letters`` still
holds per shard.
"""

from typing import Any, Dict, Iterator, List, Set

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.corpus import CorpusRow
from transforms.errors import count
from transforms.io.write_shards import corpus_rows, shard_stem

STAGE = "RetryDeadLetters"


def dead_letter_keys(output_dir: str, sources: List[str]) -> Dict[str, Set[str]]:
    """Keys of the dead letters under ``output_dir/dead_letters`` per source shard, for the
    given sources only (shards with no dead letters are left out)."""
    wanted = set(sources)
    keys: Dict[str, Set[str]] = {}
    pattern = FileSystems.join(output_dir, "dead_letters", "*.parquet")
    for result in FileSystems.match([pattern]):
        for meta in result.metadata_list:
            with FileSystems.open(meta.path) as f:
                table = pq.read_table(f, columns=["key", "source"])
            for key, source in zip(table.column("key").to_pylist(), table.column("source").to_pylist()):
                if source in wanted:
                    keys.setdefault(source, set()).add(key)
    return keys


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


class LoadCorpusRows(beam.DoFn):
    """Loads the corpus rows an earlier run wrote for a source shard (all its Parquet parts),
    so a retry can write the shard again with the kept rows plus the retried ones.

    Args:
        output_dir: Root of the earlier run's output.
    """

    def __init__(self, output_dir: str):
        self._out = output_dir

    def process(self, source: str) -> Iterator[CorpusRow]:
        pattern = FileSystems.join(self._out, "corpus", f"{shard_stem(source)}-*.parquet")
        for result in FileSystems.match([pattern]):
            for meta in sorted(result.metadata_list, key=lambda m: m.path):
                with FileSystems.open(meta.path) as f:
                    rows = corpus_rows(pq.read_table(f))
                count(STAGE, "kept_rows", len(rows))
                yield from rows
