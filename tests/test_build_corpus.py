"""The corpus job end to end: accounting on hostile input, determinism, resume, bad flags."""

import glob
import io
import json
import os
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import build_corpus
from pipelines.common import ConfigError
from pipelines.job import NO_RETRY
from pipelines.tools.make_samples import write_hostile_shards, write_sample_shards


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    return write_hostile_shards(str(directory))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    directory = tmp_path_factory.mktemp("samples")
    return write_sample_shards(str(directory), num_shards=2, samples_per_shard=4, seed=3)


def read_table(pattern):
    files = sorted(glob.glob(pattern))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def read_dead_letters(out):
    return [json.loads(line) for f in sorted(glob.glob(f"{out}/__dead_letters/*.jsonl")) for line in open(f)]


def test_every_hostile_sample_is_a_row_or_a_dead_letter(hostile, tmp_path):
    out = str(tmp_path / "out")
    summary = build_corpus.run(["--input", *hostile["shards"], "--output", out, "--batch-size", "4"])
    rows = read_table(f"{out}/documents/*.parquet")
    dead = read_dead_letters(out)
    outcome = {r["key"]: "row" for r in rows}
    for d in dead:
        assert d["key"] not in outcome, f"{d['key']} is both a row and a dead letter"
        outcome[d["key"]] = "dead_letter"
        assert d["message"] and d["stage"] in ("ReadShards", "Tokenize")
    assert outcome == hostile["expected"]
    assert summary["records"] == sum(hostile["shards"].values())
    assert summary["records"] == summary["rows"] + summary["dead_letters"]
    messages = {d["key"]: d["message"] for d in dead}
    assert "escape" in messages["../../x"]
    assert "truncated" in messages["trunc-c"]
    assert_common_readers_see_only_the_product(out, summary["rows"])


def assert_common_readers_see_only_the_product(out, rows):
    """pyarrow.dataset(out), DuckDB's out/**/*.parquet and Hugging Face ``datasets.load_dataset(out)``
    read exactly the documents: the vocabulary, dead letters, manifests and exports stay out of sight."""
    import datasets
    import duckdb
    import pyarrow.dataset as ds

    assert ds.dataset(out).to_table().num_rows == rows
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/**/*.parquet'").fetchall()[0][0] == rows
    loaded = datasets.load_dataset(out, cache_dir=os.path.join(out, "..", "hf-cache"))
    assert list(loaded) == ["train"] and loaded["train"].num_rows == rows and "tokens" in loaded["train"].column_names


def test_graph_outputs_with_assert_that(samples, tmp_path):
    job = build_corpus.BuildCorpus()
    args, _, sources = job.parse(["--input", *samples["shards"], "--output", str(tmp_path / "o"), "--tokenizer", "jpeg"])
    images = sorted(k for k, kind in samples["kinds"].items() if kind == "image")
    with TestPipeline(runner=FnApiRunner()) as p:
        out = job.build(p, sources, args, NO_RETRY)
        keys = out["rows"] | "RowKeys" >> beam.Map(lambda r: r.key)
        assert_that(keys, equal_to(images), label="ImageRows")
        counts = job.write(out, args) | "Counts" >> beam.Map(
            lambda m: (m["rows"] + m["dead_letters"] + m["filtered"] == m["records"], m["filtered_by_reason"])
        )
        # with only a JPEG tokenizer, samples with video or audio members are filtered, with the reason
        reasons = {"video": "no video tokenizer in use", "audio-mp4": "no video tokenizer in use",
                   "garbage.mp4": "no video tokenizer in use", "audio": "no audio tokenizer in use",
                   "garbage.wav": "no audio tokenizer in use"}
        expected = []
        for shard in ("s000000", "s000001"):
            found = [reasons[kind] for key, kind in samples["kinds"].items() if shard in key and kind in reasons]
            expected.append((True, {r: found.count(r) for r in sorted(set(found))}))
        assert_that(counts, equal_to(expected), label="Accounting")


