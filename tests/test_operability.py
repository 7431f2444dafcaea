"""Operability: dead-letter retry, progress lines, metrics per stage, the run report."""

import glob
import io
import json
import os
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import build_corpus
from pipelines.operability import ProgressMonitor, manifest_progress
from pipelines.tools.make_samples import write_sample_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return write_sample_shards(str(tmp_path_factory.mktemp("samples")), num_shards=2, samples_per_shard=6, seed=7)


@pytest.fixture(scope="module")
def full_run(samples, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full") / "out")
    summary = build_corpus.run(["--input", *samples["shards"], "--output", out])
    return out, summary


def table(pattern):
    rows = [r for f in sorted(glob.glob(pattern)) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: (r["source"], r["key"]))


def dead_letters(out):
    rows = [json.loads(line) for f in sorted(glob.glob(f"{out}/__dead_letters/*.jsonl")) for line in open(f)]
    return sorted(rows, key=lambda r: (r["source"], r["key"]))


def test_retry_dead_letters_recovers_them_and_keeps_the_accounting(samples, full_run, tmp_path):
    out = str(tmp_path / "out")
    shards = sorted(samples["shards"])
    first = build_corpus.run(["--input", *shards, "--output", out, "--budget", "member_bytes=12582", "--no-report"])
    too_big = [d for d in dead_letters(out) if "member_bytes" in d["message"]]
    assert too_big, "the small member limit should turn some samples into dead letters"
    assert first["dead_letters"] == len(too_big) + len(samples["broken"])

    retry = build_corpus.run(["--input", *shards, "--output", out, "--retry-dead-letters", "--no-report"])
    assert retry["retried_dead_letters"] == first["dead_letters"]
    assert retry["recovered_by_retry"] == len(too_big)
    assert retry["records"] == retry["rows"] + retry["dead_letters"] + retry["filtered"] == sum(samples["shards"].values())
    assert retry["filtered_by_reason"] == {"exact duplicate": len(samples["duplicates"])}
    full_out, _ = full_run
    assert table(f"{out}/documents/*.parquet") == table(f"{full_out}/documents/*.parquet")
    assert dead_letters(out) == dead_letters(full_out)
    for path in glob.glob(f"{out}/__manifests/*.json"):
        m = json.load(open(path))
        assert m["records"] == m["rows"] + m["dead_letters"] + m["filtered"]

    again = build_corpus.run(["--input", *shards, "--output", out, "--retry-dead-letters", "--no-report"])
    assert again["recovered_by_retry"] == 0 and again["retried_dead_letters"] == len(samples["broken"])


def test_retry_also_finishes_unfinished_shards(samples, full_run, tmp_path):
    out = str(tmp_path / "out")
    shards = sorted(samples["shards"])
    build_corpus.run(["--input", shards[0], "--output", out, "--no-report"])
    summary = build_corpus.run(["--input", *shards, "--output", out, "--retry-dead-letters", "--no-report"])
    assert summary["this_run"]["shards_run"] == 2 and summary["skipped_by_resume"] == 0
    assert table(f"{out}/documents/*.parquet") == table(f"{full_run[0]}/documents/*.parquet")


def test_progress_monitor_reports_done_total_rate_and_eta():
    state = {"done": (0, 0)}
    stream = io.StringIO()
    with ProgressMonitor(4, lambda: state["done"], interval_s=0.05, stream=stream) as monitor:
        assert "0/4 shards (0%)" in monitor.line() and "ETA unknown" in monitor.line()
        state["done"] = (2, 50)
        line = monitor.line()
    assert "2/4 shards (50%), 50 samples" in line and "samples/s" in line and "ETA 0:" in line
    assert stream.getvalue().strip().splitlines()[-1].startswith("progress: 2/4 shards")


def test_manifest_progress_counts_finished_shards(samples, full_run):
    out, summary = full_run
    done = manifest_progress(out, sorted(samples["shards"]), since_s=0)
    assert done() == (2, summary["records"])
    assert manifest_progress(out, sorted(samples["shards"]), since_s=4e9)() == (0, 0)
    assert not os.path.exists(f"{out}/__job/progress"), "live progress files are removed when the job ends"


def test_live_progress_files_count_shards_and_samples_read(samples, tmp_path):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    from transforms.progress import read_progress

    from pipelines.job import NO_RETRY

    job = build_corpus.BuildCorpus()
    args, _, sources = job.parse(
        ["--input", *samples["shards"], "--output", str(tmp_path / "o"), "--progress-interval", "0.2"]
    )
    progress_dir = str(tmp_path / "progress")
    job.progress_dir = progress_dir
    with TestPipeline(runner=FnApiRunner()) as p:
        _ = job.write(job.build(p, sources, args, NO_RETRY), args) | "CountWrite" >> job.count("Write")
    live = read_progress(progress_dir)
    assert live["ShardsRead"] == len(samples["shards"])
    assert live["Read"] == sum(samples["shards"].values())  # no reader dead letters in these shards
    assert live["Write"] == len(samples["shards"])


def test_metrics_count_every_stage_and_dead_letters_per_stage(full_run):
    out, summary = full_run
    report = json.load(open(f"{out}/__job/report.json"))
    counters = report["metrics"]["counters"]
    dead_by_stage = {k.split("/", 1)[1]: v for k, v in counters.items()
                     if k.startswith("DeadLetters/") and "." not in k}
    assert dead_by_stage == summary["dead_letters_by_stage"]
    assert counters["Progress/Read.elements"] + sum(
        v for k, v in dead_by_stage.items() if k == "ReadShards") == summary["records"]
    assert counters["Progress/Tokenize.elements"] == summary["rows"]
    assert counters["Progress/Write.elements"] == summary["shards"]
    assert counters["Progress/Read.bytes"] >= summary["source_bytes"]
    assert counters["Tokenize/tokens"] == summary["tokens"]
    assert {"Read", "Tokenize", "Write"} <= set(summary["stage_throughput"])


def test_report_json_matches_the_output(full_run):
    out, summary = full_run
    report = json.load(open(f"{out}/__job/report.json"))
    assert report["corpus_rows"] == summary["rows"] and report["dead_letter_rows"] == summary["dead_letters"]
    for modality, n in summary["rows_by_modality"].items():
        stats = report["tokens_per_sample"][modality]
        assert stats["count"] == n == sum(stats["histogram"]["counts"])
    corpus = table(f"{out}/documents/*.parquet")
    video = [r for r in corpus if r["modality"] == "video"]
    kbps = [r["source_bytes"] * 8 / r["duration_s"] / 1000 for r in video]
    assert report["source_bitrate_kbps"]["video"]["p50"] == pytest.approx(np.percentile(kbps, 50), rel=1e-3)
    assert sum(report["dead_letters_by_reason"].values()) == summary["dead_letters"]


def test_report_html_is_self_contained_with_its_plots(full_run):
    out, summary = full_run
    page = open(f"{out}/__job/report.html").read()
    report = json.load(open(f"{out}/__job/report.json"))
    figures = [chunk.split("</figure>", 1)[0] for chunk in page.split("<figure")[1:]]
    counted = {"tokens_by_modality", "documents_by_template", "filtered_by_reason"}
    assert len(figures) == 4 + sum(bool(summary.get(field)) for field in counted)
    plots = {}
    for figure in figures:
        svg = ElementTree.fromstring(figure[figure.index("<svg"):])  # well-formed inline SVG
        assert int(svg.get("width")) > 200 and int(svg.get("height")) > 100
        plots[figure.split('id="plot-', 1)[1].split('"', 1)[0]] = svg
    assert set(plots) == {"tokens", "bitrate", "throughput", "dead_letters"} | {f for f in counted if summary.get(f)}
    assert summary["filtered_by_reason"] and summary["documents_by_template"]  # the sample shards have both
    for field in counted & set(plots):
        bars = {b.find("title").text.rsplit(": ", 1)[0]: int(b.find("title").text.rsplit(": ", 1)[1].replace(",", ""))
                for b in plots[field].findall("rect") if b.find("title") is not None}
        assert bars == summary[field], field
    assert len(plots["tokens"].findall("polygon")) == len(summary["rows_by_modality"])  # one per modality
    bars = [r for r in plots["dead_letters"].findall("rect") if r.find("title") is not None]
    assert sorted(int(b.find("title").text.rsplit(": ", 1)[1]) for b in bars) == sorted(
        report["dead_letters_by_reason"].values())
    assert "http://" not in page and "https://" not in page


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="no chromium here (apt-get install -y chromium); benchmarks/check_report.py does the same check",
)
def test_report_renders_in_a_headless_browser(full_run, tmp_path):
    shot = str(tmp_path / "report.png")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "check_report.py"), f"{full_run[0]}/__job/report.html", shot],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 1000 and pixels.std() > 10  # a rendered page, not a blank one
