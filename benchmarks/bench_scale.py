"""Scale-out figures, side by side in one run on the same inputs.

1. build-corpus throughput (samples/s) with 1 vs 2 ``multi_processing`` workers (and the
   in-process runner for reference), alternating the runs so machine noise hits both: end
   to end, and in the processing phase (first to last sample read over all workers, from
   the ``Progress/Read.seen_at_ms`` metric), which leaves out the workers' start-up.
2. The ASR job's batching: plain ``beam.BatchElements`` (what RunInference does) vs
   ``BucketedRunInference`` on the same clips of mixed length: padding fraction (Beam
   metrics), clips/s and audio seconds per wall second, and whether the transcripts agree.
   The model is ``operators.streaming_asr`` (FastConformer, CTC head) with the embedded
   checkpoint when it exists, else the same operator with random weights at the size
   chosen below (same cost shape; transcripts are then meaningless but comparable).

The machine load (1-minute load average and the busiest other processes) is printed with
the figures, since the 2-worker speed-up depends on free cores. Ends with one JSON line.

Usage: python benchmarks/bench_scale.py [--shards 16 --samples-per-shard 24 --clips 96]
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from operators.nemo_checkpoint import EMBEDDED_MODEL
from operators.streaming_asr import CharVocabulary, EncoderConfig, ModelConfig, StreamingASR, random_model
from pipelines import build_corpus
from pipelines.make_samples import write_sample_shards
from pipelines.operability import query_metrics
from schemas.asr import AudioItem
from transforms.asr import ASRModelHandler
from transforms.bucketing import BucketedRunInference, MeasurePadding, PreBatchedModelHandler

RATE = 16_000
LABELS = list(" abcdefghijklmnopqrstuvwxyz'")


def machine_load() -> dict:
    """Load average and the busiest processes (other agents share these cores)."""
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
            "busiest": [line.strip() for line in top.splitlines()[1:6]]}


def corpus_run(shards, out: str, flags) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        return build_corpus.run(["--input", *shards, "--output", out, "--no-report",
                                 "--progress-interval", "3600", *flags])


def bench_corpus_workers(workdir: str, num_shards: int, per_shard: int, repeats: int) -> dict:
    info = write_sample_shards(os.path.join(workdir, "shards"), num_shards=num_shards,
                               samples_per_shard=per_shard, seed=11)
    shards = sorted(info["shards"])
    modes = {
        "in_process": [],
        "mp_1_worker": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
        "mp_2_workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    }
    rates = {m: [] for m in modes}
    phase = {m: [] for m in modes}
    load = []
    for _ in range(repeats):
        for mode, flags in modes.items():
            load.append(os.getloadavg()[0])
            summary = corpus_run(shards, os.path.join(workdir, mode), flags)
            rates[mode].append(summary["records"] / summary["wall_s"])
            read = summary["stage_throughput"]["Read"]  # first to last sample read, all workers
            phase[mode].append(read["elements"] / max(read["last_s"] - read["first_s"], 1e-3))
            print(f"  corpus {mode:13s} {summary['records']} samples in {summary['wall_s']:.1f}s "
                  f"= {rates[mode][-1]:.1f} samples/s end to end, {phase[mode][-1]:.1f} samples/s while "
                  f"reading+tokenizing (first sample at {read['first_s']:.1f}s; load {load[-1]:.1f})", flush=True)
    best = {m: max(r) for m, r in rates.items()}
    best_phase = {m: max(r) for m, r in phase.items()}
    return {
        "samples": sum(info["shards"].values()), "shards": num_shards,
        "samples_per_s_best": {m: round(v, 2) for m, v in best.items()},
        "processing_phase_samples_per_s_best": {m: round(v, 2) for m, v in best_phase.items()},
        "speedup_2_vs_1_workers": round(best["mp_2_workers"] / best["mp_1_worker"], 3),
        "speedup_2_vs_1_workers_processing_phase": round(best_phase["mp_2_workers"] / best_phase["mp_1_worker"], 3),
        "speedup_2_workers_vs_in_process": round(best["mp_2_workers"] / best["in_process"], 3),
        "loadavg_during": round(float(np.mean(load)), 2),
    }


class RandomWeightsASRHandler(ASRModelHandler):
    """The ASR job's handler with the streaming FastConformer operator at random weights."""

    def load_model(self) -> StreamingASR:
        encoder = EncoderConfig(n_layers=4, d_model=144, n_heads=4, subsampling_conv_channels=64)
        config = ModelConfig(encoder=encoder, vocab_size=len(LABELS))
        return StreamingASR(random_model(config, seed=0), CharVocabulary(LABELS), decoder="ctc")


def audio_length(item: AudioItem) -> int:
    return len(item.samples)