def test_tokens_are_identical_across_runs_and_formats(samples, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        build_corpus.run(
            ["--input", *samples["shards"], "--output", out, "--rows-per-shard", "2", "--format", "parquet,webdataset"]
        )
        outs.append(out)
    first = read_table(f"{outs[0]}/documents/*.parquet")
    second = read_table(f"{outs[1]}/documents/*.parquet")
    assert first == second and first
    assert all(len(pq.read_table(f)) <= 2 for f in glob.glob(f"{outs[0]}/documents/*.parquet"))
    assert open(f"{outs[0]}/__vocab.json", "rb").read() == open(f"{outs[1]}/__vocab.json", "rb").read()
    wds = sorted(glob.glob(f"{outs[0]}/__webdataset/documents/*.tar"))
    assert [open(f, "rb").read() for f in wds] == [
        open(f.replace(outs[0], outs[1]), "rb").read() for f in wds
    ]
    by_key = {r["key"]: r for r in first}
    with tarfile.open(wds[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".tokens.npy"))
        tokens = np.load(io.BytesIO(tar.extractfile(member).read()))
    row = by_key[member.name[: -len(".tokens.npy")]]
    assert tokens.reshape(-1).tolist() == row["tokens"]


def test_jpeg_documents_decode_back_to_images(samples, tmp_path):
    from operators.corpus.vocabulary import Vocabulary
    from operators.tokenizers.registry import build_tokenizer

    out = str(tmp_path / "o")
    build_corpus.run(["--input", *samples["shards"], "--output", out, "--tokenizer", "jpeg"])
    rows = read_table(f"{out}/documents/*.parquet")
    vocab = Vocabulary.from_json(json.load(open(f"{out}/__vocab.json")))
    (kind, tokens), = [p for p in vocab.split(np.array(rows[0]["tokens"])) if p[0] == "image"]
    image = build_tokenizer("jpeg").decode(tokens)
    assert image.size == (256, 256)


def test_resume_skips_finished_shards_and_redoes_unfinished(samples, tmp_path):
    out = str(tmp_path / "o")
    shards = sorted(samples["shards"])
    build_corpus.run(["--input", shards[0], "--output", out])
    summary = build_corpus.run(["--input", *shards, "--output", out, "--resume"])
    assert summary["skipped_by_resume"] == 1 and summary["this_run"]["shards_run"] == 1
    assert summary["shards"] == 2 and summary["records"] == sum(samples["shards"].values())
    manifests = sorted(glob.glob(f"{out}/__manifests/*.json"))
    assert len(manifests) == 2
    assert sorted(json.load(open(m))["records"] for m in manifests) == sorted(samples["shards"].values())


def test_resume_with_every_shard_done_keeps_the_whole_summary(samples, tmp_path):
    out = str(tmp_path / "o")
    first = build_corpus.run(["--input", *samples["shards"], "--output", out])
    again = build_corpus.run(["--input", *samples["shards"], "--output", out, "--resume"])
    assert again["this_run"]["shards_run"] == 0 and again["skipped_by_resume"] == 2
    for field in ("shards", "records", "rows", "dead_letters", "tokens", "rows_by_modality", "dead_letters_by_reason"):
        assert again[field] == first[field], field
    assert json.load(open(f"{out}/__job/summary.json"))["rows"] == first["rows"] > 0
    assert json.load(open(f"{out}/__job/report.json"))["product_rows"] == first["rows"]


def test_no_temporary_files_are_left(samples, tmp_path):
    out = str(tmp_path / "o")
    build_corpus.run(["--input", *samples["shards"], "--output", out])
    leftovers = [f for _, _, files in os.walk(out) for f in files if ".tmp-" in f]
    assert leftovers == []
    assert os.path.exists(f"{out}/__job/summary.json")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input", "/nonexistent/shard-{0..3}.tar"], "matches no file"),
        (["--modalities", "smell"], "unknown modality"),
        (["--tokenizer", "gzip"], "unknown tokenizer .*choose from"),
        (["--tokenizer", "jpeg,jpeg"], "keep one per modality"),
        (["--format", "csv"], "choose from"),
        (["--format", "webdataset", "--retry-dead-letters"], "keep parquet in --format"),
        (["--tokenizer-option", "jpeg"], "NAME.KEY=VALUE"),
        (["--tokenizer", "jpeg", "--tokenizer-option", "jpeg.colour=1"], "valid keys: .*quality.*size"),
        (["--tokenizer", "jpeg", "--tokenizer-option", "jpeg.size=abc"], "jpeg.size must be an integer"),
        (["--tokenizer", "jpeg", "--tokenizer-option", "jpeg.size=4"], "is invalid: need size >= 8"),
        (["--tokenizer", "jpeg", "--tokenizer-option", "opus.bitrate=1"], "not in use"),
        (["--budget", "member_bytes"], "NAME=VALUE"),
        (["--budget", "member_bites=1"], "unknown budget"),
        (["--threads", "0"], "at least 1"),
        (["--row-per-shard", "2"], "did you mean --rows-per-shard"),
        (["--tokenizer", "semantic-audio", "--tokenizer-option", "semantic-audio.encoder_path=/no/such.pt"],
         "cannot load the model"),
        (["--tokenizer", "dual-image", "--tokenizer-option", "dual-image.model_dir=/"], "cannot load the model"),
        (["--template", "caption-then-smell"], "not a file; use auto, one of"),
        (["--text-tokenizer", "/no/tokenizer.json"], "not a readable Hugging Face tokenizer.json"),
    ],
)
def test_bad_configuration_fails_before_the_pipeline(samples, tmp_path, flags, message):
    argv = ["--input", *samples["shards"], "--output", str(tmp_path / "o"), *flags]
    with pytest.raises(ConfigError, match=message):
        build_corpus.run(argv)
    assert not os.path.exists(tmp_path / "o")


def test_cli_reports_bad_flags_with_exit_status_2(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["build-corpus", "--input", str(tmp_path / "missing.tar"), "--output", str(tmp_path)]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["no-such-job"]) == 2
    assert main(["--help"]) == 0
    assert "build-corpus" in capsys.readouterr().out



def test_budgets_reach_the_tokenizers_that_take_them(samples, tmp_path):
    args, _, _ = build_corpus.BuildCorpus().parse(
        ["--input", *samples["shards"], "--output", str(tmp_path / "o"), "--budget", "media_seconds=5",
         "--tokenizer", "jpeg,opus"])
    assert dict(args.tokenizers) == {"jpeg": {}, "opus": {"media_seconds": 5.0}}
    assert args.budgets.media_seconds == 5.0
