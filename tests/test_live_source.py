"""The live source keeps a bundle open across polls: each poll's frames go downstream at once,
followed by a ``PollEnd`` that ``ShardChunks`` flushes on; the bundle ends after
``bundle_seconds``, when frames stop coming, or when a bounded run stops."""

import threading
import time

import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from schemas.budgets import Budgets
from schemas.live import Frame, LiveChunk, PayloadKind, PollEnd
from transforms.live import source
from transforms.live.pollers import Poller, SourceSpec
from transforms.live.shard import ShardChunks, shard_of


def _frames(sid: str, first: int, n: int) -> list:
    return [Frame(sid, first + i, False, PayloadKind.PCM_S16LE, 16000, b"\x00\x00" * 160) for i in range(n)]


def _run_source(spec: SourceSpec, poller: Poller, monkeypatch, feed) -> list:
    """One ``process`` call (one bundle) with ``feed(poller)`` putting frames from a thread;
    returns ``(seconds since start, output)`` as the outputs were emitted."""
    monkeypatch.setattr(source, "poller_for", lambda _: poller)
    tracker = RestrictionTrackerView(ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(0, source._END))))
    start = time.time()
    feeder = threading.Thread(target=feed, args=(poller,))
    feeder.start()
    out = [(time.time() - start, item) for item in
           source.PollFramesFn().process(spec, tracker=tracker, watermark=ManualWatermarkEstimator(None))]
    feeder.join()
    return out


def _shape(out: list) -> list:
    """The outputs as stream ids and ``|`` for each ``PollEnd``."""
    return ["|" if isinstance(item.value, PollEnd) else item.value.stream_id for _, item in out]


def test_a_bundle_delivers_each_poll_as_it_ends(monkeypatch):
    spec = SourceSpec("tail", "/nonexistent", Budgets(), poll_seconds=0.2, bundle_seconds=5.0)
    poller = Poller(spec)

    def feed(p):
        for k in range(3):
            p.put_frames(_frames("a", 2 * k, 1) + _frames("b", 2 * k, 1), "test")
            time.sleep(0.15)

    out = _run_source(spec, poller, monkeypatch, feed)
    assert _shape(out) == ["a", "b", "|"] * 3
    ends = [at for at, item in out if isinstance(item.value, PollEnd)]
    # Each poll went out when it arrived, not when the bundle ended: 0.15 s apart, and the
    # bundle ended once no frame came for poll_seconds, well before bundle_seconds.
    assert ends[0] < 0.15 and 0.05 < ends[1] - ends[0] < 0.45 and 0.05 < ends[2] - ends[1] < 0.45
    assert out[-1][0] < 1.0


def test_bundle_seconds_ends_a_bundle_while_frames_keep_coming(monkeypatch):
    spec = SourceSpec("tail", "/nonexistent", Budgets(), poll_seconds=0.2, bundle_seconds=0.25)
    poller = Poller(spec)

    def feed(p):  # a frame every 50 ms for 1.2 s: much longer than the bundle
        for k in range(24):
            p.put_frames(_frames("a", k, 1), "test")
            time.sleep(0.05)

    out = _run_source(spec, poller, monkeypatch, feed)
    assert _shape(out).count("|") >= 2 and isinstance(out[-1][1].value, PollEnd)
    assert out[-1][0] < 0.7  # several polls, then the bundle ended near its time, frames still coming


def test_no_bundle_time_means_one_poll_per_bundle(monkeypatch):
    spec = SourceSpec("tail", "/nonexistent", Budgets(), poll_seconds=0.2, bundle_seconds=0.0)
    poller = Poller(spec)

    def feed(p):
        p.put_frames(_frames("a", 0, 2), "test")
        time.sleep(0.1)
        p.put_frames(_frames("a", 2, 1), "test")

    out = _run_source(spec, poller, monkeypatch, feed)
    assert _shape(out) == ["a", "a", "|"]
    assert [item.value.seq for _, item in out[:2]] == [0, 1]


def _chunk(sid: str, seq: int) -> LiveChunk:
    return LiveChunk(sid, seq, False, PayloadKind.PCM_S16LE, 16000, b"", 10.0 + seq, "test")


@pytest.mark.parametrize("num_shards", [1, 4])
def test_shard_chunks_flushes_at_each_poll_end(num_shards):
    fn = ShardChunks(num_shards)
    fn.start_bundle()
    window, stamp = GlobalWindow(), Timestamp(0)
    ids = [f"s{i}" for i in range(6)]
    emitted = []
    for seq, sid in enumerate(ids):
        assert list(fn.process(_chunk(sid, seq), timestamp=stamp, window=window)) == []  # held until the poll ends
    emitted.append(list(fn.process(PollEnd(1.0), timestamp=stamp, window=window)))
    for seq, sid in enumerate(ids[:2]):
        list(fn.process(_chunk(sid, 10 + seq), timestamp=stamp, window=window))
    emitted.append(list(fn.finish_bundle()))  # a bundle's end flushes what is left
    shards_of = {sid: shard_of(sid, num_shards) for sid in ids}
    for flushed, sent in zip(emitted, (ids, ids[:2])):
        keys = [value.value[0] for value in flushed]
        assert keys == sorted(set(keys)) == sorted({shards_of[sid] for sid in sent})
        assert sorted(c.stream_id for value in flushed for c in value.value[1]) == sorted(sent)
    assert list(fn.process(PollEnd(2.0), timestamp=stamp, window=window)) == []  # nothing buffered: nothing out


def test_live_job_refuses_a_bad_bundle_time():
    from pipelines import live_asr
    from pipelines.common import ConfigError

    with pytest.raises(ConfigError, match="--bundle-seconds -1.0 must be between 0 and 60"):
        live_asr.run(["--bundle-seconds", "-1"])
