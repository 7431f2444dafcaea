"""The ``mediabeam`` command: one sub-command per job, each with Beam's PipelineOptions."""

import difflib
import importlib
import importlib.metadata
import sys
from typing import Dict, List, Optional

from pipelines.common import ConfigError, quiet_beam_warnings

# Job name -> "module:function". Modules are imported only when their job runs, so a
# job's heavy dependencies never slow down another job or ``--help``.
JOBS: Dict[str, str] = {
    "build-corpus": "pipelines.build_corpus:run",
    "compress-features": "pipelines.compress_features:run",
    "evaluate-tokenizers": "pipelines.evaluate_tokenizers:run",
    "fit-tokenizer": "pipelines.fit_tokenizer:run",
    "make-tokenizer-assets": "pipelines.tools.make_tokenizer_assets:run",
    "make-samples": "pipelines.tools.make_samples:run",
    "make-eval-set": "pipelines.tools.make_eval_set:run",
    "live-asr": "pipelines.live_asr:run",
    "live-video": "pipelines.live_video:run",
    "send": "pipelines.tools.send:run",
    "train-asr": "pipelines.tools.train_asr:run",
    "transcribe": "pipelines.transcribe:run",
    "video-features": "pipelines.video_features:run",
}

DESCRIPTIONS: Dict[str, str] = {
    "build-corpus": "tokenize sharded media into a Parquet (and WebDataset) token corpus",
    "compress-features": "split a model at a layer, compress its features, report rate vs quality",
    "evaluate-tokenizers": "encode, decode and measure tokenizers per setting: a rate-quality report",
    "fit-tokenizer": "fit semantic-audio / dual-image codebooks on shards (distributed k-means)",
    "make-tokenizer-assets": "fit the default learned-tokenizer models shipped in operators/assets",
    "make-samples": "write the embedded synthetic sample shards (no download)",
    "make-eval-set": "write shards of real photos, voices and camera clips from installed packages",
    "live-asr": "live transcription of concurrent audio streams over TCP (Beam streaming)",
    "live-video": "live per-frame CoX3D predictions for concurrent video streams over TCP",
    "send": "stream a local audio/video file to a live pipeline (real time or faster)",
    "train-asr": "train the embedded streaming ASR model on synthetic espeak-ng speech",
    "transcribe": "speech to text per shard (Parquet) with a cache-aware streaming FastConformer",
    "video-features": "per-frame continual X3D (CoX3D) predictions for video shards, to Parquet",
}


def _usage() -> str:
    lines = ["usage: mediabeam JOB [job flags] [Beam pipeline options]", "       mediabeam --version", "",
             "jobs:"]
    for name in sorted(JOBS):
        lines.append(f"  {name:<22} {DESCRIPTIONS.get(name, '')}")
    lines += [
        "",
        "Run `mediabeam JOB --help` for a job's flags. Standard Beam options (--runner,",
        "--direct_num_workers, --direct_running_mode, --setup_file, ...) pass through.",
    ]
    return "\n".join(lines)


def version() -> str:
    """The installed package's version (``unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version("mediabeam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def suggest_job(name: str) -> Optional[str]:
    """The job ``name`` most likely meant (``build_corpus`` → ``build-corpus``), if any."""
    near = difflib.get_close_matches(name.replace("_", "-").lower(), list(JOBS), n=1, cutoff=0.6)
    return near[0] if near else None


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatches to a job; bad configuration exits 2 with a message saying how to fix it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"mediabeam {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        near = suggest_job(name)
        hint = f" Did you mean {near!r}?" if near else ""
        print(f"mediabeam: unknown job {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    quiet_beam_warnings()  # before a job module imports Beam (the live jobs do at import time)
    module_name, func_name = JOBS[name].split(":")
    job = getattr(importlib.import_module(module_name), func_name)
    try:
        job(rest)
    except ConfigError as err:
        print(f"mediabeam {name}: {err.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
