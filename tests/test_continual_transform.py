"""Continual inference in Beam: live streams (TestStream, stepped == offline) and the video-features job."""

import glob
import io
import json
import os
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from torch import nn

from batch_inputs import video_bytes
from operators.video.continual.convert import from_module
from operators.video.continual.stepper import StreamStepper
from operators.video.stream_engine import LiveVideo
from pipelines import video_features
from schemas.budgets import Budgets
from schemas.live import LiveChunk, PayloadKind
from transforms.errors import DEAD_LETTER_TAG
from transforms.live.streams import LiveStreams

C, H, W = 2, 4, 4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(C, 3, (3, 3, 3), padding=(1, 1, 1)), nn.ReLU(), nn.Conv3d(3, 2, (2, 1, 1)), nn.AvgPool3d((1, H, W))
    ).eval()


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame)


def tiny_stepper() -> StreamStepper:
    """The operator injected into the DoFn (module-level, so it pickles by reference)."""
    return StreamStepper(from_module(_net()), _to_tensor)


def _frames(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, H, W)).astype(np.float32)


def _offline(frames: np.ndarray) -> np.ndarray:
    """Regular forward over the whole stream: ``[n_out, channels]``."""
    with torch.no_grad():
        out = _net()(torch.from_numpy(frames).permute(1, 0, 2, 3)[None])
    return out[0, :, :, 0, 0].T.numpy()


def _streaming_pipeline() -> TestPipeline:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


def _close_to(expected):
    """Matcher: ``(key, frame_index, output_index, values)`` rows equal ``expected`` within 1e-5."""

    def check(actual):
        got = sorted(actual, key=lambda r: (r[0], r[1]))
        want = sorted(expected, key=lambda r: (r[0], r[1]))
        assert [r[:3] for r in got] == [r[:3] for r in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.ravel(g[3]), np.ravel(w[3]), atol=1e-5, rtol=1e-5)

    return check


class RawFrames(LiveVideo):
    """The live video engine over raw float32 ``[C, H, W]`` payloads (lossless, unlike JPEG/PNG)."""

    def decode(self, kind, sample_rate, payload):
        if int(kind) == PayloadKind.NONE and not payload:
            return None
        return np.frombuffer(payload, np.float32).reshape(C, H, W).copy()


def raw_engine() -> RawFrames:
    """The engine injected into the live DoFn (module-level, so it pickles by reference)."""
    return RawFrames(tiny_stepper(), W, H, top_k=2)


def _chunk(sid: str, seq: int, frame=None) -> LiveChunk:
    if frame is None:  # a bare end-of-stream frame
        return LiveChunk(sid, seq, True, PayloadKind.NONE, 0, b"", 0.0, "live")
    return LiveChunk(sid, seq, False, PayloadKind.IMAGE, 0, frame.tobytes(), 0.0, "live")


def _row(event):
    """``(stream, seq, output_index, values)`` of a prediction (values from all top-k = 2 classes)."""
    values = np.zeros(2, np.float32)
    values[event.fields["top_classes"]] = event.fields["top_scores"]
    return event.stream_id, event.seq, event.fields["output_index"], values


def _live(p, events, **options):
    out = p | events | "Live" >> LiveStreams(raw_engine, "tiny", idle_seconds=60, **options)
    predictions = out["events"] | "Predictions" >> beam.Filter(lambda e: e.event == "prediction")
    others = out["events"] | "Others" >> beam.Filter(lambda e: e.event != "prediction") | "Kinds" >> beam.Map(
        lambda e: (e.stream_id, e.event, e.fields.get("missing_from"), e.fields.get("missing_to")))
    return predictions | "Rows" >> beam.Map(_row), others, out[DEAD_LETTER_TAG]


def test_live_streams_out_of_order_equal_offline():
    """Continual video on the live path: frames shuffled and duplicated, outputs equal offline."""
    streams = {"cam-a": _frames(1, 9), "cam-b": _frames(2, 7)}
    order_a = [0, 2, 1, 3, 5, 4, 6, 8, 7]  # early frames are buffered until the gap closes
    order_b = [1, 0, 2, 3, 6, 5, 4]
    events = TestStream()
    for step, (ia, ib) in enumerate(zip(order_a, order_b + [None] * 2)):
        batch = [_chunk("cam-a", ia, streams["cam-a"][ia])]
        if ib is not None:
            batch.append(_chunk("cam-b", ib, streams["cam-b"][ib]))
        events = events.add_elements(batch).advance_watermark_to(step + 1)
        if step == 0:  # a duplicate of a frame still waiting for its predecessor
            events = events.add_elements([_chunk("cam-b", 1, streams["cam-b"][1])])
    events = events.add_elements([_chunk("cam-a", 3, streams["cam-a"][3])])  # a duplicate: dropped
    events = events.add_elements([_chunk(sid, len(frames)) for sid, frames in streams.items()])
    events = events.advance_watermark_to_infinity()
    delay = from_module(_net()).delay
    expected = []
    for key, frames in streams.items():
        for n, values in enumerate(_offline(frames)[: len(frames) - delay]):
            expected.append((key, n + delay, n, values))
    with _streaming_pipeline() as p:
        rows, others, dead = _live(p, events)
        assert_that(rows, _close_to(expected), label="Outputs")
        assert_that(others, equal_to([("cam-a", "final", None, None), ("cam-b", "final", None, None)]),
                    label="Finals")
        assert_that(dead, equal_to([]), label="NoDeadLetters")


