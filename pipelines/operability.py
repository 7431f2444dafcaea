"""Running a job where people can watch it: progress lines, metrics, per-stage throughput.

Launcher-side progress (shards and samples done of the total, rate, ETA) comes from
:class:`ProgressMonitor` with a ``done_fn`` that watches the output instead of asking the
runner, so it works on every runner whose output the launcher can list (local disk, GCS,
S3): :func:`manifest_progress` counts finished shards (``__manifests/<name>.json`` with a
``records`` count, see ``transforms.io.sink``), and :func:`output_progress` adds the
live counts that ``transforms.progress.CountStage`` steps write while shards are still
being processed (a batch writer only runs after a shuffle barrier). :func:`run_pipeline` runs a
pipeline under a monitor and returns its Beam metrics as plain dicts; :func:`stage_throughput`
turns the ``transforms.progress.CountStage`` metrics into elements per second per stage.
"""

import datetime
import json
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, TextIO, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.io.layout import MANIFEST_DIR, manifest_path
from transforms.progress import NAMESPACE as PROGRESS_NAMESPACE
from transforms.progress import read_progress

DoneFn = Callable[[], Tuple[int, int]]


def manifest_progress(output_dir: str, sources: Sequence[str], since_s: float) -> DoneFn:
    """Returns ``() -> (shards done, samples done)`` counting manifests of ``sources`` written
    after ``since_s`` (epoch seconds); each manifest is read once."""
    wanted = {manifest_path(output_dir, s) for s in sources}
    seen: Dict[str, int] = {}
    pattern = FileSystems.join(output_dir, MANIFEST_DIR, "*.json")

    def done() -> Tuple[int, int]:
        for result in FileSystems.match([pattern]):
            for meta in result.metadata_list:
                if meta.path in wanted and meta.path not in seen and meta.last_updated_in_seconds >= since_s:
                    with FileSystems.open(meta.path) as f:
                        seen[meta.path] = int(json.loads(f.read())["records"])
        return len(seen), sum(seen.values())

    return done


