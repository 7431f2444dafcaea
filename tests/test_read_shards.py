"""ReadMediaShards: grouping by key, streaming, and damage turned into dead letters."""

import io
import os
import tarfile

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.errors import DEAD_LETTER_TAG
from transforms.io.read_shards import ReadMediaShards, ReadShardFn, expand_braces, split_member_name


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_direct(source):
    return list(ReadShardFn().process(source))


def test_expand_braces_keeps_zero_padding_and_lists():
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert expand_braces("{a,b}/x-{1..2}") == ["a/x-1", "a/x-2", "b/x-1", "b/x-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_split_member_name_follows_webdataset():
    assert split_member_name("dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert split_member_name("abc.wav") == ("abc", "wav")
    assert split_member_name("noext") is None


def test_consecutive_members_form_samples(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("a.json", b"{}"), ("b.wav", b"2")])
    out = read_direct(shard)
    samples = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    stats = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == "shard_stats"]
    assert [(s.key, sorted(s.members)) for s in samples] == [("a", ["jpg", "json"]), ("b", ["wav"])]
    assert samples[0].members["jpg"] == b"1" and samples[0].source == shard
    assert stats[0].records == 2


def test_truncated_tar_keeps_samples_before_damage(tmp_path):
    members = [(f"k{i}.bin", os.urandom(3000)) for i in range(5)]
    full = write_tar(tmp_path / "full.tar", members)
    data = open(full, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 3 + 6000 + 512 + 100])  # inside the third member's data
    out = read_direct(str(cut))
    samples = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    dead = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG]
    assert [s.key for s in samples] == ["k0", "k1"]
    assert len(dead) == 1 and dead[0].stage == "ReadShards" and "truncated" in dead[0].message
    assert dead[0].key == "k2"


def test_escaping_and_duplicate_members_become_dead_letters(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [("../../x.jpg", b"1"), ("ok.jpg", b"2"), ("dup.jpg", b"3"), ("dup.jpg", b"4")],
    )
    out = read_direct(shard)
    dead = {o.value.key: o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG}
    samples = [o.key for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert samples == ["ok"]
    assert "escape" in dead["../../x"].message
    assert "two members" in dead["dup"].message


def test_garbage_file_is_one_dead_letter(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 50)
    out = read_direct(str(bad))
    dead = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG]
    assert len(dead) == 1 and dead[0].key.endswith("#damage")


def test_pipeline_reads_tars_and_folders(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("b.jpg", b"2")])
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "c.wav").write_bytes(b"3")
    (folder / "sub" / "c.txt").write_bytes(b"hi")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage")
    with TestPipeline(runner=FnApiRunner()) as p:
        read = p | ReadMediaShards([shard, str(folder), str(bad)])
        keys = read.samples | "Keys" >> beam.Map(lambda s: (s.key, sorted(s.members)))
        assert_that(keys, equal_to([("a", ["jpg"]), ("b", ["jpg"]), ("sub/c", ["txt", "wav"])]), label="Samples")
        stages = read[DEAD_LETTER_TAG] | "Stages" >> beam.Map(lambda d: (d.source, d.stage))
        assert_that(stages, equal_to([(str(bad), "ReadShards")]), label="Dead")
        counts = read.shard_stats | "Counts" >> beam.Map(tuple)
        assert_that(counts, equal_to([(shard, 2), (str(folder), 1), (str(bad), 1)]), label="Stats")


@pytest.mark.parametrize("pattern", ["missing-{0..1}.tar", "nope/*.tar"])
def test_expand_inputs_rejects_patterns_that_match_nothing(pattern, tmp_path, monkeypatch):
    from pipelines.common import ConfigError, expand_inputs

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="matches no file"):
        expand_inputs([pattern])


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_compressed_shards_are_read_and_budgeted(tmp_path, mode):
    from schemas.budgets import Budgets

    path = tmp_path / f"s.tar.{mode[2:]}"
    with tarfile.open(path, mode) as tar:
        for name, data in [("a.jpg", b"1"), ("big.jpg", b"x" * 5000), ("c.jpg", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = read_direct(str(path))
    assert sorted(o.key for o in out if not isinstance(o, beam.pvalue.TaggedOutput)) == ["a", "big", "c"]
    out = list(ReadShardFn(Budgets(member_bytes=1000)).process(str(path)))
    dead = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTER_TAG]
    assert [o.key for o in out if not isinstance(o, beam.pvalue.TaggedOutput)] == ["a"]
    assert [d.key for d in dead] == ["big"] and "budget member_bytes=1000 exceeded" in dead[0].message
