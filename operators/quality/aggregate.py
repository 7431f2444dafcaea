"""Rate–quality figures per tokenizer setting, and the worst samples per measure, from quality rows.

Means are over the rows where a measure is defined and finite (PSNR of a lossless round trip is
infinite and counted in ``lossless``; PESQ of audio without speech is null). WERs are corpus
WERs: Σ word errors / Σ reference words.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from operators.quality.measures import HIGHER_IS_BETTER

RATE_FIELDS = ("num_tokens", "tokens_per_s", "bits", "bits_per_s")
MEAN_MEASURES = ("psnr_db", "ssim", "cnn_top1_agree", "x3d_top1_agree", "pesq_wb", "stoi", "mel_distance_db")
WER_MEASURES = {"asr_wer": ("asr_word_errors", "asr_reference_words"),
                "reference_wer": ("reference_word_errors", "reference_words")}


def _mean(values: Sequence[Any]) -> Optional[float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return round(float(np.mean(finite)), 4) if finite else None


def _corpus_wer(rows: Sequence[Mapping[str, Any]], errors: str, words: str) -> Optional[float]:
    counted = [r for r in rows if r.get(words) is not None]
    if not counted:
        return None
    total = sum(int(r[words]) for r in counted)
    wrong = sum(int(r[errors]) for r in counted)
    return round(wrong / total, 4) if total else float(wrong > 0)


def by_setting(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One entry per (tokenizer, setting): modality, version, rows, mean rate figures and
    mean quality figures (None where no row defines it), sorted by tokenizer then bits."""
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["tokenizer"], row["setting"]), []).append(row)
    out = []
    for (tokenizer, setting), members in groups.items():
        entry: Dict[str, Any] = {
            "tokenizer": tokenizer, "setting": setting, "modality": members[0]["modality"],
            "tokenizer_version": members[0]["tokenizer_version"], "rows": len(members),
        }
        for field in RATE_FIELDS:
            entry[field] = _mean([r.get(field) for r in members])
        for measure in MEAN_MEASURES:
            entry[measure] = _mean([r.get(measure) for r in members])
        entry["lossless"] = sum(1 for r in members if r.get("psnr_db") is not None and math.isinf(r["psnr_db"]))
        for measure, (errors, words) in WER_MEASURES.items():
            entry[measure] = _corpus_wer(members, errors, words)
        out.append(entry)
    return sorted(out, key=lambda e: (e["modality"], e["tokenizer"], e["bits"] or 0.0, e["setting"]))


def worst_samples(rows: Sequence[Mapping[str, Any]], n: int) -> Dict[str, List[Dict[str, Any]]]:
    """The ``n`` worst rows per measure (lowest PSNR, highest WER ...), with their keys; infinite
    values (a lossless PSNR) are never among them."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for measure, higher_better in HIGHER_IS_BETTER.items():
        scored = [r for r in rows if r.get(measure) is not None and math.isfinite(float(r[measure]))]
        if not scored:
            continue
        if measure == "reference_wer":  # the recogniser on the original: the same for every setting
            scored = list({(r["source"], r["key"]): r for r in scored}.values())
        scored.sort(key=lambda r: (float(r[measure]) if higher_better else -float(r[measure]), r["key"]))
        out[measure] = [{"key": r["key"], "source": r["source"], "tokenizer": r["tokenizer"],
                         "setting": r["setting"], "value": round(float(r[measure]), 4)} for r in scored[:n]]
    return out
