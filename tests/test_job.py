"""The Job base on a toy job: run, --resume, --retry-dead-letters, accounting, summary, threads."""

import glob
import json
import os
import subprocess
import sys
from typing import NamedTuple

import pyarrow as pa
import pytest

from pipelines.common import ConfigError
from pipelines.job import Job
from pipelines.tools.make_samples import write_sample_shards
from schemas.tables import TableSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SizeRow(NamedTuple):
    key: str
    source: str
    size: int


SIZE_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("size", pa.int64())])
SIZE_TABLE = TableSpec(
    name="sizes",
    schema=SIZE_SCHEMA,
    to_table=lambda rows: pa.Table.from_pylist([r._asdict() for r in rows], schema=SIZE_SCHEMA),
    from_table=lambda table: [SizeRow(**r) for r in table.to_pylist()],
    sort_key=lambda r: r.key,
)


def beam_tagged(tag, value):
    import apache_beam as beam

    return beam.pvalue.TaggedOutput(tag, value)


def size_or_fail(sample, fail_prefix, skip_suffix):
    """One row per sample with its payload size; keys starting with ``fail_prefix`` fail, keys
    ending with ``skip_suffix`` are filtered."""
    from schemas.common import Filtered
    from transforms.errors import dead_letter

    if fail_prefix and sample.key.startswith(fail_prefix):
        yield dead_letter(sample.key, sample.source, "Size", ValueError("told to fail"))
    elif skip_suffix and sample.key.endswith(skip_suffix):
        yield beam_tagged("filtered", Filtered(sample.key, sample.source, "told to skip"))
    else:
        yield SizeRow(sample.key, sample.source, sum(len(v) for v in sample.members.values()))


class SizeJob(Job):
    """size-job: one row per sample with its payload size (a toy job for the base's tests)."""

    name = "size-job"

    def add_arguments(self, parser):
        parser.add_argument("--fail-prefix", default="", help="keys that fail on purpose")
        parser.add_argument("--skip-suffix", default="", help="keys filtered on purpose")

    def validate(self, args):
        if args.fail_prefix.startswith("-"):
            raise ConfigError("--fail-prefix must not start with '-'")

    def table_spec(self, args):
        return SIZE_TABLE

    def build(self, pipeline, sources, args, retry):
        import apache_beam as beam

        read = self.read_media(pipeline, sources, args, retry)
        sized = read.samples | "Size" >> beam.FlatMap(size_or_fail, args.fail_prefix, args.skip_suffix).with_outputs(
            "dead_letters", "filtered", main="rows")
        dead = (read.dead_letters, sized.dead_letters) | "Dead" >> beam.Flatten()
        return {"rows": sized.rows, "dead_letters": dead, "stats": read.stats, "filtered": sized.filtered}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    made = write_sample_shards(str(tmp_path_factory.mktemp("s")), num_shards=3, samples_per_shard=4, seed=11)
    return made


def rows(out):
    import pyarrow.parquet as pq

    return sorted((r["source"], r["key"], r["size"]) for f in glob.glob(f"{out}/sizes/*.parquet")
                  for r in pq.read_table(f).to_pylist())


def manifests(out):
    return {m["source"]: m for m in (json.load(open(p)) for p in glob.glob(f"{out}/__manifests/*.json"))}


def check_accounting(out, shards):
    found = manifests(out)
    assert sorted(found) == sorted(shards)
    for source, m in found.items():
        assert m["records"] == shards[source] == m["rows"] + m["dead_letters"] + m["filtered"], source


