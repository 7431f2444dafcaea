"""ShardSink: output layout seen by common readers, accounting, exact-name rewrites, resume."""

import json
import logging
import os

import apache_beam as beam
import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.common import DeadLetter, Filtered
from schemas.documents import DOCUMENTS_TABLE, DocumentRow
from transforms.io.layout import (
    OutputNotWritable,
    check_output_writable,
    manifest_path,
    output_name,
    write_atomic,
)
from transforms.io.read_shards import ShardStats
from transforms.io.retry import LoadKeptRows, dead_letter_keys
from transforms.io.sink import AccountingError, ShardSink, ShardSinkFn, finished_sources, read_manifests
from transforms.io.writers import NullWriter, ParquetWriter, WebDatasetWriter


AUDIO = (("audio:wav", 3),)
TRANSCRIBED = (("audio:wav", 3), ("text:txt", 4))


def row(key, source, parts=AUDIO):
    """A document of ``parts`` (``(kind:member, ids)``) with ids ``0, 1, 2 ...`` and 10 input bytes per id."""
    n = sum(count for _, count in parts)
    return DocumentRow(key, source, "audio-with-transcript", "audio", np.arange(n, dtype=np.int32),
                       tuple(p for p, _ in parts), tuple(c for _, c in parts), 1.0, None, None, 10 * n, "0" * 40)


def dead(key, source):
    return DeadLetter(key, source, "Tokenize", "ValueError", f"bad {key}")


def write(out, source, rows, dead_letters=(), filtered=(), writers=None, records=None):
    """Runs the sink's DoFn on one grouped shard, as the CoGroupByKey would hand it over."""
    fn = ShardSinkFn(str(out), DOCUMENTS_TABLE, writers or [ParquetWriter(rows_per_file=2)])
    records = len(rows) + len(dead_letters) + len(filtered) if records is None else records
    grouped = {"rows": list(rows), "dead_letters": list(dead_letters), "filtered": list(filtered),
               "stats": [ShardStats(source, records)]}
    return list(fn.process((source, grouped)))[0]


def all_files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def test_readers_see_exactly_the_product(tmp_path):
    out = tmp_path / "out"
    sources = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    with TestPipeline(runner=FnApiRunner()) as p:
        rows = p | "Rows" >> beam.Create([row(f"k{i}", s, parts) for s, parts in zip(sources, [TRANSCRIBED, AUDIO])
                                          for i in range(3)])
        dl = p | "Dead" >> beam.Create([dead("x", sources[0]), dead("y", sources[1])])
        filtered = p | "Filtered" >> beam.Create([Filtered("z", sources[1], "no audio")])
        stats = p | "Stats" >> beam.Create([ShardStats(sources[0], 4), ShardStats(sources[1], 5)])
        manifests = {"rows": rows, "dead_letters": dl, "stats": stats, "filtered": filtered} | ShardSink(
            str(out), DOCUMENTS_TABLE, [ParquetWriter(rows_per_file=2), WebDatasetWriter(2)])
        assert_that(manifests | beam.Map(lambda m: (m["rows"], m["dead_letters"], m["filtered"])),
                    equal_to([(3, 1, 0), (3, 1, 1)]))
    assert ds.dataset(str(out)).to_table().num_rows == 6
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/**/*.parquet'").fetchall()[0][0] == 6
    tokens = duckdb.sql(f"SELECT sum(num_tokens), sum(len(tokens)) FROM '{out}/**/*.parquet'").fetchall()[0]
    assert tokens == (3 * 7 + 3 * 3, 3 * 7 + 3 * 3)
    keys = duckdb.sql(f"SELECT key FROM read_json_auto('{out}/__dead_letters/*.jsonl') ORDER BY key").fetchall()
    assert keys == [("x",), ("y",)]
    visible = [f for f in all_files(out) if not f.startswith("__")]
    assert visible and all(f.startswith("documents/") and f.endswith(".parquet") for f in visible)
    filtered_back = duckdb.sql(f"SELECT key, reason FROM read_json_auto('{out}/__filtered/*.jsonl')").fetchall()
    assert filtered_back == [("z", "no audio")]
    manifest = json.load(open(manifest_path(str(out), sources[1])))
    assert manifest["filtered_by_reason"] == {"no audio": 1} and manifest["records"] == 5
    assert manifest["filtered_file"] in manifest["files"] and manifest["filtered_file"].startswith("__filtered/")
    assert manifest["tokens"] == 9 and manifest["rows_by_modality"] == {"audio": 3}
    assert manifest["tokens_by_modality"] == {"audio": 9} and manifest["parts_by_kind"] == {"audio": 3}
    transcribed = json.load(open(manifest_path(str(out), sources[0])))
    assert transcribed["tokens"] == 21 and transcribed["source_bytes"] == 210
    assert transcribed["tokens_by_modality"] == {"audio": 9, "text": 12}
    assert transcribed["parts_by_kind"] == {"audio": 3, "text": 3}
    assert transcribed["documents_by_template"] == {"audio-with-transcript": 3}


def test_accounting_mismatch_raises(tmp_path):
    with pytest.raises(AccountingError, match="read 5 records"):
        write(tmp_path, "s.tar", [row("a", "s.tar")], records=5)
    assert not os.path.exists(tmp_path / "__manifests")


