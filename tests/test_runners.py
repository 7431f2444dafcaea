"""The corpus job gives identical outputs on every runner path a user scales out with.

In-process FnApiRunner (the reference), ``multi_processing`` with 2 workers, and the
portable path: Beam's local job service + an external SDK worker pool in separate
processes, the same Job/Fn API protocol a Flink or Spark job server speaks. The package
ships through ``--setup_file``: the pool starts each worker through
``pipelines.worker_boot``, which fetches the staged sdist from the runner and installs it
into the worker's own ``site`` folder, and the test checks the worker imported the job
from there. Corpus rows, dead letters and tokens are compared as Parquet contents. The
services run on loopback ports chosen here and are always stopped.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from pipelines import build_corpus
from pipelines.tools.make_samples import write_hostile_shards, write_sample_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE_START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    samples = write_sample_shards(str(directory / "s"), num_shards=2, samples_per_shard=4, seed=5)
    hostile = write_hostile_shards(str(directory / "h"))
    return sorted(samples["shards"]) + sorted(hostile["shards"])


def outputs(out: str):
    """Corpus rows and dead letters of an output, sorted, as plain Python values."""
    corpus = [r for f in sorted(glob.glob(f"{out}/documents/*.parquet")) for r in pq.read_table(f).to_pylist()]
    dead = [json.loads(line) for f in sorted(glob.glob(f"{out}/__dead_letters/*.jsonl")) for line in open(f)]
    return {name: sorted(rows, key=lambda r: (r["source"], r["key"], r.get("stage", "")))
            for name, rows in (("documents", corpus), ("dead_letters", dead))}


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "out")
    summary = build_corpus.run(["--input", *shards, "--output", out, "--no-report"])
    found = outputs(out)
    assert found["documents"] and found["dead_letters"]
    assert summary["records"] == len(found["documents"]) + len(found["dead_letters"])
    return found, summary


def _same_outputs(out: str, reference) -> None:
    found = outputs(out)
    expected, _ = reference
    assert [r["key"] for r in found["documents"]] == [r["key"] for r in expected["documents"]]
    assert found["documents"] == expected["documents"]  # tokens, parts, sizes, hashes
    assert found["dead_letters"] == expected["dead_letters"]


def test_multi_processing_two_workers_matches_in_process(shards, reference, tmp_path):
    out = str(tmp_path / "out")
    summary = build_corpus.run(
        ["--input", *shards, "--output", out, "--no-report",
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    _same_outputs(out, reference)
    assert summary["tokens"] == reference[1]["tokens"]
    assert summary["stage_throughput"]["Read"]["elements"] == reference[1]["stage_throughput"]["Read"]["elements"]


def test_multi_processing_workers_load_the_plugin_and_skip_torch():
    """``create_pipeline`` hands the job's options to ``multi_processing`` workers, so each
    imports ``pipelines.worker_plugin`` at start-up and RunInference comes without torch."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.common import create_pipeline

    def _worker_imports(_) -> dict:  # nested: pickled by value, the worker cannot import tests
        import transforms.corpus.documents  # noqa: F401  (RunInference, as unpickling the job imports it)

        return {"torch": "torch" in sys.modules, "plugin": "pipelines.worker_plugin" in sys.modules}

    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=1"])
    pipeline = create_pipeline(options)
    found = pipeline | "One" >> beam.Create([0]) | "Imports" >> beam.Map(_worker_imports)
    assert_that(found, equal_to([{"torch": False, "plugin": True}]))
    pipeline.run().wait_until_finish()


def test_worker_plugin_defers_torch_until_model_manager_is_used():
    code = (
        "import sys, pipelines.worker_plugin, transforms.corpus.documents\n"
        "from apache_beam.ml.inference.base import RunInference\n"
        "assert 'torch' not in sys.modules, 'RunInference imported torch'\n"
        "import apache_beam.ml.inference.base as base\n"
        "assert base._get_current_process_memory_in_bytes() > 0\n"
        "from apache_beam.ml.inference.model_manager import ModelManager\n"
        "assert 'torch' in sys.modules and ModelManager is not None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + SERVICE_START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited early with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {SERVICE_START_TIMEOUT_S}s")


@pytest.fixture
def portable_services(tmp_path):
    """Starts Beam's job service and an external worker pool that boots workers through
    ``pipelines.worker_boot``; yields their ports and the boot folder."""
    boot_dir = tmp_path / "boot"
    boot = tmp_path / "boot.sh"
    boot.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pipelines.worker_boot "$@"\n')
    boot.chmod(0o755)
    env = dict(os.environ, MEDIABEAM_BOOT_DIR=str(boot_dir), PYTHONPATH=REPO)
    job_port, pool_port = _free_port(), _free_port()
    commands = [
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port),
         "--container_executable", str(boot)],
    ]
    procs = []
    try:
        for command, port in zip(commands, (job_port, pool_port)):
            log = open(tmp_path / f"service-{port}.log", "wb")
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=str(tmp_path)))
            _wait_for_port(port, procs[-1])
        yield job_port, pool_port, boot_dir
    finally:
        for proc in procs:  # each service leads its own process group, SDK workers included
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_portable_runner_with_external_workers_matches_in_process(shards, reference, portable_services, tmp_path):
    job_port, pool_port, boot_dir = portable_services
    out = str(tmp_path / "out")
    cwd = os.getcwd()
    os.chdir(REPO)  # --setup_file ./setup.py is relative to the repository, as in the README
    try:
        summary = build_corpus.run(
            ["--input", *shards, "--output", out, "--no-report",
             "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
             "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
             "--setup_file=./setup.py"]
        )
    finally:
        os.chdir(cwd)
    _same_outputs(out, reference)
    assert summary["records"] == reference[1]["records"]
    assert summary["stage_throughput"]["Read"]["elements"] == reference[1]["stage_throughput"]["Read"]["elements"]
    logs = [open(p).read() for p in glob.glob(str(boot_dir / "*" / "boot.log"))]
    assert logs, "no SDK worker was started through the boot"
    for log in logs:  # the worker ran the sdist staged from setup.py, not the checkout
        assert "workflow.tar.gz" in log
        assert f"imports the job from {boot_dir}" in log
