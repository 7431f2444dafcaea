"""Corpus job vs its parts, side by side in one run on the same inputs.

Prints, then emits one JSON line with:
- the JPEG tokenizer alone (images/s, one process) vs the whole build-corpus job (images/s,
  start-up, Parquet writing and the HTML report included) in process, in process with the
  training exports (``--export megatron,parquet --seq-len 4096``: shuffle, packing, a second
  pipeline), and with 2 workers, and their ratios. The four are run in turn ``--repeats``
  times and each keeps its best run, so a burst of load from other processes does not land on
  one side only;
- ffmpeg decoding the same audio/video straight to null vs the job tokenizing them
  (media seconds per wall second).

Usage: python benchmarks/bench_corpus.py [--images 4000] [--repeats 2] [--workdir /tmp/bench_corpus]
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import time

import numpy as np
from PIL import Image

from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import ffmpeg_binary
from operators.media.probe import probe
from operators.tokenizers.registry import build_tokenizer
from pipelines import build_corpus
from pipelines.tools.make_samples import synthetic_audio, synthetic_video, write_tar


def make_images(n: int, rng: np.random.Generator) -> list:
    """Photo-like JPEGs (smooth gradients + noise), 480×360, quality 90."""
    yy, xx = np.mgrid[0:360, 0:480]
    out = []
    for _ in range(n):
        base = np.stack(
            [np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)), np.cos(yy / rng.uniform(20, 80)),
             np.sin((xx + yy) / rng.uniform(30, 90))], -1
        )
        pixels = ((base + 1) * 100 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_shards(directory: str, stem: str, payloads: list, ext: str, per_shard: int) -> list:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for start in range(0, len(payloads), per_shard):
        path = os.path.join(directory, f"{stem}-{start // per_shard:06d}.tar")
        chunk = payloads[start : start + per_shard]
        write_tar(path, [(f"{stem}{start + i:07d}.{ext}", p) for i, p in enumerate(chunk)])
        paths.append(path)
    return paths


def time_job(shards: list, out: str, tokenizer: str, workers: int, extra: tuple = ()) -> tuple:
    """``(wall seconds, summary)`` of one build-corpus run."""
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--input", *shards, "--output", out, "--tokenizer", tokenizer, *extra]
    if workers > 1:
        argv += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = build_corpus.run(argv)
    wall = time.perf_counter() - start
    assert summary["dead_letters"] == 0, summary
    return wall, summary


def ffmpeg_null(payloads: list, ext: str, workdir: str) -> float:
    """Seconds to decode every payload to the null muxer, one ffmpeg after another."""
    paths = []
    for i, p in enumerate(payloads):
        path = os.path.join(workdir, f"null{i}.{ext}")
        with open(path, "wb") as f:
            f.write(p)
        paths.append(path)
    start = time.perf_counter()
    for path in paths:
        subprocess.run([ffmpeg_binary(), "-v", "error", "-i", path, "-f", "null", "-"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--audios", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the best counts")
    parser.add_argument("--workdir", default="/tmp/bench_corpus")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    rng = np.random.default_rng(0)
    images = make_images(args.images, rng)
    videos = [synthetic_video(rng, with_audio=False) for _ in range(args.videos)]
    audios = [synthetic_audio(rng) for _ in range(args.audios)]
    image_shards = write_shards(f"{args.workdir}/in", "img", images, "jpg", 500)
    video_shards = write_shards(f"{args.workdir}/in", "vid", videos, "mp4", 6)
    audio_shards = write_shards(f"{args.workdir}/in", "aud", audios, "wav", 12)

    tokenizer = build_tokenizer("jpeg")
    exports = ("--export", "megatron,parquet", "--seq-len", "4096")
    raw_s, job1_s, jobx_s, job2_s = [], [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for payload in images:
            tokenizer.encode(payload)
        raw_s.append(time.perf_counter() - start)
        job1_s.append(time_job(image_shards, f"{args.workdir}/o1", "jpeg", 1)[0])
        wall, exported = time_job(image_shards, f"{args.workdir}/ox", "jpeg", 1, exports)
        jobx_s.append(wall)
        job2_s.append(time_job(image_shards, f"{args.workdir}/o2", "jpeg", 2)[0])
    raw, job1, jobx, job2 = (args.images / min(t) for t in (raw_s, job1_s, jobx_s, job2_s))

    video_s = sum(probe(v)["duration"] for v in videos)
    audio_s = sum(decode_audio(a, 16000).size / 16000 for a in audios)
    video_null = ffmpeg_null(videos, "mp4", args.workdir)
    audio_null = ffmpeg_null(audios, "wav", args.workdir)
    video_job = time_job(video_shards, f"{args.workdir}/ov", "avc", 1)[0]
    audio_job = time_job(audio_shards, f"{args.workdir}/oa", "opus", 1)[0]

    result = {
        "images": args.images,
        "repeats": args.repeats,
        "jpeg_tokenizer_alone_img_s": round(raw, 1),
        "job_1_worker_img_s": round(job1, 1),
        "job_with_exports_img_s": round(jobx, 1),
        "job_2_workers_img_s": round(job2, 1),
        "ratio_job1_vs_tokenizer": round(job1 / raw, 3),
        "ratio_job_exports_vs_tokenizer": round(jobx / raw, 3),
        "ratio_job2_vs_tokenizer": round(job2 / raw, 3),
        "export_wall_s": exported["export"]["wall_s"],
        "export_sequences": exported["export"]["sequences"],
        "export_padding_fraction": exported["export"]["padding_fraction"],
        "video_ffmpeg_null_x_realtime": round(video_s / video_null, 1),
        "video_job_avc_x_realtime": round(video_s / video_job, 1),
        "audio_ffmpeg_null_x_realtime": round(audio_s / audio_null, 1),
        "audio_job_opus_x_realtime": round(audio_s / audio_job, 1),
        "cpu_count": os.cpu_count(),
    }
    print(f"JPEG tokenizer alone   : {raw:8.1f} images/s")
    print(f"build-corpus, 1 worker : {job1:8.1f} images/s  ({job1 / raw:.2f}x)")
    print(f"build-corpus + exports : {jobx:8.1f} images/s  ({jobx / raw:.2f}x; export step "
          f"{result['export_wall_s']} s, {result['export_sequences']} sequences, "
          f"{result['export_padding_fraction']:.1%} padding)")
    print(f"build-corpus, 2 workers: {job2:8.1f} images/s  ({job2 / raw:.2f}x)")
    print(f"video: ffmpeg->null {result['video_ffmpeg_null_x_realtime']}x RT, job(avc) {result['video_job_avc_x_realtime']}x RT")
    print(f"audio: ffmpeg->null {result['audio_ffmpeg_null_x_realtime']}x RT, job(opus) {result['audio_job_opus_x_realtime']}x RT")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