def test_names_are_unambiguous_per_source(tmp_path):
    names = {output_name(s) for s in ["d/a.tar", "d/a-b.tar", "e/a.tar", "x[1].tar", "x(1).tar", "_h.tar"]}
    assert len(names) == 6
    assert all(n[0].isalnum() for n in names)  # '_' or '.' first would hide the product from readers


def test_rewriting_one_shard_never_touches_another_or_user_files(tmp_path):
    a, ab = str(tmp_path / "a.tar"), str(tmp_path / "a-b.tar")
    write(tmp_path, a, [row(f"k{i}", a) for i in range(4)])
    write(tmp_path, ab, [row(f"k{i}", ab) for i in range(4)])
    mine = tmp_path / "documents" / f"{output_name(a)}-00099.parquet"
    mine.write_bytes(b"a user's own file")
    before = all_files(tmp_path)
    write(tmp_path, a, [row("k0", a)], [dead("k1", a)])  # fewer parts: the old second part goes
    after = all_files(tmp_path)
    gone = sorted(set(before) - set(after))
    assert gone == [f"documents/{output_name(a)}-00001.parquet"]
    assert mine.read_bytes() == b"a user's own file"
    assert ds.dataset(str(tmp_path / "documents"), exclude_invalid_files=True).to_table().num_rows == 5


def test_crashed_rewrite_is_cleaned_up_by_the_next_one(tmp_path, monkeypatch):
    source = str(tmp_path / "x[1].tar")  # glob metacharacters in the name
    write(tmp_path, source, [row(f"k{i}", source) for i in range(6)])
    import transforms.io.sink as sink

    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 3:  # pending list, part 0, then the disk is full
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{'0' * 32}")
            open(tmp, "wb").write(data[:10])
            raise OSError(28, "No space left on device")
        write_atomic(path, data)

    monkeypatch.setattr(sink, "write_atomic", failing_write)
    with pytest.raises(OSError):
        write(tmp_path, source, [row(f"k{i}", source) for i in range(2)])
    monkeypatch.undo()
    assert finished_sources(str(tmp_path), [source]) == set()  # manifest dropped before rewriting
    write(tmp_path, source, [row(f"k{i}", source) for i in range(2)])
    files = all_files(tmp_path)
    assert not [f for f in files if ".tmp-" in f or f.endswith(".pending")]
    assert ds.dataset(str(tmp_path / "documents")).to_table().num_rows == 2
    assert finished_sources(str(tmp_path), [source]) == {source}


def test_tampered_manifest_cannot_delete_other_files(tmp_path):
    source = str(tmp_path / "s.tar")
    write(tmp_path, source, [row("a", source)])
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    path = manifest_path(str(tmp_path), source)
    manifest = json.load(open(path))
    manifest["files"] += ["../keep.txt", "keep.txt", "documents/other-00000.parquet"]
    open(path, "w").write(json.dumps(manifest))
    write(tmp_path, source, [row("b", source)])
    assert victim.read_text() == "precious"


def test_damaged_manifest_means_not_done(tmp_path, caplog):
    source = str(tmp_path / "s.tar")
    write(tmp_path, source, [row("a", source)])
    open(manifest_path(str(tmp_path), source), "w").write("{not json")
    with caplog.at_level(logging.WARNING):
        assert finished_sources(str(tmp_path), [source]) == set()
        assert read_manifests(str(tmp_path)) == []
    assert "not done" in caplog.text


def test_retry_keys_and_kept_rows_skip_every_retried_key(tmp_path):
    source = str(tmp_path / "s.tar")
    write(tmp_path, source, [row("a", source), row("dup", source), row("b", source, TRANSCRIBED)],
          [dead("dup", source)])
    keys = dead_letter_keys(str(tmp_path), [source])
    assert keys == {source: {"dup"}}
    kept = sorted(LoadKeptRows(str(tmp_path), DOCUMENTS_TABLE, keys).process(source), key=lambda r: r.key)
    assert [r.key for r in kept] == ["a", "b"]
    assert kept[0].tokens.tolist() == [0, 1, 2] and kept[0].tokens.dtype == np.int32
    assert kept[1].tokens.tolist() == list(range(7))
    assert kept[1].parts == ("audio:wav", "text:txt") and kept[1].part_tokens == (3, 4)
    assert kept[1] == row("b", source, TRANSCRIBED)._replace(tokens=kept[1].tokens)


def test_null_writer_writes_manifest_and_dead_letters_only(tmp_path):
    source = str(tmp_path / "s.tar")
    manifest = write(tmp_path, source, [row("a", source)], [dead("b", source)], writers=[NullWriter()])
    assert manifest["files"] == [manifest["dead_letter_file"]]
    assert all(f.startswith("__") for f in all_files(tmp_path))


def test_output_that_cannot_be_written_is_refused_early(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritable, match="not a folder"):
        check_output_writable(str(tmp_path / "file" / "out"))
    check_output_writable(str(tmp_path / "new" / "out"))
    assert not os.path.exists(tmp_path / "new")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        # As root, permissions do not stop writes; sysfs refuses them even then.
        target = "/sys/mediabeam-out" if os.access(locked, os.W_OK) else str(locked / "out")
        with pytest.raises(OutputNotWritable, match="not writable"):
            check_output_writable(target)
    finally:
        os.chmod(locked, 0o700)
