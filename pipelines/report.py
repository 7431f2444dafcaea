"""The run report written next to a corpus: ``report.json`` stats and a self-contained
``report.html`` with plots, the page a person opens instead of reading logs.

Plots (matplotlib, Agg backend, embedded as base64 PNG so the page has no external file):
tokens per sample per modality, bitrate of the source media (audio/video), throughput per
stage, and dead letters by stage and reason. The data are the corpus and dead-letter
Parquet files of the whole output (a resumed or retried output is reported whole), plus
this run's summary and Beam metrics.
"""

import base64
import html
import io
import json
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.write_shards import write_atomic

_CORPUS_COLUMNS = ["modality", "num_tokens", "duration_s", "source_bytes"]
_DEAD_COLUMNS = ["stage", "error_type", "message"]


def _read_tables(pattern: str, columns: List[str]) -> Optional[pa.Table]:
    tables = []
    for result in FileSystems.match([pattern]):
        for meta in sorted(result.metadata_list, key=lambda m: m.path):
            with FileSystems.open(meta.path) as f:
                tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else None


def _distribution(values: np.ndarray, bins: int = 30) -> Dict[str, Any]:
    """Percentiles and a histogram (so the JSON stays small on any corpus size)."""
    p = np.percentile(values, [0, 50, 90, 99, 100])
    counts, edges = np.histogram(values, bins=bins)
    return {
        "count": int(values.size), "mean": round(float(values.mean()), 3),
        **{k: round(float(v), 3) for k, v in zip(("min", "p50", "p90", "p99", "max"), p)},
        "histogram": {"counts": counts.tolist(), "edges": np.round(edges, 3).tolist()},
    }


def report_stats(output_dir: str, summary: Dict[str, Any], throughput: Dict[str, Any],
                 metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Everything the report shows, as JSON-ready data (this is ``report.json``)."""
    corpus = _read_tables(FileSystems.join(output_dir, "corpus", "*.parquet"), _CORPUS_COLUMNS)
    dead = _read_tables(FileSystems.join(output_dir, "dead_letters", "*.parquet"), _DEAD_COLUMNS)
    tokens: Dict[str, Any] = {}
    bitrate: Dict[str, Any] = {}
    if corpus is not None:
        data = corpus.to_pydict()
        modality = np.array(data["modality"])
        num_tokens = np.array(data["num_tokens"], dtype=np.float64)
        duration = np.array([d if d else np.nan for d in data["duration_s"]], dtype=np.float64)
        size = np.array(data["source_bytes"], dtype=np.float64)
        for m in sorted(set(modality.tolist())):
            pick = modality == m
            tokens[m] = _distribution(num_tokens[pick])
            timed = pick & np.isfinite(duration) & (duration > 0)
            if timed.any():
                kbps = size[timed] * 8 / duration[timed] / 1000
                bitrate[m] = _distribution(kbps)
    reasons: Counter = Counter()
    messages: Counter = Counter()
    if dead is not None:
        for stage, error_type, message in zip(*(dead.column(c).to_pylist() for c in _DEAD_COLUMNS)):
            reasons[f"{stage}: {error_type}"] += 1
            messages[(stage, error_type, message[:200])] += 1
    return {
        "output": output_dir,
        "run": summary,
        "corpus_rows": 0 if corpus is None else corpus.num_rows,
        "dead_letter_rows": 0 if dead is None else dead.num_rows,
        "tokens_per_sample": tokens,
        "source_bitrate_kbps": bitrate,
        "stage_throughput": throughput,
        "dead_letters_by_reason": dict(reasons.most_common()),
        "top_dead_letter_messages": [
            {"stage": s, "error_type": e, "message": m, "count": n} for (s, e, m), n in messages.most_common(20)
        ],
        "metrics": metrics,
    }


def _png(fig) -> str:
    """The figure as a base64 PNG (for an inline ``<img>``); closes the figure."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _stairs(ax, label: str, distribution: Dict[str, Any]) -> None:
    histogram = distribution["histogram"]
    ax.stairs(histogram["counts"], histogram["edges"], fill=True, alpha=0.6,
              label=f"{label} (n={distribution['count']})")


def _histogram_plot(distributions: Dict[str, Dict[str, Any]], xlabel: str, title: str) -> str:
    """One filled histogram per modality on shared axes."""
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for modality, distribution in distributions.items():
        _stairs(ax, modality, distribution)
    ax.set(xlabel=xlabel, ylabel="samples", title=title)
    if distributions:
        ax.legend()
    return _png(fig)


def _bar_plot(values: Dict[str, float], xlabel: str, title: str, color: str) -> str:
    """Horizontal bars, one per key."""
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(list(values), list(values.values()), color=color)
    ax.set(xlabel=xlabel, title=title)
    return _png(fig)


def _plots(stats: Dict[str, Any]) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    throughput = {stage: s["per_s"] for stage, s in stats["stage_throughput"].items()}
    return {
        "tokens": _histogram_plot(stats["tokens_per_sample"], "tokens per sample", "Tokens per sample"),
        "bitrate": _histogram_plot(stats["source_bitrate_kbps"], "source bitrate (kb/s)",
                                   "Bitrate of audio/video members"),
        "throughput": _bar_plot(throughput, "elements per second", "Throughput per stage", "#4878a8"),
        "dead_letters": _bar_plot(stats["dead_letters_by_reason"], "dead letters",
                                  "Dead letters by stage and reason", "#c44e52"),
    }


def _table(rows: List[List[Any]], header: List[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(stats: Dict[str, Any]) -> str:
    """The report page: summary table, four plots, stage throughput, top dead-letter messages."""
    run = stats["run"]
    summary_rows = [
        [k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in run.items() if k != "stage_throughput"
    ]
    throughput_rows = [
        [stage, t["elements"], t["per_s"], t.get("busy_s", t.get("last_s"))]
        for stage, t in stats["stage_throughput"].items()
    ]
    plots = _plots(stats)
    figures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>' for name, data in plots.items()
    )
    top = [[d["count"], d["stage"], d["error_type"], d["message"]] for d in stats["top_dead_letter_messages"]]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>mediabeam run report</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}"
        "figure{display:inline-block;margin:0.5em}</style></head><body>"
        f"<h1>mediabeam run report</h1><p>Output: <code>{html.escape(stats['output'])}</code> — "
        f"{stats['corpus_rows']} corpus rows, {stats['dead_letter_rows']} dead letters.</p>"
        f"<h2>This run</h2>{_table(summary_rows, ['field', 'value'])}"
        f"<h2>Plots</h2>{figures}"
        f"<h2>Throughput per stage</h2>"
        f"{_table(throughput_rows, ['stage', 'elements', 'per second', 'seconds (until last / busy)'])}"
        f"<h2>Top dead-letter messages</h2>{_table(top, ['count', 'stage', 'error type', 'message'])}"
        "</body></html>"
    )


def write_report(output_dir: str, summary: Dict[str, Any], throughput: Dict[str, Any],
                 metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Writes ``report.json`` and ``report.html`` into ``output_dir`` (atomically); returns
    the stats."""
    stats = report_stats(output_dir, summary, throughput, metrics)
    write_atomic(FileSystems.join(output_dir, "report.json"), json.dumps(stats, indent=1).encode())
    write_atomic(FileSystems.join(output_dir, "report.html"), render_html(stats).encode())
    return stats
