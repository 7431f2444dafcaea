"""compress-features transforms and job on tiny synthetic shards (FnApiRunner)."""

import glob
import io
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from operators.compression.codec import FeatureCodec
from operators.compression.split_compute import TinyCNN, synthetic_images
from operators.compression.tables import CodecTables, fit_tables
from pipelines import compress_features
from pipelines.common import ConfigError
from pipelines.tools.make_samples import write_tar
from schemas.features import FEATURES_SCHEMA, CompressedRecord, FeatureRecord
from transforms.compression.codec import CompressFeatures, DecompressFeatures
from transforms.compression.fit_tables import FitCodecTables
from transforms.errors import DEAD_LETTER_TAG


def records(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [
        FeatureRecord(f"k{i}", "shard.tar", np.maximum(rng.normal(size=(4, 5, 5)), 0).astype(np.float32), np.zeros(3, np.float32))
        for i in range(n)
    ]


def test_beam_fitted_tables_equal_in_memory_tables():
    data = records()
    expected = fit_tables([r.features for r in data], bits=(2, 4), clip_sigmas=3.0).to_bytes()
    with TestPipeline(runner=FnApiRunner()) as p:
        tables = p | "Records" >> beam.Create(data) | "Fit" >> FitCodecTables(bits=(2, 4), clip_sigmas=3.0)
        assert_that(tables, equal_to([expected]))


def decoded_bytes(record):
    return (record.key, int(record.rate[1:])), record.features.tobytes()


def dead_letter_reason(dead):
    return dead.key, dead.stage, dead.error_type


def test_compress_decompress_with_dead_letters():
    data = records(4)
    bad = FeatureRecord("bad", "shard.tar", np.ones((4, 5, 5), np.int32), np.zeros(3, np.float32))
    expected = {(r.key, b): FeatureCodec().decode(FeatureCodec().encode(r.features, bits=b)).tobytes() for r in data for b in (3, 6)}
    with TestPipeline(runner=FnApiRunner()) as p:
        inputs = p | "Records" >> beam.Create(data + [bad])
        compressed = inputs | "Compress" >> CompressFeatures(None, bits=(3, 6))
        decoded = compressed.compressed | "Decompress" >> DecompressFeatures(None)
        got = decoded.decoded | "Bytes" >> beam.Map(decoded_bytes)
        assert_that(got, equal_to(sorted(expected.items())), label="RoundTrips")
        dead = compressed[DEAD_LETTER_TAG] | "Why" >> beam.Map(dead_letter_reason)
        assert_that(dead, equal_to([("bad", "CompressFeatures", "ValueError")]), label="DeadLetters")


def test_damaged_streams_become_dead_letters():
    x = records(1)[0].features
    good = FeatureCodec().encode(x, bits=4)
    damaged = good[:20] + bytes([good[20] ^ 1]) + good[21:]
    inputs = [
        CompressedRecord("good", "shard.tar", "u4", good, x.size, np.zeros(3, np.float32)),
        CompressedRecord("damaged", "shard.tar", "u4", damaged, x.size, np.zeros(3, np.float32)),
        CompressedRecord("cut", "shard.tar", "u4", good[:-5], x.size, np.zeros(3, np.float32)),
    ]
    with TestPipeline(runner=FnApiRunner()) as p:
        decoded = p | "Streams" >> beam.Create(inputs) | "Decompress" >> DecompressFeatures(None)
        assert_that(decoded.decoded | "Keys" >> beam.Map(record_key), equal_to(["good"]), label="Decoded")
        dead = decoded[DEAD_LETTER_TAG] | "Why" >> beam.Map(dead_letter_reason)
        expected = [("damaged", "DecompressFeatures", "BitstreamError"), ("cut", "DecompressFeatures", "BitstreamError")]
        assert_that(dead, equal_to(expected), label="DeadLetters")


def record_key(record):
    return record.key


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    images, _ = synthetic_images(6, seed=2)
    members = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buffer, format="PNG")
        members.append((f"img{i:02d}.png", buffer.getvalue()))
    members += [("broken.jpg", b"not an image"), ("textonly.txt", b"caption only")]
    shard = str(root / "shard-000000.tar")
    write_tar(shard, members)
    torch.manual_seed(0)
    weights = str(root / "tiny.pt")
    torch.save(TinyCNN().state_dict(), weights)
    return root, shard, weights


def test_compress_features_job(job_inputs):
    root, shard, weights = job_inputs
    out = str(root / "out")
    argv = ["--input", shard, "--output", out, "--model", weights, "--split-at", "block2", "--bits", "2,8",
            "--codebook-sizes", "8", "--codebook-groups", "8", "--no-report"]
    summary = compress_features.run(argv, test_pipeline=TestPipeline(runner=FnApiRunner()))
    assert summary["samples"] + summary["dead_letters"] == summary["records"] == 8
    assert summary["dead_letters_by_stage"] == {"ExtractFeatures": 2}
    assert summary["rows"] == 6 and summary["feature_rows"] == 6 * 3
    by_rate = summary["by_rate"]
    assert by_rate["u2"]["bits_per_element"] < by_rate["u8"]["bits_per_element"] < 8
    assert by_rate["u8"]["max_abs_diff"] < by_rate["u2"]["max_abs_diff"]
    assert json.load(open(os.path.join(out, "__job", "summary.json")))["feature_rows"] == 18
    assert os.path.getsize(os.path.join(out, "__job", "rate_quality.png")) > 1000
    (part,) = glob.glob(os.path.join(out, "features", "*.parquet"))
    table = pq.read_table(part)
    assert table.schema.equals(FEATURES_SCHEMA, check_metadata=False)
    codec = FeatureCodec(CodecTables.load(os.path.join(out, "__codec", "tables.bin")))
    for row in table.to_pylist():
        decoded = codec.decode(row["stream"])
        assert list(decoded.shape) == row["shape"] == [64, 8, 8]
        assert row["num_bytes"] == len(row["stream"]) and row["tables_id"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--bits", "1,4"], "out of range"),
        (["--bits", "x"], "comma-separated"),
        (["--split-at", "nope"], "not a layer"),
        (["--model", "/nonexistent.pt"], "does not exist"),
        (["--codebook-sizes", "16", "--codebook-groups", "5"], "must divide"),
    ],
)
def test_bad_configuration_fails_before_running(job_inputs, flags, message):
    root, shard, weights = job_inputs
    argv = ["--input", shard, "--output", str(root / "never"), "--model", weights] + flags
    with pytest.raises(ConfigError, match=message):
        compress_features.run(argv)
