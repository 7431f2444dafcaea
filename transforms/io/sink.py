"""ShardSink: per input shard, atomic product parts, dead letters and a manifest, last.

Apply to ``{"rows": ..., "dead_letters": ..., "stats": ...[, "filtered": ...]}``: everything is
grouped by source shard (one ``CoGroupByKey``), each shard is checked (records read = rows +
dead letters + filtered, else :class:`AccountingError`) and written: product parts, then the
dead letters and the filtered records (each with its reason), then the manifest that marks the shard done for ``--resume``. Files go where
``transforms.io.layout`` says, each one written under a hidden temporary name and renamed.

Rewriting a shard (rerun, resume after a crash, dead-letter retry) first records every file
the rewrite may leave (old manifest's files plus the new ones) in ``<name>.pending``, then
drops the manifest, writes, deletes exactly the old files not written again, and writes the
manifest. Nothing is ever deleted by pattern: only files this sink wrote for this shard.
"""

import json
import logging
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.common import DeadLetter
from schemas.tables import TableSpec
from transforms.errors import DEAD_LETTER_TAG, count
from transforms.io.layout import (
    MANIFEST_DIR,
    dead_letter_file,
    delete_if_present,
    filtered_file,
    join,
    list_names,
    manifest_path,
    output_name,
    owned_file_pattern,
    pending_path,
    remove_stale_temps,
    write_atomic,
)
from transforms.io.read_shards import ShardStats
from transforms.io.writers import ParquetWriter, PartWriter, records_jsonl

STAGE = "WriteShards"
_LOG = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """Raised when a shard's outputs plus dead letters do not add up to its inputs."""


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
    return sorted(dead, key=lambda d: (d.key, d.stage, d.error_type, d.message))


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """A JSON object file, or None (with a warning) when it is missing, unreadable or not a
    JSON object: a damaged manifest means "not done", never a crash."""
    try:
        with FileSystems.open(path) as f:
            value = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _LOG.warning("ignoring %s: not a readable JSON file (%s); its shard counts as not done", path, err)
        return None
    if not isinstance(value, dict) or not isinstance(value.get("source"), str):
        _LOG.warning("ignoring %s: not a shard manifest; its shard counts as not done", path)
        return None
    return value


def read_manifest(output_dir: str, source: str) -> Optional[Dict[str, Any]]:
    """The manifest of ``source`` if the shard is done (and the manifest is intact), else None."""
    manifest = read_json(manifest_path(output_dir, source))
    return manifest if manifest is not None and manifest["source"] == source else None


def read_manifests(output_dir: str) -> List[Dict[str, Any]]:
    """Every intact shard manifest under ``output_dir`` (sorted by source); damaged ones are
    skipped with a warning."""
    folder = join(output_dir, MANIFEST_DIR)
    manifests = [read_json(FileSystems.join(folder, n)) for n in list_names(folder) if n.endswith(".json")]
    return sorted((m for m in manifests if m is not None), key=lambda m: m["source"])


def finished_sources(output_dir: str, sources: Sequence[str]) -> Set[str]:
    """The sources among ``sources`` whose shard is done (intact manifest for that source)."""
    return {s for s in sources if read_manifest(output_dir, s) is not None}


def previous_files(output_dir: str, source: str) -> Set[str]:
    """Files (relative) an earlier write of ``source`` may have left: those listed in its
    manifest and pending list, restricted to names this sink writes for the shard."""
    owned = owned_file_pattern(output_name(source))
    listed: Set[str] = set()
    for path in (manifest_path(output_dir, source), pending_path(output_dir, source)):
        record = read_json(path)
        if record is not None and record["source"] == source and isinstance(record.get("files"), list):
            listed.update(f for f in record["files"] if isinstance(f, str) and owned.match(f))
    return listed


