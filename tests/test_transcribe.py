"""The transcribe job and its RunInference handler, on a tiny fixed-weight model."""

import json
import os
import wave
from dataclasses import replace

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo, save_nemo
from operators.asr.streaming import random_model, small_config
from pipelines.common import ConfigError
from pipelines.transcribe import run
from schemas.asr import ASR_SCHEMA, AudioItem
from transforms.asr import ASRModelHandler, TranscribeFiles
from transforms.errors import DEAD_LETTER_TAG

torch.set_num_threads(1)
LABELS = list(" abcdefghijk")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = random_model(replace(small_config(), vocab_size=len(LABELS)), seed=21)
    with torch.no_grad():
        model.decoder.decoder_layers[0].bias[-1] = -2.0  # emit some tokens
    path = str(tmp_path_factory.mktemp("model") / "tiny.nemo")
    save_nemo(path, model, labels=LABELS)
    return path


def _wav(path, samples):
    with wave.open(path, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture()
def audio_dir(tmp_path):
    rng = np.random.default_rng(22)
    for name, seconds in (("a", 1.3), ("b", 0.7), ("c", 2.1)):
        t = np.arange(int(seconds * 16000)) / 16000
        _wav(str(tmp_path / f"{name}.wav"), 0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(t.size))
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    return tmp_path


def test_handler_transcribes_like_the_operator(model_path):
    handler = ASRModelHandler(model_path, att_context=(70, 6))
    operator = handler.load_model()
    rng = np.random.default_rng(23)
    items = [AudioItem(f"k{i}", f"s{i}", (0.2 * rng.standard_normal(n)).astype(np.float32))
             for i, n in enumerate((16000, 9000))]
    rows = list(handler.run_inference(items, operator))
    expected = load_nemo(model_path, (70, 6)).transcribe([item.samples for item in items])
    assert [r.text for r in rows] == expected
    assert rows[0].att_context == "70,6" and rows[0].decoder == "ctc"
    assert rows[1].duration_s == pytest.approx(9000 / 16000)
    streaming = ASRModelHandler(model_path, att_context=(70, 6), streaming=True)
    assert [r.text for r in streaming.run_inference(items, streaming.load_model())] == expected


def test_transcribe_files_routes_bad_files_to_dead_letters(model_path, audio_dir):
    files = sorted(str(p) for p in audio_dir.iterdir())
    with TestPipeline(runner=FnApiRunner()) as pipeline:
        results = pipeline | "Files" >> beam.Create(files) | "Run" >> TranscribeFiles(
            ASRModelHandler(model_path))
        assert_that(results["rows"] | "Keys" >> beam.Map(lambda r: r.key),
                    equal_to(["a", "b", "c"]), label="CheckRows")
        assert_that(results[DEAD_LETTER_TAG] | "DeadKeys" >> beam.Map(lambda d: (d.key, d.stage)),
                    equal_to([("broken", "DecodeAudio")]), label="CheckDead")


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_transcribe_job_writes_outputs(model_path, audio_dir, tmp_path, suffix):
    output = str(tmp_path / f"out.{suffix}")
    summary = run([str(audio_dir), "--model", model_path, "--output", output, "--att-context", "70,13"])
    assert summary["files"] == 4 and summary["transcripts"] == 3 and summary["dead_letters"] == 1
    dead_path = str(tmp_path / f"out.dead_letters.{suffix}")
    if suffix == "parquet":
        table = pq.read_table(output)
        assert table.schema.equals(ASR_SCHEMA, check_metadata=False)
        rows = table.to_pylist()
        dead = pq.read_table(dead_path).to_pylist()
    else:
        rows = [json.loads(line) for line in open(output)]
        dead = [json.loads(line) for line in open(dead_path)]
    assert [r["key"] for r in rows] == ["a", "b", "c"] and [d["key"] for d in dead] == ["broken"]
    operator = load_nemo(model_path, (70, 13))
    import operators.media.decode as media

    expected = operator.transcribe([media.decode_audio(str(audio_dir / f"{k}.wav")) for k in "abc"])
    assert [r["text"] for r in rows] == expected


def test_transcribe_rejects_bad_flags(audio_dir, tmp_path):
    with pytest.raises(ConfigError, match="parquet or .jsonl"):
        run([str(audio_dir), "--output", str(tmp_path / "out.csv")])
    with pytest.raises(ConfigError, match="70,13"):
        run([str(audio_dir), "--output", str(tmp_path / "o.parquet"), "--att-context", "fast"])
    with pytest.raises(ConfigError, match="does not exist"):
        run([str(audio_dir), "--output", str(tmp_path / "o.parquet"), "--model", str(tmp_path / "none.nemo")])


@pytest.mark.skipif(not os.path.exists(EMBEDDED_MODEL), reason="embedded model not trained yet")
def test_embedded_model_streams_like_offline():
    operator = load_nemo(EMBEDDED_MODEL)
    assert os.path.getsize(EMBEDDED_MODEL) < 8 << 20
    rng = np.random.default_rng(24)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (20000, 33000)]
    assert operator.transcribe(audio, streaming=True) == operator.transcribe(audio)
