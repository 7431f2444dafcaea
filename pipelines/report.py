"""The run report written next to a job's output: ``report.json`` stats and a self-contained
``report.html`` with plots, the page a person opens instead of reading logs.

Plots (inline SVG drawn here, so the page has no external file and writing it costs
milliseconds, not a plotting library's import): for token tables, tokens per sample per
modality (log axis: one long clip must not hide every image) and the bitrate of the source
media; for every job, throughput per stage (samples per second; stages that count shards are
in the table only) and dead letters by stage and reason. The data are the product Parquet
parts and dead letters of the whole output (a resumed or retried output is reported whole),
plus this run's summary and Beam metrics. Both files go under ``<output>/__job/``.
"""

import html
import json
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines import job_output
from transforms.io.layout import join
from transforms.io.sink import read_manifests

_TOKEN_COLUMNS = ["modality", "num_tokens", "duration_s", "source_bytes"]
SHARD_STAGES = ("ShardsRead", "Write")
"""``CountStage`` stages that count shards, not samples."""


def _read_product(output_dir: str, manifests: List[Dict[str, Any]]) -> Optional[pa.Table]:
    """The product Parquet parts of ``manifests``; token columns only when the table has them."""
    tables = []
    for manifest in manifests:
        for rel in sorted(f for f in manifest.get("files", []) if f.endswith(".parquet")):
            with FileSystems.open(join(output_dir, rel)) as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                columns = [c for c in _TOKEN_COLUMNS if c in names] if "num_tokens" in names else []
                tables.append(pq.read_table(f, columns=columns) if columns else pa.table({"_": pa.nulls(parquet.metadata.num_rows)}))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _distribution(values: np.ndarray, bins: int = 30, log: bool = False) -> Dict[str, Any]:
    """Percentiles and a histogram (so the JSON stays small on any corpus size); ``log`` bins
    evenly on a log scale (values below 1 go to the first bin)."""
    p = np.percentile(values, [0, 50, 90, 99, 100])
    if log:
        low, high = max(float(values.min()), 1.0), max(float(values.max()), 2.0)
        edges = np.geomspace(low, high if high > low else low * 2, bins + 1)
        counts, edges = np.histogram(np.clip(values, low, None), bins=edges)
    else:
        counts, edges = np.histogram(values, bins=bins)
    return {
        "count": int(values.size), "mean": round(float(values.mean()), 3),
        **{k: round(float(v), 3) for k, v in zip(("min", "p50", "p90", "p99", "max"), p)},
        "histogram": {"counts": counts.tolist(), "edges": np.round(edges, 3).tolist(), "log": log},
    }


def report_stats(output_dir: str, summary: Dict[str, Any], throughput: Dict[str, Any],
                 metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Everything the report shows, as JSON-ready data (this is ``report.json``)."""
    manifests = read_manifests(output_dir)
    product = _read_product(output_dir, manifests)
    dead = job_output.read_dead_letters(manifests, output_dir)
    tokens: Dict[str, Any] = {}
    bitrate: Dict[str, Any] = {}
    if product is not None and "num_tokens" in product.column_names:
        data = product.to_pydict()
        modality = np.array(data["modality"])
        num_tokens = np.array(data["num_tokens"], dtype=np.float64)
        duration = np.array([d if d else np.nan for d in data["duration_s"]], dtype=np.float64)
        size = np.array(data["source_bytes"], dtype=np.float64)
        for m in sorted(set(modality.tolist())):
            pick = modality == m
            tokens[m] = _distribution(num_tokens[pick], log=True)
            timed = pick & np.isfinite(duration) & (duration > 0)
            if timed.any():
                bitrate[m] = _distribution(size[timed] * 8 / duration[timed] / 1000)
    reasons: Counter = Counter()
    messages: Dict[tuple, List[str]] = {}
    for d in dead:
        reasons[f"{d['stage']}: {d['error_type']}"] += 1
        messages.setdefault((d["stage"], d["error_type"], d["message"][:200]), []).append(d["key"])
    top = sorted(messages.items(), key=lambda item: -len(item[1]))[:20]
    return {
        "output": output_dir,
        "job": summary.get("job", ""),
        "run": summary,
        "product_rows": 0 if product is None else product.num_rows,
        "corpus_rows": 0 if product is None else product.num_rows,
        "dead_letter_rows": len(dead),
        "tokens_per_sample": tokens,
        "source_bitrate_kbps": bitrate,
        "stage_throughput": throughput,
        "dead_letters_by_reason": dict(reasons.most_common()),
        "top_dead_letter_messages": [
            {"stage": s, "error_type": e, "message": m, "count": len(keys), "keys": sorted(keys)[:5]}
            for (s, e, m), keys in top
        ],
        "metrics": metrics,
    }


_WIDTH, _HEIGHT = 560, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 40, 34, 46
_PLOT_W, _PLOT_H = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
_PALETTE = ("#8172b3", "#937860", "#c44e52")
_MODALITY_COLORS = {"audio": "#4878a8", "image": "#dd8452", "video": "#55a868"}  # the same in every plot


def _nice_step(span: float, count: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving at most ``count`` intervals over ``span``."""
    raw = span / count
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _ticks(high: float, count: int = 5) -> List[float]:
    """Round tick values from 0 to at least ``high``."""
    if high <= 0:
        return [0.0, 1.0]
    step = _nice_step(high, count)
    return [float(v) for v in np.arange(0, high + step * 0.999, step)]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _svg(title: str, xlabel: str, body: List[str]) -> str:
    """An inline SVG figure: frame, title and x label around ``body`` (already placed)."""
    text = html.escape
    return (
        f'<svg width="{_WIDTH}" height="{_HEIGHT}" '
        f'font-family="sans-serif" font-size="11" role="img" aria-label="{text(title)}">'
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>'
        f'<text x="{_WIDTH / 2}" y="18" text-anchor="middle" font-size="14">{text(title)}</text>'
        f'<text x="{(_LEFT + _WIDTH - _RIGHT) / 2}" y="{_HEIGHT - 8}" text-anchor="middle">{text(xlabel)}</text>'
        + "".join(body) + "</svg>"
    )


def _x_axis(ticks: List[float], x_of, lines: bool) -> List[str]:
    """Tick labels (and light grid lines) along the bottom of the plot area."""
    y0 = _HEIGHT - _BOTTOM
    out = [f'<line x1="{_LEFT}" y1="{y0}" x2="{_WIDTH - _RIGHT}" y2="{y0}" stroke="#444"/>']
    for t in ticks:
        x = x_of(t)
        if lines:
            out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{y0}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 14}" text-anchor="middle">{_fmt(t)}</text>')
    return out


