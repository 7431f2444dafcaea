"""Hostile shards and inputs (issue 12, items 3-8): each refusal is a dead letter that names why,
the samples around it are kept, and the job's output stays exact on reruns and resumes."""

import glob
import io
import json
import logging
import os
import tarfile
import threading
import time

import apache_beam as beam
import numpy as np
import pyarrow.dataset as ds
import pytest

from pipelines import build_corpus
from pipelines.tools.make_samples import wav_bytes
from schemas.budgets import Budgets
from transforms.errors import DEAD_LETTER_TAG
from transforms.io.layout import manifest_path
from transforms.io.read_shards import ReadShardFn
from transforms.io.sources import InputError, expand_sources
from transforms.io.tar_stream import unescape_name

WAV = wav_bytes((np.sin(np.arange(1600) / 5) * 8000).astype(np.int16), 16000)


def tar_bytes(members, fmt=tarfile.GNU_FORMAT):
    """A tar of ``(name, data)`` or ``(TarInfo, data)`` members; names may hold raw bytes
    (surrogate-escaped)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write(path, data):
    path = str(path)
    with open(path, "wb") as f:
        f.write(data)
    return path


def set_header(data, index, size=None, kind=None):
    """Rewrites the size (base-256, may be huge) or type of the ``index``-th header block and
    fixes its checksum."""
    block = bytearray(data[index * 512 : index * 512 + 512])
    if size is not None:
        block[124:136] = (size % 256**12).to_bytes(12, "big") if size < 0 else b"\x80" + size.to_bytes(11, "big")
    if kind is not None:
        block[156:157] = kind
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[: index * 512] + bytes(block) + data[index * 512 + 512 :]


def read(source, **budgets):
    out = list(ReadShardFn(Budgets(**budgets)).process(str(source)))
    samples = {o.key: o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)}
    dead = {o.value.key: o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG}
    stats = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == "shard_stats"]
    assert stats[0].records == len(samples) + len(dead)
    return samples, dead


def run_job(out, *inputs, extra=()):
    # the same WAV stands in for many samples here: keep the exact duplicates (--no-dedup)
    return build_corpus.run(["--input", *map(str, inputs), "--output", str(out), "--modalities", "audio",
                             "--no-report", "--no-dedup", *extra])


def product_keys(out):
    return sorted(ds.dataset(os.path.join(str(out), "documents")).to_table(columns=["key"]).column("key").to_pylist())


def temp_files(out):
    return [f for _, _, files in os.walk(str(out)) for f in files if ".tmp-" in f or f.endswith(".pending")]


def test_size_of_2_pow_80_ends_promptly_as_damage(tmp_path):
    data = tar_bytes([("a.wav", WAV), ("b.wav", WAV), ("c.wav", WAV)])
    second_header = 1 + -(-len(WAV) // 512)
    shard = write(tmp_path / "huge.tar", set_header(data, second_header, size=2**80))
    start = time.perf_counter()
    samples, dead = read(shard)
    assert time.perf_counter() - start < 2
    assert list(samples) == ["a"] and list(dead) == ["b"]
    assert "past the end" in dead["b"].message and "truncated or corrupt" in dead["b"].message


def test_oversized_headers_are_refused_before_reading_them(tmp_path):
    pax = tarfile.TarInfo("p.wav")
    pax.pax_headers = {"comment": "x" * 5000}
    long_name = "l" * 3000 + ".wav"
    shard = write(tmp_path / "h.tar", tar_bytes([("a.wav", WAV), (pax, WAV), ("b.wav", WAV)], tarfile.PAX_FORMAT))
    samples, dead = read(shard, header_bytes=4096)
    assert sorted(samples) == ["a", "b"] and "budget header_bytes=4096 exceeded" in dead["p"].message
    shard = write(tmp_path / "l.tar", tar_bytes([("a.wav", WAV), (long_name, WAV), ("b.wav", WAV)]))
    samples, dead = read(shard, header_bytes=1024)
    assert sorted(samples) == ["a", "b"] and len(dead) == 1
    assert "header_bytes" in next(iter(dead.values())).message


def test_sparse_members_are_refused_not_expanded(tmp_path):
    sparse = tarfile.TarInfo("s.wav")
    sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s.wav",
                          "GNU.sparse.realsize": str(1 << 40)}
    shard = write(tmp_path / "p.tar", tar_bytes([("a.wav", WAV), (sparse, b"1\n0\n0\n"), ("b.wav", WAV)],
                                               tarfile.PAX_FORMAT))
    samples, dead = read(shard)
    assert sorted(samples) == ["a", "b"] and "sparse file" in dead["s"].message
    data = tar_bytes([("a.wav", WAV), ("g.wav", WAV), ("b.wav", WAV)])
    shard = write(tmp_path / "g.tar", set_header(data, 1 + -(-len(WAV) // 512), kind=b"S"))
    samples, dead = read(shard)
    assert sorted(samples) == ["a", "b"] and "sparse file" in dead["g"].message


def test_member_and_sample_budgets(tmp_path):
    many = [(f"m.{i}.wav", b"x") for i in range(5)]
    shard = write(tmp_path / "m.tar", tar_bytes([("a.wav", b"1" * 100), *many, ("b.wav", b"2")]))
    samples, dead = read(shard, sample_members=4, member_bytes=50)
    assert list(samples) == ["b"]
    assert "budget member_bytes=50 exceeded" in dead["a"].message
    assert "budget sample_members=4 exceeded" in dead["m"].message


def test_negative_and_garbage_sizes_are_damage(tmp_path):
    data = tar_bytes([("a.wav", WAV), ("b.wav", WAV)])
    second = 1 + -(-len(WAV) // 512)
    samples, dead = read(write(tmp_path / "neg.tar", set_header(data, second, size=-1)))
    assert list(samples) == ["a"] and "negative size" in dead["b"].message
    garbage = data[: second * 512] + b"\x01" * 512
    samples, dead = read(write(tmp_path / "junk.tar", garbage))
    assert list(samples) == ["a"] and list(dead) == [f"{tmp_path / 'junk.tar'}#damage@{second * 512}"]


def test_non_utf8_names_are_kept_losslessly(tmp_path):
    raw_name = b"caf\xe9-\\x"
    name = raw_name.decode("utf-8", "surrogateescape")
    shard = write(tmp_path / "n.tar", tar_bytes([(name + ".wav", WAV), ("ok.wav", WAV)]))
    out = tmp_path / "out"
    for flags in ((), ("--resume",), ()):
        summary = run_job(out, shard, extra=flags)
    assert summary["rows"] == 2
    keys = product_keys(out)
    escaped = next(k for k in keys if k != "ok")
    assert escaped == "caf\\xe9-\\\\x" and unescape_name(escaped) == raw_name


def test_similar_and_same_base_names_do_not_collide(tmp_path):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    a = write(tmp_path / "a.tar", tar_bytes([("a1.wav", WAV)]))
    ab = write(tmp_path / "a-b.tar", tar_bytes([("ab1.wav", WAV), ("ab2.wav", WAV)]))
    d1 = write(tmp_path / "d1" / "s.tar", tar_bytes([("x.wav", WAV)]))
    d2 = write(tmp_path / "d2" / "s.tar", tar_bytes([("y.wav", WAV)]))
    out = tmp_path / "out"
    run_job(out, a, ab, d1, d2)
    run_job(out, a)  # rewriting a.tar alone must leave a-b.tar's parts alone
    assert product_keys(out) == ["a1", "ab1", "ab2", "x", "y"]


def test_glob_characters_rerun_and_user_files(tmp_path):
    shard = write(tmp_path / "x[1].tar", tar_bytes([("a.wav", WAV), ("b.wav", WAV)]))
    out = tmp_path / "out"
    run_job(out, glob.escape(shard))  # a glob for the literal name; the job reads x[1].tar itself
    mine = tmp_path / "out" / "documents" / "x_1_-00000.parquet"
    mine.write_bytes(b"mine")
    run_job(out, glob.escape(shard))
    assert mine.read_bytes() == b"mine"
    mine.unlink()
    assert product_keys(out) == ["a", "b"] and temp_files(out) == []


def test_retry_with_a_duplicate_key_keeps_exact_accounting(tmp_path):
    shard = write(tmp_path / "dup.tar", tar_bytes([("dup.wav", WAV), ("other.wav", WAV), ("dup.wav", b"RIFFjunk")]))
    out = tmp_path / "out"
    first = run_job(out, shard)
    assert (first["rows"], first["dead_letters"]) == (2, 1)
    again = run_job(out, shard, extra=("--retry-dead-letters",))
    assert (again["rows"], again["dead_letters"], again["records"]) == (2, 1, 3)
    assert product_keys(out) == ["dup", "other"]


def test_damaged_manifest_is_redone_on_resume(tmp_path, caplog):
    shard = write(tmp_path / "s.tar", tar_bytes([("a.wav", WAV)]))
    out = tmp_path / "out"
    run_job(out, shard)
    with open(manifest_path(str(out), shard), "w") as f:
        f.write("\0garbage")
    with caplog.at_level(logging.WARNING):
        summary = run_job(out, shard, extra=("--resume",))
    assert summary["skipped_by_resume"] == 0 and summary["rows"] == 1
    assert json.load(open(manifest_path(str(out), shard)))["rows"] == 1


def test_folder_refusals_are_dead_letters(tmp_path):
    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / ".git" / "x.wav").write_bytes(WAV)
    (folder / "ok.wav").write_bytes(WAV)
    (folder / "README").write_text("no extension")
    (folder / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "secret.wav").write_bytes(WAV)
    os.symlink(tmp_path / "secret.wav", folder / "sub" / "escape.wav")
    os.mkfifo(folder / "pipe.wav")
    result = {}
    reader = threading.Thread(target=lambda: result.update(zip(("samples", "dead"), read(folder))), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a folder with a FIFO hung"
    assert list(result["samples"]) == ["ok"]
    dead = result["dead"]
    assert sorted(dead) == [".DS_Store", ".git", "README", "pipe", "sub/escape"]
    assert "symbolic link" in dead["sub/escape"].message and "not a regular file" in dead["pipe"].message
    assert "no extension" in dead["README"].message and "hidden" in dead[".git"].message


def test_folder_of_tars_is_read_as_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    a = write(folder / "a.tar", tar_bytes([("a.wav", WAV)]))
    b = write(folder / "b.tar.gz", tar_bytes([("b.wav", WAV)]))
    (folder / ".hidden").write_text("ignored")
    assert expand_sources([str(folder)]) == [a, b]
    (folder / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="mixes tar shards"):
        expand_sources([str(folder)])
    media = tmp_path / "media"
    media.mkdir()
    (media / "x.wav").write_bytes(WAV)
    assert expand_sources([str(media)]) == [str(media)]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="a folder with no files in it"):
        expand_sources([str(empty)])