def output_progress(
    output_dir: str, sources: Sequence[str], since_s: float, progress_dir: str,
    unit_stage: str = "ShardsRead", sample_stage: str = "Read",
) -> DoneFn:
    """Like :func:`manifest_progress`, but also counts work not yet written: shards read and
    samples read so far from the live ``CountStage`` progress files in ``progress_dir``
    (the larger of the two figures wins)."""
    manifests = manifest_progress(output_dir, sources, since_s)

    def done() -> Tuple[int, int]:
        shards, samples = manifests()
        live = read_progress(progress_dir)
        return max(shards, min(live.get(unit_stage, 0), len(sources))), max(samples, live.get(sample_stage, 0))

    return done


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressMonitor:
    """Prints ``progress: 3/10 shards (30%), 240 samples, 12.5 samples/s, ETA 0:00:42`` every
    ``interval_s`` from a background thread while the ``with`` block runs, and once at the end.

    The ETA assumes the remaining shards take as long as the finished ones on average.

    Args:
        total: Number of units (shards) the job will finish.
        done_fn: Returns ``(units done, samples done)``; must be cheap.
        interval_s: Seconds between two lines.
        unit: Name of the unit in the line.
        sample_unit: Name of the second figure (samples, frames ...).
        stream: Where lines go (stderr by default, so stdout stays the job's summary).
    """

    def __init__(
        self, total: int, done_fn: DoneFn, interval_s: float = 10.0, unit: str = "shards",
        stream: Optional[TextIO] = None, sample_unit: str = "samples",
    ):
        self.total, self._done_fn, self._interval, self._unit = total, done_fn, interval_s, unit
        self._sample_unit = sample_unit
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = time.time()
        self.lines = 0

    def line(self) -> str:
        """The current progress line."""
        done, samples = self._done_fn()
        elapsed = max(time.time() - self._start, 1e-6)
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = _clock(elapsed / done * (self.total - done)) if done else "unknown"
        return (
            f"progress: {done}/{self.total} {self._unit} ({pct:.0f}%), {samples} {self._sample_unit}, "
            f"{samples / elapsed:.1f} {self._sample_unit}/s, elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def _emit(self) -> None:
        print(self.line(), file=self._stream, flush=True)
        self.lines += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()

    def __enter__(self) -> "ProgressMonitor":
        self._start = time.time()
        self._thread = threading.Thread(target=self._loop, name="ProgressMonitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._emit()


def query_metrics(result: beam.runners.runner.PipelineResult) -> Dict[str, Dict[str, Any]]:
    """All counters and distributions of a finished run, summed over steps, keyed
    ``namespace/name``. Empty dicts on runners that report no metrics."""
    counters: Dict[str, int] = {}
    distributions: Dict[str, Dict[str, float]] = {}
    try:
        found = result.metrics().query()
    except (NotImplementedError, AttributeError):
        return {"counters": counters, "distributions": distributions}
    for item in found.get("counters", []):
        name = f"{item.key.metric.namespace}/{item.key.metric.name}"
        value = item.committed if item.committed is not None else item.attempted
        counters[name] = counters.get(name, 0) + int(value or 0)
    for item in found.get("distributions", []):
        value = item.committed if item.committed is not None else item.attempted
        if value is None or not value.count:
            continue
        name = f"{item.key.metric.namespace}/{item.key.metric.name}"
        old = distributions.get(name)
        merged = {"count": value.count, "sum": value.sum, "min": value.min, "max": value.max}
        if old is not None:
            merged = {
                "count": old["count"] + value.count, "sum": old["sum"] + value.sum,
                "min": min(old["min"], value.min), "max": max(old["max"], value.max),
            }
        distributions[name] = merged
    return {"counters": dict(sorted(counters.items())), "distributions": dict(sorted(distributions.items()))}


def stage_throughput(metrics: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Throughput per stage: for each ``CountStage`` stage, elements over the time from the
    job's start to the stage's last element (``first_s``/``last_s`` say when the stage was
    active, all workers together; batching steps emit in bursts, so a window from first
    to last element would overstate them); for each RunInference model, inferences per
    second of its busy time (compute only)."""
    out: Dict[str, Dict[str, float]] = {}
    suffix = ".seen_at_ms"
    for name, dist in metrics.get("distributions", {}).items():
        namespace, metric = name.split("/", 1)
        if namespace == PROGRESS_NAMESPACE and metric.endswith(suffix):
            stage = metric[: -len(suffix)]
            last_s = max(dist["max"] / 1000.0, 1e-3)
            out[stage] = {
                "elements": dist["count"],
                "first_s": round(dist["min"] / 1000.0, 3),
                "last_s": round(last_s, 3),
                "per_s": round(dist["count"] / last_s, 2),
                "bytes": metrics["counters"].get(f"{PROGRESS_NAMESPACE}/{stage}.bytes", 0),
            }
        elif metric.endswith("inference_batch_latency_micro_secs"):
            prefix = metric[: -len("inference_batch_latency_micro_secs")]
            inferences = metrics["counters"].get(f"{namespace}/{prefix}num_inferences", 0)
            busy_s = max(dist["sum"] / 1e6, 1e-6)
            out[f"{namespace} (busy)"] = {
                "elements": inferences, "busy_s": round(busy_s, 3), "per_s": round(inferences / busy_s, 2),
            }
    return out


def run_pipeline(
    pipeline: beam.Pipeline, monitor: Optional[ProgressMonitor] = None
) -> Dict[str, Dict[str, Any]]:
    """Runs ``pipeline`` to completion (under ``monitor`` if given) and returns its metrics
    (see :func:`query_metrics`)."""
    if monitor is None:
        result = pipeline.run()
        result.wait_until_finish()
    else:
        with monitor:
            result = pipeline.run()
            result.wait_until_finish()
    return query_metrics(result)
