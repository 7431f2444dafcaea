"""Exact dedup across the corpus (deterministic kept copy, counted) and document filters."""

import glob
import io
import json
import os
import random

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from operators.corpus.dedup import DUPLICATE_REASON, Candidate, kept_index
from operators.corpus.filters import DocumentFilters
from pipelines import build_corpus
from pipelines.common import ConfigError
from pipelines.tools.make_samples import synthetic_image, wav_bytes, write_tar
from schemas.common import Filtered
from schemas.documents import DocumentRow
from transforms.corpus.dedup import DedupDocuments


def row(key, source, sha1, tokens=(1, 2)):
    return DocumentRow(key, source, "text-only", "text", np.array(tokens, np.int32), ("text:txt",), (len(tokens),),
                       None, None, None, 1, sha1)


def test_kept_copy_does_not_depend_on_arrival_order():
    candidates = [Candidate(False, "b.tar", "k", b"1"), Candidate(False, "a.tar", "z", b"2"),
                  Candidate(False, "a.tar", "k", b"3"), Candidate(False, "a.tar", "k", b"0")]
    kept = candidates[kept_index(candidates)]
    assert kept == Candidate(False, "a.tar", "k", b"0")
    for seed in range(5):
        shuffled = random.Random(seed).sample(candidates, len(candidates))
        assert shuffled[kept_index(shuffled)] == kept
    written = candidates + [Candidate(True, "z.tar", "w", b"")]
    assert written[kept_index(written)].written  # a copy already written stays the kept one


def test_dedup_transform_keeps_one_per_hash_and_filters_the_rest():
    rows = [row("a", "s1", "h1"), row("b", "s1", "h1"), row("c", "s2", "h1"), row("d", "s2", "h2"), row("e", "s2", "h3")]
    written = [row("old", "s0", "h3")]
    with TestPipeline(runner=FnApiRunner()) as p:
        out = {"rows": p | "Rows" >> beam.Create(rows), "written": p | "Written" >> beam.Create(written)} | DedupDocuments()
        assert_that(out["rows"] | "Keys" >> beam.Map(lambda r: r.key), equal_to(["a", "d"]), label="Kept")
        assert_that(out["filtered"], equal_to([Filtered("b", "s1", DUPLICATE_REASON), Filtered("c", "s2", DUPLICATE_REASON),
                                               Filtered("e", "s2", DUPLICATE_REASON)]), label="Duplicates")


def _jpeg(width, height, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("dups")
    same = synthetic_image(np.random.default_rng(3))
    other = synthetic_image(np.random.default_rng(4))
    a = write_tar(str(d / "a.tar"), [("a1.jpg", same), ("a1.txt", b"a cat"), ("a2.jpg", other), ("a2.txt", b"a dog")])
    b = write_tar(str(d / "b.tar"), [("b1.jpg", same), ("b1.txt", b"another caption"), ("b2.jpg", same)])
    assert a and b
    return [str(d / "a.tar"), str(d / "b.tar")]


def _keys(out):
    return sorted(r["key"] for f in glob.glob(f"{out}/documents/*.parquet") for r in pq.read_table(f).to_pylist())


def _manifests(out):
    return {os.path.basename(m["source"]): m for m in map(json.load, map(open, glob.glob(f"{out}/__manifests/*.json")))}


def test_duplicates_across_shards_are_dropped_once_and_counted(shards, tmp_path):
    out = str(tmp_path / "o")
    summary = build_corpus.run(["--input", *shards, "--output", out, "--no-report"])
    assert _keys(out) == ["a1", "a2"]
    assert summary["filtered_by_reason"] == {DUPLICATE_REASON: 2}
    manifests = _manifests(out)
    assert manifests["b.tar"]["filtered_by_reason"] == {DUPLICATE_REASON: 2} and manifests["a.tar"]["filtered"] == 0
    for m in manifests.values():
        assert m["records"] == m["rows"] + m["dead_letters"] + m["filtered"]
    kept = build_corpus.run(["--input", *shards, "--output", str(tmp_path / "all"), "--no-report", "--no-dedup"])
    assert kept["rows"] == 4 and _keys(str(tmp_path / "all")) == ["a1", "a2", "b1", "b2"]  # b2: no caption, still kept


def test_resume_filters_new_copies_of_documents_already_written(shards, tmp_path):
    out = str(tmp_path / "o")
    build_corpus.run(["--input", shards[1], "--output", out, "--no-report"])
    assert _keys(out) == ["b1"]
    summary = build_corpus.run(["--input", *shards, "--output", out, "--no-report", "--resume"])
    assert _keys(out) == ["a2", "b1"]  # a1 duplicates b1, which an earlier run wrote
    assert _manifests(out)["a.tar"]["filtered_by_reason"] == {DUPLICATE_REASON: 1}
    assert summary["records"] == summary["rows"] + summary["dead_letters"] + summary["filtered"] == 4


def test_filters_drop_with_their_reasons(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) * 0.5
    members = [("wide.jpg", _jpeg(400, 80, 1)), ("wide.txt", b"a wide strip"),
               ("tiny.jpg", _jpeg(40, 40, 2)), ("tiny.txt", b"a small square"),
               ("ok.jpg", _jpeg(120, 100, 3)), ("ok.txt", b"a fine picture"),
               ("short.jpg", _jpeg(120, 100, 4)), ("short.txt", b"hi"),
               ("quiet.wav", wav_bytes(np.zeros(8000), 16000)), ("quiet.txt", b"nothing at all"),
               ("brief.wav", wav_bytes(tone[:1600], 16000)), ("brief.txt", b"a brief beep"),
               ("tone.wav", wav_bytes(tone, 16000)), ("tone.txt", b"a clear tone")]
    shard = str(tmp_path / "f.tar")
    write_tar(shard, members)
    out = str(tmp_path / "o")
    summary = build_corpus.run(["--input", shard, "--output", out, "--no-report", "--min-side", "64", "--max-aspect", "3",
                                "--min-caption-chars", "5", "--silence-dbfs", "-60", "--min-duration", "0.2"])
    assert _keys(out) == ["ok", "tone"]
    assert summary["filtered_by_reason"] == {
        "aspect above 3": 1, "smaller than 64 px": 1, "caption shorter than 5 chars": 1,
        "silent audio (below -60 dBFS)": 1, "duration below 0.2 s": 1}
    assert summary["records"] == len(members) // 2 == summary["rows"] + summary["filtered"]


def test_filter_thresholds_are_checked_before_the_run(shards, tmp_path):
    assert DocumentFilters(min_side=10).reason(None, 4, 40, None, 0) == "smaller than 10 px"
    assert DocumentFilters().reason(0.1, 1, 1000, -200.0, 0) is None and not DocumentFilters().active()
    for flags, message in ((["--max-aspect", "0.5"], "at least 1"), (["--min-duration", "-1"], "must not be negative")):
        with pytest.raises(ConfigError, match=message):
            build_corpus.run(["--input", *shards, "--output", str(tmp_path / "o"), *flags])