def _log_ticks(low: float, high: float) -> List[float]:
    """1-2-5 ticks per decade between ``low`` and ``high`` (only powers of ten over many decades)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    steps = (1,) if len(decades) > 4 else (1, 2, 5)
    return [float(m * 10.0 ** e) for e in decades for m in steps if low <= m * 10.0 ** e <= high] or [low, high]


def _histogram_plot(distributions: Dict[str, Dict[str, Any]], xlabel: str, title: str) -> str:
    """One translucent filled histogram per modality on shared axes, with a legend; a log
    x axis when the histograms were binned on one."""
    hists = {m: d["histogram"] for m, d in distributions.items()}
    edges = [e for h in hists.values() for e in h["edges"]]
    log = any(h.get("log") for h in hists.values())
    low, high = (min(edges), max(edges)) if edges else (1.0, 10.0)
    high = high if high > low else low + 1.0
    scale = np.log10 if log else (lambda v: v)
    top = max([max(h["counts"]) for h in hists.values() if h["counts"]] or [1])
    y_ticks = _ticks(top, 4)

    def x_of(v: float) -> float:
        return _LEFT + (scale(v) - scale(low)) / (scale(high) - scale(low)) * _PLOT_W

    def y_of(v: float) -> float:
        return _HEIGHT - _BOTTOM - v / y_ticks[-1] * _PLOT_H

    body = []
    for t in y_ticks:
        body.append(f'<line x1="{_LEFT}" y1="{y_of(t):.1f}" x2="{_WIDTH - _RIGHT}" y2="{y_of(t):.1f}" stroke="#e4e4e4"/>'
                    f'<text x="{_LEFT - 6}" y="{y_of(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    body.append(f'<text x="{_LEFT - 40}" y="{_TOP + _PLOT_H / 2}" text-anchor="middle" '
                f'transform="rotate(-90 {_LEFT - 40} {_TOP + _PLOT_H / 2})">samples</text>')
    if log:
        x_ticks = _log_ticks(low, high)
    else:
        step = _nice_step(high - low, 5)
        x_ticks = [float(v) for v in np.arange(np.ceil(low / step) * step, high + step * 1e-9, step)]
    body += _x_axis(x_ticks, x_of, lines=log)
    for i, (modality, hist) in enumerate(hists.items()):
        color = _MODALITY_COLORS.get(modality, _PALETTE[i % len(_PALETTE)])
        points = [f"{x_of(hist['edges'][0]):.1f},{y_of(0):.1f}"]
        for count, left, right in zip(hist["counts"], hist["edges"], hist["edges"][1:]):
            points += [f"{x_of(left):.1f},{y_of(count):.1f}", f"{x_of(right):.1f},{y_of(count):.1f}"]
        points.append(f"{x_of(hist['edges'][-1]):.1f},{y_of(0):.1f}")
        body.append(f'<polygon points="{" ".join(points)}" fill="{color}" fill-opacity="0.55" stroke="{color}"/>')
        y = _TOP + 14 + 16 * i
        body.append(f'<rect x="{_WIDTH - _RIGHT - 150}" y="{y - 9}" width="12" height="10" fill="{color}"/>'
                    f'<text x="{_WIDTH - _RIGHT - 134}" y="{y}">'
                    f'{html.escape(modality)} (n={distributions[modality]["count"]})</text>')
    return _svg(title, xlabel + (" (log scale)" if log else ""), body)


def _bar_plot(values: Dict[str, float], xlabel: str, title: str, color: str) -> str:
    """Horizontal bars, one per key; each key is written in full above its bar (so long
    reasons are never clipped) and the value at the bar's end."""
    ticks = _ticks(max(list(values.values()) + [0.0]))
    left = 12

    def x_of(v: float) -> float:
        return left + v / ticks[-1] * (_WIDTH - _RIGHT - left - 40)

    body = _x_axis(ticks, x_of, lines=True)
    slot = min(_PLOT_H / max(len(values), 1), 40.0)
    for i, (name, value) in enumerate(values.items()):
        y = _TOP + i * slot
        bar_h = max(slot - 16, 4.0)
        body.append(f'<text x="{left}" y="{y + 11:.1f}">{html.escape(name)}</text>'
                    f'<rect x="{left}" y="{y + 14:.1f}" width="{max(x_of(value) - left, 1):.1f}" '
                    f'height="{bar_h:.1f}" fill="{color}"><title>{html.escape(name)}: {_fmt(value)}</title></rect>'
                    f'<text x="{x_of(value) + 4:.1f}" y="{y + 14 + bar_h / 2 + 4:.1f}">{_fmt(value)}</text>')
    return _svg(title, xlabel, body)


