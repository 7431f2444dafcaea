"""The rate–quality part of an evaluate-tokenizers report: a Markdown table printed at the end of
the run, and a section added to ``__job/report.html`` with one plot per measure (every tokenizer
and setting on one chart), the table and the worst samples with their keys.

Plots are drawn with matplotlib (as ``pipelines/rate_quality.py`` does for compress-features) and
inlined as SVG, so the page stays one self-contained file.
"""

import html
import io
from typing import Any, Dict, List, Mapping, Sequence

from pipelines import job_output

MEASURE_LABELS = {
    "psnr_db": "PSNR (dB)", "ssim": "SSIM", "cnn_top1_agree": "TinyCNN top-1 agreement",
    "x3d_top1_agree": "X3D top-1 agreement",
    "pesq_wb": "PESQ wide band (MOS-LQO)", "stoi": "STOI",
    "mel_distance_db": "log-mel distance (dB)", "asr_wer": "ASR WER decoded vs original",
}
UNIT_MEASURES = ("ssim", "cnn_top1_agree", "x3d_top1_agree", "stoi")
"""Measures between 0 and 1, plotted on that whole range."""
TABLE_FIELDS = ("tokens_per_s", "bits_per_s", "psnr_db", "ssim", "cnn_top1_agree", "x3d_top1_agree", "pesq_wb",
                "stoi", "mel_distance_db", "asr_wer", "reference_wer")


def _rate(entry: Mapping[str, Any]) -> Any:
    """kbit/s for timed media, kbit per item for images."""
    value = entry["bits_per_s"] if entry["modality"] != "image" else entry["bits"]
    return None if value is None else value / 1000


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def rate_quality_lines(by_setting: Sequence[Mapping[str, Any]]) -> List[str]:
    """The rate–quality table as Markdown lines (rate: kbit per image, or kbit/s)."""
    header = ["tokenizer", "setting", "modality", "rows", "tokens/item", "kbit/item or kbit/s", *TABLE_FIELDS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in by_setting:
        cells = [e["tokenizer"], e["setting"], e["modality"], e["rows"], e["num_tokens"], _rate(e),
                 *(e.get(f) for f in TABLE_FIELDS)]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _plot(by_setting: Sequence[Mapping[str, Any]], modality: str, measure: str) -> str:
    """One chart: ``measure`` against rate, one line per tokenizer through its settings; SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for tokenizer in sorted({e["tokenizer"] for e in by_setting if e["modality"] == modality}):
        points = sorted((_rate(e), e[measure], e["setting"]) for e in by_setting
                        if e["tokenizer"] == tokenizer and e["modality"] == modality
                        and e.get(measure) is not None and _rate(e))
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=tokenizer)
        for x, y, setting in points:
            ax.annotate(setting, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    low, high = ax.get_xlim()
    if high / low < 10:  # within one decade the 2..9 ticks carry the only labels
        ax.xaxis.set_minor_formatter(plain)
    if measure in UNIT_MEASURES:
        ax.set_ylim(0, 1.05)
    ax.set(xlabel="kbit per image" if modality == "image" else "kbit/s", ylabel=MEASURE_LABELS[measure],
           title=f"{modality}: {MEASURE_LABELS[measure]} against rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def plots(by_setting: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """``"<modality>-<measure>"`` → SVG, for every measure some setting defines."""
    out = {}
    for modality in sorted({e["modality"] for e in by_setting}):
        for measure in MEASURE_LABELS:
            if any(e["modality"] == modality and e.get(measure) is not None and _rate(e) for e in by_setting):
                out[f"{modality}-{measure}"] = _plot(by_setting, modality, measure)
    return out


def quality_section(summary: Mapping[str, Any]) -> str:
    """The HTML section: plots, the table per setting and the worst samples per measure."""
    text = html.escape
    by_setting = summary["by_setting"]
    figures = "".join(f'<figure id="quality-{text(name)}">{svg}</figure>' for name, svg in plots(by_setting).items())
    header = ["tokenizer", "setting", "modality", "rows", "tokens/item", "kbit/item or kbit/s", *TABLE_FIELDS]
    rows = "".join("<tr>" + "".join(f"<td>{text(_fmt(c))}</td>" for c in [
        e["tokenizer"], e["setting"], e["modality"], e["rows"], e["num_tokens"], _rate(e),
        *(e.get(f) for f in TABLE_FIELDS)]) + "</tr>" for e in by_setting)
    table = "<table><tr>" + "".join(f"<th>{text(h)}</th>" for h in header) + f"</tr>{rows}</table>"
    worst = "".join(
        f"<h3>{text(MEASURE_LABELS.get(measure, measure))}</h3><table><tr><th>key</th><th>source</th>"
        "<th>tokenizer</th><th>setting</th><th>value</th></tr>"
        + "".join(f"<tr><td>{text(w['key'])}</td><td>{text(w['source'])}</td><td>{text(w['tokenizer'])}</td>"
                  f"<td>{text(w['setting'])}</td><td>{text(_fmt(w['value']))}</td></tr>" for w in items)
        + "</table>" for measure, items in summary["worst"].items())
    asr, x3d, cnn = summary.get("asr_model"), summary.get("x3d_model"), summary.get("cnn_model")
    note = f"<p>ASR measures use <code>{text(asr)}</code>.</p>" if asr else "<p>No ASR measures in this run.</p>"
    if cnn:
        note += (f"<p>Image agreement uses the split-computing model <code>{text(cnn)}</code> (32×32 input, "
                 "trained on synthetic shapes).</p>")
    if x3d:
        note += f"<p>X3D agreement uses <code>{text(x3d)}</code>"
        note += (": <strong>seeded random weights</strong>, so it shows how far decoding moves a fixed random "
                 "network's decision, not a trained classifier's.</p>" if "random" in x3d else ".</p>")
    return (f'<section id="rate-quality"><h2>Rate and quality per tokenizer setting</h2>{note}{figures}'
            f"{table}<h2>Worst samples per measure</h2>{worst}</section>")


def add_quality_section(output_dir: str, summary: Mapping[str, Any]) -> str:
    """Adds :func:`quality_section` to the run's ``report.html`` (before its end); returns its path."""
    from apache_beam.io.filesystems import FileSystems

    path = job_output.meta_path(output_dir, "report.html")
    with FileSystems.open(path) as f:
        page = f.read().decode()
    page = page.replace("</body>", quality_section(summary) + "</body>", 1)
    return job_output.write_meta(output_dir, "report.html", page.encode())
