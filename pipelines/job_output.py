"""Where a batch job's output lives, seen from the launcher: manifests, dead letters, run files.

Thin calls into ``transforms.io`` (the layout ``ShardSink`` writes), so the job base has one
place to read finished shards from and to write its run files. Run files (``summary.json``,
``report.json``, ``report.html``, live progress) go under ``<output>/__job/``, so
``pyarrow.dataset.dataset(output)`` and ``datasets.load_dataset("parquet", data_dir=output)``
read only product rows.
"""

from typing import Any, Dict, List, Sequence, Set

from apache_beam.io.filesystems import FileSystems

from transforms.io import layout
from transforms.io import retry as _retry
from transforms.io import sink as _sink
from transforms.io.writers import read_dead_letters_jsonl


def read_manifests(output_dir: str, sources: Sequence[str]) -> List[Dict[str, Any]]:
    """The intact manifests of the finished shards among ``sources``, sorted by source."""
    wanted = set(sources)
    return [m for m in _sink.read_manifests(output_dir) if m["source"] in wanted]


def dead_letter_keys(output_dir: str, sources: Sequence[str]) -> Dict[str, Set[str]]:
    """Keys of the dead letters of ``sources`` (shards without any are left out)."""
    return _retry.dead_letter_keys(output_dir, list(sources))


def filtered_records(output_dir: str, sources: Sequence[str]) -> Dict[str, List[Any]]:
    """The filtered records (``schemas.common.Filtered``) of the finished ``sources``, per source."""
    return _retry.filtered_records(output_dir, list(sources))


def read_product_rows(output_dir: str, manifests: Sequence[Dict[str, Any]], table: str,
                      columns: Sequence[str]) -> List[Dict[str, Any]]:
    """``columns`` of every Parquet part of product ``table`` the shard ``manifests`` list, as dicts."""
    import pyarrow.parquet as pq

    rows: List[Dict[str, Any]] = []
    for manifest in manifests:
        for rel in manifest["files"]:
            if rel.startswith(f"{table}/") and rel.endswith(".parquet"):
                with FileSystems.open(layout.join(output_dir, rel)) as f:
                    rows.extend(pq.read_table(f, columns=list(columns)).to_pylist())
    return rows


def read_dead_letters(manifests: Sequence[Dict[str, Any]], output_dir: str) -> List[Dict[str, str]]:
    """Every dead letter of the shards of ``manifests``, as dicts."""
    rows: List[Dict[str, str]] = []
    for manifest in manifests:
        if manifest.get("dead_letter_file"):
            with FileSystems.open(layout.join(output_dir, manifest["dead_letter_file"])) as f:
                rows += [d._asdict() for d in read_dead_letters_jsonl(f.read())]
    return rows


def meta_path(output_dir: str, name: str) -> str:
    """Path of a run file (``summary.json``, ``report.html``, ``progress``) of ``output_dir``."""
    return FileSystems.join(output_dir, layout.JOB_DIR, name)


def write_meta(output_dir: str, name: str, data: bytes) -> str:
    """Writes a run file atomically; returns its path."""
    path = meta_path(output_dir, name)
    layout.write_atomic(path, data)
    return path
