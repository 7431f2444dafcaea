"""Throughput of the codec tokenizers on synthetic media, next to their raw codec calls.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_codec_tokenizers.py``. Prints one line
per tokenizer (items/s, tokens per item, and the ratio to the bare codec work measured in
the same run: Pillow decode+fit+save for JPEG, one ffmpeg encode for AVC/Opus) and a
final JSON line.
"""

import io
import json
import time
from typing import Callable, List

import numpy as np
from PIL import Image, ImageOps

from operators.media.audio import decode_audio
from operators.tokenizers.registry import build_tokenizer
from pipelines.tools.make_samples import synthetic_audio, synthetic_image, synthetic_video


def _rate(function: Callable[[bytes], object], items: List[bytes], repeats: int = 1) -> float:
    function(items[0])
    started = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            function(item)
    return repeats * len(items) / (time.perf_counter() - started)


def _bare_jpeg(data: bytes) -> bytes:
    image = ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (256, 256), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=25, subsampling="4:2:0", restart_marker_rows=1, streamtype=2)
    return buffer.getvalue()


def main() -> None:
    rng = np.random.default_rng(0)
    media = {
        "jpeg": [synthetic_image(rng) for _ in range(200)],
        "avc": [synthetic_video(rng) for _ in range(10)],
        "opus": [synthetic_audio(rng) for _ in range(20)],
    }
    opus = build_tokenizer("opus")
    bare = {
        "jpeg": _bare_jpeg,
        "avc": build_tokenizer("avc").to_annexb,
        "opus": lambda data: opus.to_payload(decode_audio(data, 16000)),
    }
    audio_seconds = sum(len(decode_audio(a, 16000)) for a in media["opus"]) / 16000
    summary = {}
    for name, items in media.items():
        tokenizer = build_tokenizer(name)
        tokens = float(np.mean([len(tokenizer.encode(item).tokens) for item in items]))
        ours = _rate(tokenizer.encode, items)
        reference = _rate(bare[name], items)
        summary[name] = {"items_per_s": round(ours, 1), "bare_items_per_s": round(reference, 1),
                         "ratio": round(ours / reference, 3), "tokens_per_item": round(tokens)}
        print(f"{name:5s} {ours:8.1f} items/s  bare codec {reference:8.1f}/s  ratio {ours / reference:.2f}  "
              f"{tokens:.0f} tokens/item")
    realtime = summary["opus"]["items_per_s"] * audio_seconds / len(media["opus"])
    summary["opus"]["x_real_time"] = round(realtime, 1)
    print(f"opus  {realtime:.0f}x real time")
    print(json.dumps({"bench": "codec_tokenizers", **summary}))


if __name__ == "__main__":
    main()