def make_clips(n: int, seed: int = 0) -> list:
    """Clips of 0.5-8 s (uniform): tones plus noise, as 16 kHz float32."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        samples = int(rng.uniform(0.5, 8.0) * RATE)
        t = np.arange(samples) / RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(samples)
        clips.append(AudioItem(f"clip{i:04d}", "bench", wave.astype(np.float32)))
    return clips


def _transcript_line(row) -> str:
    return json.dumps([row.key, row.text])


def asr_run(handler, clips, bucketed: bool, max_batch_samples: int, text_path: str) -> dict:
    """Runs the transcription graph with one batching; returns its figures and transcripts."""
    pipeline = beam.Pipeline(runner=FnApiRunner())
    items = pipeline | "Create" >> beam.Create(clips)
    if bucketed:
        results = items | "Transcribe" >> BucketedRunInference(handler, audio_length, max_batch_samples)
    else:
        results = (
            items
            | "BatchElements" >> beam.BatchElements(**handler.batch_elements_kwargs())
            | "MeasurePadding" >> beam.ParDo(MeasurePadding(audio_length))
            | "Transcribe" >> RunInference(PreBatchedModelHandler(handler))
            | "Unbatch" >> beam.FlatMap(list)
        )
    (results | "Lines" >> beam.Map(_transcript_line)
     | "WriteTexts" >> beam.io.WriteToText(text_path, shard_name_template=""))
    start = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    counters = query_metrics(result)["counters"]
    real, padded = counters["Bucketing/real_samples"], counters["Bucketing/padded_samples"]
    with open(text_path) as f:
        texts = dict(json.loads(line) for line in f)
    figures = {"wall_s": round(wall, 2), "clips_per_s": round(len(clips) / wall, 2),
               "audio_s_per_s": round(real / RATE / wall, 2), "padding_fraction": round(1 - real / padded, 4),
               "batches": counters["Bucketing/batches"]}
    return figures, texts


def bench_asr_batching(workdir: str, num_clips: int, max_batch_size: int, repeats: int) -> dict:
    clips = make_clips(num_clips)
    embedded = os.path.exists(EMBEDDED_MODEL)
    handler_cls = ASRModelHandler if embedded else RandomWeightsASRHandler
    handler = handler_cls(decoder="ctc", max_batch_size=max_batch_size)
    # Same memory budget as the plain batches at their average: max_batch_size clips of mean length.
    cap = int(max_batch_size * np.mean([len(c.samples) for c in clips]))
    runs = {"plain": [], "bucketed": []}
    texts = {}
    for _ in range(repeats):
        for mode in runs:
            figures, texts[mode] = asr_run(handler, clips, mode == "bucketed", cap,
                                           os.path.join(workdir, f"{mode}.jsonl"))
            runs[mode].append(figures)
            print(f"  asr {mode:8s} {figures}", flush=True)
    best = {m: max(r, key=lambda f: f["clips_per_s"]) for m, r in runs.items()}
    return {
        "model": "embedded checkpoint" if embedded else "streaming_asr FastConformer 4x144, random weights",
        "clips": num_clips, "audio_s": round(sum(len(c.samples) for c in clips) / RATE, 1),
        "max_batch_size": max_batch_size, "bucketed_max_batch_samples": cap,
        "plain": best["plain"], "bucketed": best["bucketed"],
        "speedup_bucketed_vs_plain": round(best["bucketed"]["clips_per_s"] / best["plain"]["clips_per_s"], 3),
        "same_transcripts": texts["plain"] == texts["bucketed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--samples-per-shard", type=int, default=24)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per corpus mode (best kept)")
    parser.add_argument("--asr-repeats", type=int, default=1, help="runs per batching mode (best kept)")
    parser.add_argument("--workdir", default="/tmp/bench_scale")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    before = machine_load()
    print(f"machine before: {before}", flush=True)
    corpus = bench_corpus_workers(args.workdir, args.shards, args.samples_per_shard, args.repeats)
    print(f"corpus: 2 workers / 1 worker = {corpus['speedup_2_vs_1_workers']}x end to end, "
          f"{corpus['speedup_2_vs_1_workers_processing_phase']}x while processing (target >= 1.8x); "
          f"{corpus['samples_per_s_best']}", flush=True)
    asr = bench_asr_batching(args.workdir, args.clips, args.max_batch_size, args.asr_repeats)
    print(f"asr: padding plain {asr['plain']['padding_fraction']:.1%} vs bucketed "
          f"{asr['bucketed']['padding_fraction']:.1%}; clips/s plain {asr['plain']['clips_per_s']} vs "
          f"bucketed {asr['bucketed']['clips_per_s']} ({asr['speedup_bucketed_vs_plain']}x); "
          f"same transcripts: {asr['same_transcripts']}", flush=True)
    after = machine_load()
    print(json.dumps({"bench": "scale", "corpus_workers": corpus, "asr_batching": asr,
                      "machine_before": before, "machine_after": after}))


if __name__ == "__main__":
    main()
