"""Scale-out figures, side by side in one run on the same inputs.

1. build-corpus throughput (samples/s) with 1 vs 2 ``multi_processing`` workers (and the
   in-process runner for reference), alternating the runs so machine noise hits both: end
   to end, and in the processing phase (first to last sample read over all workers, from
   the ``Progress/Read.seen_at_ms`` metric), which leaves out the workers' start-up.
   Per run it also prints when the first sample was read (start-up: graph, worker
   processes, tokenizers), the seconds after the last one (last batches, shuffle, write)
   and the CPU seconds of this process (launcher + runner) and of its children (workers,
   ffmpeg). The default input, 2048 samples in 64 shards (~40 s on one worker), is a
   small corpus job; the earlier default of 384 samples (~8 s) was mostly start-up.
2. The ASR job's batching: plain ``beam.BatchElements`` (what RunInference does) vs
   ``BucketedRunInference`` on the same clips of mixed length: padding fraction (Beam
   metrics), clips/s and audio seconds per wall second, and whether the transcripts agree.
   The model is ``operators.asr.streaming`` (FastConformer, CTC head) with the embedded
   checkpoint when it exists, else the same operator with random weights at the size
   chosen below (same cost shape; transcripts are then meaningless but comparable).

The machine load (1-minute load average and the busiest other processes) is printed with
the figures, since the 2-worker speed-up depends on free cores. Ends with one JSON line.

Usage: python benchmarks/bench_scale.py [--shards 64 --samples-per-shard 32 --clips 96]
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from apache_beam.pvalue import TaggedOutput
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from operators.asr.config import EncoderConfig, ModelConfig
from operators.asr.model import random_model
from operators.asr.nemo_checkpoint import EMBEDDED_MODEL
from operators.asr.streaming import StreamingASR
from operators.asr.vocabulary import CharVocabulary
from pipelines import build_corpus
from pipelines.operability import query_metrics
from pipelines.tools.make_samples import write_sample_shards
from schemas.asr import AudioItem
from transforms.asr import ASRModelHandler
from transforms.bucketing import BucketedRunInference, MeasurePadding, PreBatchedModelHandler
from transforms.corpus.documents import DocumentModelHandler, document_result
from transforms.io.read_shards import ReadShardFn

RATE = 16_000
LABELS = list(" abcdefghijklmnopqrstuvwxyz'")


def machine_load() -> dict:
    """Load average and the busiest processes (other agents share these cores)."""
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
            "busiest": [line.strip() for line in top.splitlines()[1:6]]}


def corpus_run(shards, out: str, flags) -> dict:
    """One corpus job; returns its summary plus the CPU seconds of this process (launcher and
    runner: control and data plane, shuffles) and of its children (SDK workers and their
    ffmpeg processes; ffmpeg only when in-process)."""
    shutil.rmtree(out, ignore_errors=True)
    before_self, before_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with contextlib.redirect_stdout(io.StringIO()):
        summary = build_corpus.run(["--input", *shards, "--output", out, "--no-report",
                                    "--progress-interval", "3600", *flags])
    after_self, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(after, before) -> float:
        return round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)

    summary["runner_cpu_s"] = cpu(after_self, before_self)
    summary["children_cpu_s"] = cpu(after_children, before_children)
    return summary


def build_documents_without_beam(shards) -> float:
    """Reads shards and builds their documents with the job's own code and configuration (its
    default flags parsed and validated, its ``DocumentModelHandler``'s builder: every tokenizer
    and the vocabulary), no Beam; returns the seconds taken (imports and tokenizer
    construction excluded)."""
    args, _, _ = build_corpus.BuildCorpus().parse(["--input", *shards, "--output", os.devnull])
    builder = DocumentModelHandler(args.tokenizers, args.text_tokenizer, args.vocabulary, args.template_spec,
                                   args.filters).load_model()
    reader = ReadShardFn()
    start = time.perf_counter()
    for shard in shards:
        for sample in reader.process(shard):
            if not isinstance(sample, TaggedOutput):
                document_result(builder, sample)
    return time.perf_counter() - start


def workload_ceiling(shards) -> dict:
    """How much faster two plain processes build documents than one on this machine, without Beam.

    Two halves of ``shards`` are built one after the other in one process, then at the
    same time in two processes. The ratio bounds what any runner can get from 2 workers on
    this workload here: with one process, its ffmpeg children already use a little of the
    second core, and two processes share the machine's caches and any other load.
    """
    halves = [shards[0::2], shards[1::2]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # both processes start (and import) now
        alone = [pool.apply(build_documents_without_beam, (half,)) for half in halves]
        together = pool.map(build_documents_without_beam, halves, chunksize=1)
    return {"shards": len(shards), "one_process_s": round(sum(alone), 2), "two_processes_s": round(max(together), 2),
            "speedup": round(sum(alone) / max(together), 3)}


def bench_corpus_workers(workdir: str, num_shards: int, per_shard: int, repeats: int, ceiling_shards: int) -> dict:
    info = write_sample_shards(os.path.join(workdir, "shards"), num_shards=num_shards,
                               samples_per_shard=per_shard, seed=11)
    shards = sorted(info["shards"])
    ceiling = workload_ceiling(shards[:ceiling_shards])
    print(f"  documents built without Beam, {ceiling['shards']} shards: one process {ceiling['one_process_s']}s, "
          f"two processes {ceiling['two_processes_s']}s = {ceiling['speedup']}x (this machine's ceiling for "
          f"2 workers; load {os.getloadavg()[0]:.1f})", flush=True)
    modes = {
        "in_process": [],
        "mp_1_worker": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
        "mp_2_workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    }
    runs = {m: [] for m in modes}
    load = []
    for _ in range(repeats):
        for mode, flags in modes.items():
            load.append(os.getloadavg()[0])
            summary = corpus_run(shards, os.path.join(workdir, mode), flags)
            read = summary["stage_throughput"]["Read"]  # first to last sample read, all workers
            run = {
                "wall_s": summary["wall_s"],
                "samples_per_s": round(summary["records"] / summary["wall_s"], 2),
                "processing_phase_samples_per_s": round(read["elements"] / max(read["last_s"] - read["first_s"], 1e-3), 2),
                "first_sample_s": read["first_s"],  # start-up: graph, workers, model loading
                "after_last_sample_s": round(summary["wall_s"] - read["last_s"], 2),  # last batches, shuffle, write
                "runner_cpu_s": summary["runner_cpu_s"], "children_cpu_s": summary["children_cpu_s"],
                "loadavg": round(load[-1], 2),
            }
            runs[mode].append(run)
            print(f"  corpus {mode:13s} {summary['records']} samples in {run['wall_s']:.1f}s "
                  f"= {run['samples_per_s']:.1f} samples/s end to end, {run['processing_phase_samples_per_s']:.1f} "
                  f"samples/s while reading+tokenizing (first sample at {run['first_sample_s']:.1f}s, "
                  f"{run['after_last_sample_s']:.1f}s after the last; CPU runner {run['runner_cpu_s']:.1f}s, "
                  f"children {run['children_cpu_s']:.1f}s; load {run['loadavg']:.1f})", flush=True)
    best = {m: max(r, key=lambda run: run["samples_per_s"]) for m, r in runs.items()}
    best_phase = {m: max(run["processing_phase_samples_per_s"] for run in r) for m, r in runs.items()}
    return {
        "samples": sum(info["shards"].values()), "shards": num_shards, "repeats": repeats,
        "samples_per_s_best": {m: b["samples_per_s"] for m, b in best.items()},
        "processing_phase_samples_per_s_best": best_phase,
        "first_sample_s_of_best": {m: b["first_sample_s"] for m, b in best.items()},
        "speedup_2_vs_1_workers": round(best["mp_2_workers"]["samples_per_s"] / best["mp_1_worker"]["samples_per_s"], 3),
        "speedup_2_vs_1_workers_processing_phase": round(best_phase["mp_2_workers"] / best_phase["mp_1_worker"], 3),
        "speedup_2_workers_vs_in_process": round(
            best["mp_2_workers"]["samples_per_s"] / best["in_process"]["samples_per_s"], 3),
        "loadavg_during": round(float(np.mean(load)), 2),
        "tokenize_without_beam_2_vs_1_processes": ceiling,
        "runs": runs,
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
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--samples-per-shard", type=int, default=32)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per corpus mode (best kept)")
    parser.add_argument("--ceiling-shards", type=int, default=16,
                        help="shards built into documents without Beam by one vs two processes (the machine's ceiling)")
    parser.add_argument("--asr-repeats", type=int, default=1, help="runs per batching mode (best kept)")
    parser.add_argument("--workdir", default="/tmp/bench_scale")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    before = machine_load()
    print(f"machine before: {before}", flush=True)
    corpus = bench_corpus_workers(args.workdir, args.shards, args.samples_per_shard, args.repeats,
                                  args.ceiling_shards)
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