_COUNT_PLOTS = (
    ("tokens_by_modality", "tokens", "Tokens by modality", "#4878a8"),
    ("documents_by_template", "documents", "Documents by template", "#55a868"),
    ("filtered_by_reason", "samples", "Filtered by reason (not errors)", "#937860"),
)
"""Summary counters drawn as bars when a job reports them: (field, x label, title, colour)."""


def per_sample_throughput(throughput: Dict[str, Any]) -> Dict[str, float]:
    """Stages that count samples (or inferences), with their rate; shard-counting stages left out."""
    return {stage: t["per_s"] for stage, t in throughput.items() if stage not in SHARD_STAGES}


def _plots(stats: Dict[str, Any]) -> Dict[str, str]:
    plots = {}
    if stats["tokens_per_sample"]:
        plots["tokens"] = _histogram_plot(stats["tokens_per_sample"], "tokens per sample", "Tokens per sample")
        plots["bitrate"] = _histogram_plot(stats["source_bitrate_kbps"], "source bitrate (kb/s)",
                                           "Bitrate of audio/video members")
    plots["throughput"] = _bar_plot(per_sample_throughput(stats["stage_throughput"]), "samples per second",
                                    "Throughput per stage (samples)", "#4878a8")
    plots["dead_letters"] = _bar_plot(stats["dead_letters_by_reason"], "dead letters",
                                      "Dead letters by stage and reason", "#c44e52")
    for field, xlabel, title, color in _COUNT_PLOTS:
        if stats["run"].get(field):
            plots[field] = _bar_plot(stats["run"][field], xlabel, title, color)
    return plots


def _cell(value: Any) -> str:
    """A table cell: dicts as ``name: value`` lines, lists comma-separated, never raw JSON."""
    if isinstance(value, dict):
        if not value:
            return "—"
        return "<br>".join(f"{html.escape(str(k))}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(str(v) for v in value)) if value else "—"
    return html.escape(str(value))


def _table(rows: List[List[Any]], header: List[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(stats: Dict[str, Any]) -> str:
    """The report page: summary table, plots, stage throughput, top dead-letter messages."""
    run = stats["run"]
    summary_rows = [[k, v] for k, v in run.items() if k != "stage_throughput"]
    throughput_rows = [
        [stage, "shards" if stage in SHARD_STAGES else "samples", t["elements"], t["per_s"],
         t.get("busy_s", t.get("last_s"))]
        for stage, t in stats["stage_throughput"].items()
    ]
    plots = _plots(stats)
    figures = "".join(f'<figure id="plot-{name}">{svg}</figure>' for name, svg in plots.items())
    top = [[d["count"], d["stage"], d["error_type"], d["message"], d["keys"]] for d in stats["top_dead_letter_messages"]]
    title = f"mediabeam {stats['job']} run report".replace("  ", " ")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}"
        "figure{display:inline-block;margin:0.5em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Output: <code>{html.escape(stats['output'])}</code> — "
        f"{stats['product_rows']} rows, {stats['dead_letter_rows']} dead letters.</p>"
        f"<h2>Summary</h2>{_table(summary_rows, ['field', 'value'])}"
        f"<h2>Plots</h2>{figures}"
        f"<h2>Throughput per stage</h2>"
        f"{_table(throughput_rows, ['stage', 'counts', 'elements', 'per second', 'seconds (until last / busy)'])}"
        f"<h2>Top dead-letter messages</h2>"
        f"{_table(top, ['count', 'stage', 'error type', 'message', 'keys (first 5)'])}"
        "</body></html>"
    )


def write_report(output_dir: str, summary: Dict[str, Any], throughput: Dict[str, Any],
                 metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Writes ``report.json`` and ``report.html`` under ``<output>/__job/`` (atomically);
    returns the stats."""
    stats = report_stats(output_dir, summary, throughput, metrics)
    job_output.write_meta(output_dir, "report.json", json.dumps(stats, indent=1).encode())
    job_output.write_meta(output_dir, "report.html", render_html(stats).encode())
    return stats