def test_missing_frames_are_given_up_after_the_pending_budget():
    frames = _frames(3, 8)
    arrived = [0, 1, 3, 4, 5, 6, 7]  # frame 2 never arrives
    events = TestStream()
    for step, i in enumerate(arrived):
        events = events.add_elements([_chunk("s", i, frames[i])]).advance_watermark_to(step + 1)
    events = events.add_elements([_chunk("s", 8)]).advance_watermark_to_infinity()
    delay = from_module(_net()).delay
    kept = frames[arrived]  # the stream goes on without the missing frame
    # Each prediction cites the chunk (seq) that completed it; output_index counts stepped frames.
    expected = [("s", arrived[n + delay], n, v) for n, v in enumerate(_offline(kept)[: len(kept) - delay])]
    with _streaming_pipeline() as p:
        rows, others, dead = _live(p, events, budgets=Budgets(live_pending_chunks=2))
        assert_that(rows, _close_to(expected), label="Outputs")
        assert_that(others, equal_to([("s", "gap", 2, 2), ("s", "final", None, None)]), label="GapAndFinal")
        assert_that(dead, equal_to([]), label="NoDeadLetters")


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_video_features_job_rows_match_offline_and_account(tmp_path):
    from operators.media.video import iter_video_frames
    from operators.video.co_x3d import co_x3d
    from operators.video.x3d import build_x3d, x3d_preprocess

    good = video_bytes(str(tmp_path / "good.mp4"), 2.0)
    short = video_bytes(str(tmp_path / "short.mp4"), 0.5)
    shard = tmp_path / "shard-000000.tar"
    _tar(shard, [("a.mp4", good), ("b.mp4", short), ("c.mp4", b"not a video at all" * 20), ("d.txt", b"hello")])
    out = tmp_path / "out"
    argv = ["--input", str(shard), "--output", str(out), "--model", "tiny", "--random-weights", "--size", "32",
            "--fps", "8", "--window", "3", "--num-classes", "5"]
    summary = video_features.run(argv, test_pipeline=TestPipeline(runner=FnApiRunner()))
    assert summary["records"] == 4
    assert (summary["videos"], summary["skipped_no_video"], summary["dead_letters"]) == (1, 1, 2)
    table = pq.read_table(glob.glob(str(out / "frames" / "*.parquet"))[0]).to_pylist()
    dead = [json.loads(line) for f in glob.glob(str(out / "__dead_letters" / "*.jsonl")) for line in open(f)]
    assert sorted((d["key"], d["error_type"]) for d in dead) == [("b", "TooShortError"), ("c", "MediaError")]
    # Offline reference: the regular network over the same decoded frames.
    net = build_x3d("tiny", num_classes=5)
    co = co_x3d(net, window=3)
    frames = torch.stack([x3d_preprocess(f) for f in iter_video_frames(good, 8, 32, 32)], dim=1)[None]
    with torch.no_grad():
        ref = net.forward_frames(frames)[0].T.numpy()
    n = frames.shape[2] - co.delay
    assert len(table) == n and n > 0
    assert [r["frame_index"] for r in table] == list(range(co.delay, frames.shape[2]))
    np.testing.assert_allclose(np.array([r["values"] for r in table]), ref[:n], atol=1e-5, rtol=1e-5)
    assert table[0]["time_s"] == pytest.approx(co.delay / 8)


def test_video_features_bad_config_fails_before_running(tmp_path):
    from pipelines.common import ConfigError

    shard = tmp_path / "s.tar"
    _tar(shard, [("a.txt", b"x")])
    with pytest.raises(ConfigError, match="--weights"):
        video_features.run(["--input", str(shard), "--output", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="--size"):
        video_features.run(["--input", str(shard), "--output", str(tmp_path / "o"), "--random-weights", "--size", "7x9"])
    assert not os.path.exists(tmp_path / "o")