class ShardSinkFn(beam.DoFn):
    """Writes one grouped shard; see the module docstring for the order of writes.

    Args:
        output_dir: Root of the output.
        spec: The output table.
        writers: Product writers (``ParquetWriter``, ``WebDatasetWriter``, ``NullWriter``).
    """

    def __init__(self, output_dir: str, spec: TableSpec, writers: Sequence[PartWriter]):
        self._out = output_dir
        self._spec = spec
        self._writers = list(writers)

    def process(self, element: Tuple[str, Dict[str, Iterable]]) -> Iterator[Dict[str, Any]]:
        source, grouped = element
        rows = sorted(grouped["rows"], key=self._spec.sort_key)
        dead = sorted_dead_letters(grouped["dead_letters"])
        filtered = sorted(grouped.get("filtered", ()), key=lambda f: (f.key, f.reason))
        expected = records_read(grouped["stats"])
        if len(rows) + len(dead) + len(filtered) != expected:
            raise AccountingError(
                f"{source}: read {expected} records but wrote {len(rows)} rows, {len(dead)} dead letters"
                f" and filtered {len(filtered)}"
            )
        name = output_name(source)
        parts = [(rel, chunk, w) for w in self._writers for rel, chunk in w.parts(self._spec, name, rows)]
        dead_rel = dead_letter_file(source) if dead else None
        filtered_rel = filtered_file(source) if filtered else None
        new = [rel for rel, _, _ in parts] + [rel for rel in (dead_rel, filtered_rel) if rel]
        old = previous_files(self._out, source)
        manifest_file, pending_file = manifest_path(self._out, source), pending_path(self._out, source)
        write_atomic(pending_file, json.dumps({"source": source, "files": sorted(old | set(new))}).encode())
        delete_if_present([manifest_file])
        remove_stale_temps([manifest_file, pending_file, *(join(self._out, f) for f in old | set(new))])
        written = 0
        for rel, chunk, writer in parts:
            data = writer.encode(self._spec, chunk)
            write_atomic(join(self._out, rel), data)
            written += len(data)
        for rel, records in ((dead_rel, dead), (filtered_rel, filtered)):
            if rel:
                data = records_jsonl(records)
                write_atomic(join(self._out, rel), data)
                written += len(data)
        delete_if_present([join(self._out, f) for f in sorted(old - set(new))])
        manifest = {
            "source": source,
            "name": name,
            "table": self._spec.name,
            "records": expected,
            "rows": len(rows),
            "dead_letters": len(dead),
            "filtered": len(filtered),
            "filtered_by_reason": dict(sorted(Counter(getattr(f, "reason", "") for f in filtered).items())),
            "dead_letters_by_stage": dict(sorted(Counter(d.stage for d in dead).items())),
            "dead_letters_by_type": dict(sorted(Counter(d.error_type for d in dead).items())),
            **self._spec.manifest_fields(rows),
            "files": new,
            "dead_letter_file": dead_rel,
            "filtered_file": filtered_rel,
            "bytes_written": written,
        }
        write_atomic(manifest_file, json.dumps(manifest, indent=1, sort_keys=True).encode())
        delete_if_present([pending_file])
        count(STAGE, "rows", len(rows))
        count(STAGE, "dead_letters", len(dead))
        count(STAGE, "filtered", len(filtered))
        yield manifest


class ShardSink(beam.PTransform):
    """Groups rows, dead letters (and filtered records) with the read counts by source shard
    and writes each shard; returns the PCollection of per-shard manifests (dicts).

    Args:
        output_dir: Root of the output.
        spec: The output table.
        writers: Product writers; default one ``ParquetWriter()``.
    """

    def __init__(self, output_dir: str, spec: TableSpec, writers: Optional[Sequence[PartWriter]] = None):
        super().__init__()
        self._fn = ShardSinkFn(output_dir, spec, writers if writers is not None else [ParquetWriter()])

    def expand(self, inputs):
        named = {"Rows": inputs["rows"], "Dead_Letters": inputs[DEAD_LETTER_TAG], "Stats": inputs["stats"]}
        if "filtered" in inputs:
            named["Filtered"] = inputs["filtered"]
        return group_by_source(named) | "WriteShard" >> beam.ParDo(self._fn)