def test_run_resume_and_retry_lose_nothing(shards, tmp_path):
    sources = sorted(shards["shards"])
    clean = str(tmp_path / "clean")
    SizeJob().run(["--input", *sources, "--output", clean, "--no-report"])

    out = str(tmp_path / "out")
    first = SizeJob().run(["--input", *sources, "--output", out, "--fail-prefix", "s000001", "--no-report",
                           "--skip-suffix", "-0003"])
    failing = sum(1 for s in shards["kinds"] if s.startswith("s000001"))
    skipped = sorted(k for k in shards["kinds"] if k.endswith("-0003"))
    assert first["dead_letters"] == failing and first["deliberate_dead_letters"] == 0
    assert first["filtered_by_reason"] == {"told to skip": len(skipped)}
    check_accounting(out, shards["shards"])

    # a finished shard loses its manifest (e.g. killed while writing): --resume redoes only it
    os.remove(next(p for p in glob.glob(f"{out}/__manifests/*.json") if "shard-000002" in p))
    resumed = SizeJob().run(["--input", *sources, "--output", out, "--resume", "--fail-prefix", "s000001",
                             "--skip-suffix", "-0003", "--no-report"])
    assert resumed["this_run"]["shards_run"] == 1 and resumed["skipped_by_resume"] == 2
    assert resumed["stage_throughput"]["ShardsRead"]["elements"] == 1
    check_accounting(out, shards["shards"])

    # the retry re-reads only the failed samples, recovers them and merges them into their shard
    retried = SizeJob().run(["--input", *sources, "--output", out, "--retry-dead-letters", "--no-report"])
    assert retried["retried_dead_letters"] == failing and retried["recovered_by_retry"] == failing
    assert retried["stage_throughput"]["Read"]["elements"] == failing  # only the failures were processed
    assert retried["dead_letters"] == 0
    check_accounting(out, shards["shards"])
    assert rows(out) == sorted(r for r in rows(clean) if not r[1].endswith("-0003"))
    # the filtered records of the retried shard are written again, with their reasons
    filtered = [json.loads(line) for f in glob.glob(f"{out}/__filtered/*.jsonl") for line in open(f)]
    assert sorted(r["key"] for r in filtered) == skipped and {r["reason"] for r in filtered} == {"told to skip"}

    # everything done: --resume runs nothing and keeps the whole summary (no zeros)
    again = SizeJob().run(["--input", *sources, "--output", out, "--resume"])
    assert again["this_run"]["shards_run"] == 0 and again["rows"] == len(rows(out)) > 0
    assert json.load(open(f"{out}/__job/summary.json"))["rows"] == again["rows"]
    assert os.path.exists(f"{out}/__job/report.html")


def test_output_is_a_clean_parquet_dataset(shards, tmp_path):
    """pyarrow, duckdb and Hugging Face ``datasets`` read the product rows only, never the dead letters."""
    import datasets
    import duckdb
    import pyarrow.dataset as ds

    out = str(tmp_path / "out")
    summary = SizeJob().run(["--input", *sorted(shards["shards"]), "--output", out, "--fail-prefix", "broken-"])
    assert summary["dead_letters"] == len(shards["broken"]) > 0
    assert ds.dataset(out).to_table().num_rows == summary["rows"]
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/**/*.parquet'").fetchall()[0][0] == summary["rows"]
    loaded = datasets.load_dataset(out, cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["train"] and loaded["train"].num_rows == summary["rows"]
    assert set(loaded["train"].column_names) == set(SIZE_SCHEMA.names)


def test_human_summary_is_short_and_names_the_demo_dead_letters(shards, tmp_path, capsys):
    out = str(tmp_path / "out")
    summary = SizeJob().run(["--input", *shards["shards"], "--output", out, "--fail-prefix", "broken-",
                             "--no-report"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert summary["deliberate_dead_letters"] == len(shards["broken"]) == 3
    assert len(printed) <= 6, printed
    assert any("deliberately broken" in line for line in printed)
    assert any(out in line and "summary.json" in line for line in printed)


def test_common_flags_fill_threads_and_budgets(shards, tmp_path):
    argv = ["--input", *shards["shards"], "--output", str(tmp_path / "o")]
    args, rest, sources = SizeJob().parse(argv + ["--budget", "member_bytes=1e6", "--direct_num_workers=2"])
    assert args.budgets.member_bytes == 1_000_000 and rest == ["--direct_num_workers=2"]
    assert args.threads == max(len(os.sched_getaffinity(0)) // 2, 1)
    assert sources == sorted(shards["shards"])
    assert SizeJob().parse(argv + ["--threads", "3"])[0].threads == 3
    with pytest.raises(ConfigError, match="must not start"):
        SizeJob().parse(argv + ["--fail-prefix=-x"])


def test_threads_reach_the_workers(shards, tmp_path):
    SizeJob().run(["--input", *shards["shards"], "--output", str(tmp_path / "o"), "--threads", "1", "--no-report"])
    assert os.environ["OMP_NUM_THREADS"] == "1"  # worker processes inherit it before importing torch


def test_validation_imports_neither_beam_nor_torch(shards, tmp_path):
    code = (
        "import sys\n"
        "from pipelines.build_corpus import BuildCorpus\n"
        f"BuildCorpus().parse(['--input', *{sorted(shards['shards'])!r}, '--output', {str(tmp_path)!r},"
        " '--tokenizer', 'jpeg,opus', '--tokenizer-option', 'jpeg.size=128'])\n"
        "heavy = [m for m in ('apache_beam', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_folder_of_shards_is_read_as_its_shards(shards, tmp_path):
    folder = os.path.dirname(sorted(shards["shards"])[0])
    _, _, sources = SizeJob().parse(["--input", folder, "--output", str(tmp_path / "o")])
    assert sources == sorted(shards["shards"])
