"""The end of a batch job: ``summary.json`` from the shard manifests, and a short human summary.

Totals always come from the manifests of *every* input shard, so a ``--resume`` run that
finds all shards done reports the whole output, not zeros. What this run did (shards run,
skipped, dead letters retried and recovered, wall time) sits next to the totals.
"""

import json
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Sequence

# Keys of the samples ``mediabeam make-samples`` breaks on purpose start with this (see
# ``pipelines.tools.make_samples.DELIBERATELY_BROKEN_PREFIX`` and docs/corpus.md).
DELIBERATE_PREFIX = "broken-"
COUNT_FIELDS = ("records", "rows", "dead_letters", "filtered")


def totals(manifests: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Sums the counts every manifest carries (``filtered`` only when some manifest has it)."""
    out: Dict[str, Any] = {"shards": len(manifests)}
    for field in COUNT_FIELDS:
        if field != "filtered" or any(field in m for m in manifests):
            out[field] = sum(int(m.get(field, 0)) for m in manifests)
    return out


def sum_counters(manifests: Iterable[Mapping[str, Any]], field: str) -> Dict[str, int]:
    """Adds up a ``{name: count}`` field over manifests (missing fields count as empty)."""
    agg: Counter = Counter()
    for m in manifests:
        agg.update(m.get(field) or {})
    return dict(sorted(agg.items()))


def dead_letter_reasons(dead_letters: Iterable[Mapping[str, str]]) -> Dict[str, Any]:
    """Dead letters by ``"<stage>: <error type>"``, and how many are the demo's deliberate ones."""
    reasons: Counter = Counter()
    deliberate = 0
    for d in dead_letters:
        reasons[f"{d['stage']}: {d['error_type']}"] += 1
        deliberate += str(d["key"]).startswith(DELIBERATE_PREFIX)
    return {"dead_letters_by_reason": dict(reasons.most_common()), "deliberate_dead_letters": deliberate}


def this_run(
    wall_s: float, run_sources: Sequence[str], all_sources: Sequence[str],
    manifests: Sequence[Mapping[str, Any]], retried: Mapping[str, int],
) -> Dict[str, Any]:
    """What this invocation did.

    Args:
        wall_s: Seconds the pipeline ran (0 when there was nothing to do).
        run_sources: Shards this run processed (whole or retried).
        all_sources: Every input shard.
        manifests: Manifests of every finished input shard, after the run.
        retried: Finished shard → number of its dead letters this run retried.
    """
    ran = set(run_sources)
    records = sum(int(m["records"]) for m in manifests if m["source"] in ran)
    out: Dict[str, Any] = {
        "wall_s": round(wall_s, 3),
        "shards_run": len(ran),
        "skipped_by_resume": len(all_sources) - len(ran),
        "records_run": records,
        "records_per_s": round(records / wall_s, 2) if wall_s > 0 else None,
    }
    if retried:
        still_dead = sum(int(m["dead_letters"]) for m in manifests if m["source"] in retried)
        out["retried_dead_letters"] = sum(retried.values())
        out["recovered_by_retry"] = sum(retried.values()) - still_dead
    return out


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def human_summary(job: str, summary: Mapping[str, Any], report: bool) -> List[str]:
    """The few lines printed at the end of a run (the full JSON is in ``summary.json``)."""
    lines = [
        f"{job}: {_n(summary['records'], 'record')} in {_n(summary['shards'], 'shard')} -> "
        f"{_n(summary['rows'], 'row')}, {_n(summary['dead_letters'], 'dead letter')}"
        + (f", {summary['filtered']} filtered" if summary.get("filtered") else "")
    ]
    reasons = summary.get("dead_letters_by_reason") or {}
    if reasons:
        lines.append("  dead letters by reason: " + ", ".join(f"{r} ({n})" for r, n in reasons.items()))
    deliberate = summary.get("deliberate_dead_letters", 0)
    if deliberate:
        lines.append(f"  {deliberate} of the dead letters are the demo's deliberately broken samples "
                     f"(key prefix {DELIBERATE_PREFIX!r})")
    run = summary.get("this_run", {})
    if run:
        rate = f", {run['records_per_s']} records/s" if run.get("records_per_s") else ""
        line = f"  this run: {_n(run['shards_run'], 'shard')} in {run['wall_s']} s{rate}"
        if run.get("skipped_by_resume"):
            line += f"; {run['skipped_by_resume']} already done (--resume)"
        if "retried_dead_letters" in run:
            line += f"; retried {run['retried_dead_letters']} dead letters, recovered {run['recovered_by_retry']}"
        lines.append(line)
    job_dir = f"{summary['output'].rstrip('/')}/__job"
    lines.append(f"  output: {summary['output']}   summary: {job_dir}/summary.json"
                 + (f"   report: {job_dir}/report.html" if report else ""))
    return lines


def to_json(summary: Mapping[str, Any]) -> bytes:
    """``summary.json`` bytes (stable key order as built, indented for people)."""
    return json.dumps(summary, indent=1).encode()
