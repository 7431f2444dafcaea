"""The transcribe job and its RunInference handler, on a tiny fixed-weight model."""

import os

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from batch_inputs import (
    read_dead_letters,
    read_rows,
    tiny_asr_model,
    wav_bytes,
    write_file,
)

from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo
from pipelines.common import ConfigError
from pipelines.transcribe import run
from schemas.asr import AudioItem
from transforms.asr import ASRModelHandler, TranscribeAudio
from transforms.errors import DEAD_LETTER_TAG
from transforms.read_audio import ReadAudio

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_asr_model(str(tmp_path_factory.mktemp("model") / "tiny.nemo"))


@pytest.fixture()
def audio_dir(tmp_path):
    folder = tmp_path / "audio"
    for i, (name, seconds) in enumerate((("a.wav", 1.3), ("b.wav", 0.7), ("sub/c.wav", 2.1))):
        write_file(str(folder / name), wav_bytes(seconds, seed=i))
    write_file(str(folder / "broken.wav"), b"RIFF not really a wav")
    return folder


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
    assert handler.get_num_bytes(items) == 4 * (16000 + 9000)  # payload sizes, no pickling
    streaming = ASRModelHandler(model_path, att_context=(70, 6), streaming=True)
    assert [r.text for r in streaming.run_inference(items, streaming.load_model())] == expected


def key_and_stage(dead):
    return dead.key, dead.stage


def row_key(row):
    return row.key


def test_read_audio_keys_keep_relative_paths_and_extensions(tmp_path):
    folder = tmp_path / "clips"
    for name in ("cmd.wav", "cmd.ogg.wav", "x/cmd.wav"):
        write_file(str(folder / name), wav_bytes(0.3))
    write_file(str(folder / "notes.txt"), b"not audio")  # not an audio suffix: not a record
    single = write_file(str(tmp_path / "one.wav"), wav_bytes(0.3))
    with TestPipeline(runner=FnApiRunner()) as pipeline:
        read = pipeline | "Read" >> ReadAudio([str(folder), single])
        keys = read["audio"] | "Keys" >> beam.Map(lambda a: (a.source, a.key))
        assert_that(keys, equal_to([(str(folder), "cmd.wav"), (str(folder), "cmd.ogg.wav"),
                                    (str(folder), "x/cmd.wav"), (single, "one.wav")]), label="Keys")
        stats = read["stats"] | "Stats" >> beam.Map(tuple)
        assert_that(stats, equal_to([(str(folder), 3), (single, 1)]), label="Stats")


def test_transcribe_audio_routes_bad_files_to_dead_letters_and_buckets(model_path, audio_dir):
    pipeline = TestPipeline(runner=FnApiRunner())
    read = pipeline | "Read" >> ReadAudio([str(audio_dir)])
    results = read["audio"] | "Run" >> TranscribeAudio(ASRModelHandler(model_path), max_batch_samples=64_000)
    assert_that(results["rows"] | "Keys" >> beam.Map(row_key),
                equal_to(["a.wav", "b.wav", "sub/c.wav"]), label="CheckRows")
    assert_that(read[DEAD_LETTER_TAG] | "DeadKeys" >> beam.Map(key_and_stage),
                equal_to([("broken.wav", "DecodeAudio")]), label="CheckDead")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace == "Bucketing"}
    assert counters["real_samples"] == int(16000 * (1.3 + 0.7 + 2.1))  # every clip went through the buckets
    assert counters["padded_samples"] >= counters["real_samples"] and counters["batches"] >= 1


def test_transcribe_job_writes_outputs(model_path, audio_dir, tmp_path):
    output = str(tmp_path / "out")
    summary = run(["--input", str(audio_dir), "--model", model_path, "--output", output, "--att-context", "70,13",
                   "--no-report"])
    assert (summary["records"], summary["transcripts"], summary["dead_letters"]) == (4, 3, 1)
    rows = read_rows(output, "transcripts")
    assert [r["key"] for r in rows] == ["a.wav", "b.wav", "sub/c.wav"]
    assert [d["key"] for d in read_dead_letters(output)] == ["broken.wav"]
    from operators.media.audio import decode_audio

    operator = load_nemo(model_path, (70, 13))
    expected = operator.transcribe([decode_audio(str(audio_dir / r["key"])) for r in rows])
    assert [r["text"] for r in rows] == expected
    assert summary["audio_s"] == pytest.approx(1.3 + 0.7 + 2.1)


def test_transcribe_rejects_bad_flags(model_path, audio_dir, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(ConfigError, match="70,13"):
        run(["--input", str(audio_dir), "--output", out, "--att-context", "fast"])
    with pytest.raises(ConfigError, match="does not exist"):
        run(["--input", str(audio_dir), "--output", out, "--model", str(tmp_path / "none.nemo")])
    with pytest.raises(ConfigError, match="--input .*matches no file"):
        run(["--input", str(tmp_path / "missing.wav"), "--output", out, "--model", model_path])
    bad = write_file(str(tmp_path / "bad.nemo"), b"not a nemo archive")
    with pytest.raises(ConfigError, match="cannot be used"):
        run(["--input", str(audio_dir), "--output", out, "--model", bad])
    with pytest.raises(ConfigError, match="cannot be used"):  # a CTC-only model has no RNNT head
        run(["--input", str(audio_dir), "--output", out, "--model", model_path, "--decoder", "rnnt"])
    assert not os.path.exists(out)


@pytest.mark.skipif(not os.path.exists(EMBEDDED_MODEL), reason="embedded model not trained yet")
def test_embedded_model_streams_like_offline():
    operator = load_nemo(EMBEDDED_MODEL)
    assert os.path.getsize(EMBEDDED_MODEL) < 8 << 20
    rng = np.random.default_rng(24)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (20000, 33000)]
    assert operator.transcribe(audio, streaming=True) == operator.transcribe(audio)
