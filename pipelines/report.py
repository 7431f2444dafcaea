"""The run report written next to a corpus: ``report.json`` stats and a self-contained
``report.html`` with plots, the page a person opens instead of reading logs.

Plots (inline SVG drawn here, so the page has no external file and writing it costs
milliseconds, not a plotting library's import):
tokens per sample per modality, bitrate of the source media (audio/video), throughput per
stage, and dead letters by stage and reason. The data are the corpus and dead-letter
Parquet files of the whole output (a resumed or retried output is reported whole), plus
this run's summary and Beam metrics.
"""

import html
import json
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.io.write_shards import write_atomic

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


_WIDTH, _HEIGHT = 560, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 150, 40, 34, 46
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


def _histogram_plot(distributions: Dict[str, Dict[str, Any]], xlabel: str, title: str) -> str:
    """One translucent filled histogram per modality on shared axes, with a legend."""
    hists = {m: d["histogram"] for m, d in distributions.items()}
    edges = [e for h in hists.values() for e in h["edges"]]
    low, high = (min(edges), max(edges)) if edges else (0.0, 1.0)
    high = high if high > low else low + 1.0
    top = max([max(h["counts"]) for h in hists.values() if h["counts"]] or [1])
    y_ticks = _ticks(top, 4)

    def x_of(v: float) -> float:
        return _LEFT + (v - low) / (high - low) * _PLOT_W

    def y_of(v: float) -> float:
        return _HEIGHT - _BOTTOM - v / y_ticks[-1] * _PLOT_H

    body = []
    for t in y_ticks:
        body.append(f'<line x1="{_LEFT}" y1="{y_of(t):.1f}" x2="{_WIDTH - _RIGHT}" y2="{y_of(t):.1f}" stroke="#e4e4e4"/>'
                    f'<text x="{_LEFT - 6}" y="{y_of(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    body.append(f'<text x="{_LEFT - 40}" y="{_TOP + _PLOT_H / 2}" text-anchor="middle" '
                f'transform="rotate(-90 {_LEFT - 40} {_TOP + _PLOT_H / 2})">samples</text>')
    step = _nice_step(high - low, 5)
    first = np.ceil(low / step) * step
    body += _x_axis([float(v) for v in np.arange(first, high + step * 1e-9, step)], x_of, lines=False)
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
    return _svg(title, xlabel, body)


def _bar_plot(values: Dict[str, float], xlabel: str, title: str, color: str) -> str:
    """Horizontal bars, one per key, labelled with the key and the value."""
    ticks = _ticks(max(list(values.values()) + [0.0]))

    def x_of(v: float) -> float:
        return _LEFT + v / ticks[-1] * _PLOT_W

    body = _x_axis(ticks, x_of, lines=True)
    slot = min(_PLOT_H / max(len(values), 1), 36.0)
    for i, (name, value) in enumerate(values.items()):
        y = _TOP + i * slot
        label = name if len(name) <= 24 else name[:23] + "…"
        body.append(f'<rect x="{_LEFT}" y="{y + slot * 0.15:.1f}" width="{x_of(value) - _LEFT:.1f}" '
                    f'height="{slot * 0.7:.1f}" fill="{color}"><title>{html.escape(name)}: {_fmt(value)}</title></rect>'
                    f'<text x="{_LEFT - 6}" y="{y + slot / 2 + 4:.1f}" text-anchor="end">{html.escape(label)}</text>'
                    f'<text x="{x_of(value) + 4:.1f}" y="{y + slot / 2 + 4:.1f}">{_fmt(value)}</text>')
    return _svg(title, xlabel, body)


def _plots(stats: Dict[str, Any]) -> Dict[str, str]:
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
    figures = "".join(f'<figure id="plot-{name}">{svg}</figure>' for name, svg in plots.items())
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
