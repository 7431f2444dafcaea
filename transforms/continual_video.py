"""Continual video inference in Beam: per-stream state for live streams, whole videos for shards.

* ``ContinualStreams``: keyed frames ``(stream_key, FrameInput)`` in, ``FrameOutput`` out.
  A keyed stateful DoFn keeps each stream's continual state in Beam state (numpy tree,
  pickled), steps frames strictly in index order, buffers frames that arrive early and
  dead-letters frames that arrive after their index was processed (duplicates). The
  operator is injected as a picklable factory returning a ``StreamStepper``, built once
  per worker in ``setup``.
* ``ContinualVideoSamples``: ``MediaSample`` (a video member) in, ``FrameOutput`` rows out;
  decodes frames streamed at a chosen fps and size and steps them through the network.
* ``WriteVideoFrames``: per input shard, ``frames/<stem>.parquet`` (``VIDEO_FRAMES_SCHEMA``),
  ``dead_letters/<stem>.parquet`` and a manifest, after checking inputs = outputs + dead letters.
"""

from collections import Counter
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from operators.tokenizers.base import first_member
from operators.video.continual import StreamStepper
from schemas.common import MediaSample
from schemas.video import FrameInput, FrameOutput, frame_outputs_table
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.io.write_shards import (
    AccountingError,
    group_by_source,
    parquet_bytes,
    records_read,
    shard_stem,
    sorted_dead_letters,
    write_atomic,
    write_manifest,
    write_shard_dead_letters,
)

STREAM_STAGE = "ContinualStep"
VIDEO_STAGE = "ContinualVideo"
WRITE_STAGE = "WriteVideoFrames"
SKIPPED_TAG = "skipped"


class Skipped(NamedTuple):
    """A sample with no video member (counted for the accounting, not an error)."""

    source: str
    key: str


class LateFrameError(ValueError):
    """A frame arrived after its index had been processed, or twice while waiting."""


class MissingFramesError(ValueError):
    """Frames never arrived; the stream continued without them."""


class TooShortError(ValueError):
    """A video had fewer frames than the network needs for its first output."""


def _output(stepper: StreamStepper, key: str, source: str, index: int, values, fps: Optional[float], model: str):
    return FrameOutput(
        key=key,
        source=source,
        frame_index=index,
        output_index=(index - stepper.delay) // stepper.stride,
        time_s=index / fps if fps else -1.0,
        model=model,
        values=values,
    )


class ContinualStreamFn(beam.DoFn):
    """Steps each keyed stream's frames in index order, its state kept in Beam state.

    Args:
        factory: Picklable zero-argument callable returning the ``StreamStepper``.
        model: Name written to every output row.
        fps: Frame rate, for ``time_s`` (``None``: unknown).
        max_pending: Most early frames buffered per stream; beyond it the missing frames
            are given up (one ``MissingFramesError`` dead letter) and the stream goes on.
    """

    CO_STATE = ReadModifyWriteStateSpec("continual_state", PickleCoder())
    NEXT_INDEX = ReadModifyWriteStateSpec("next_index", VarIntCoder())
    PENDING = BagStateSpec("pending_frames", PickleCoder())

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float] = None,
                 max_pending: int = 256):
        self._factory = factory
        self._model = model
        self._fps = fps
        self._max_pending = max_pending
        self._stepper: Optional[StreamStepper] = None

    def setup(self) -> None:
        self._stepper = self._factory()

    def process(
        self,
        element: Tuple[str, FrameInput],
        co_state=beam.DoFn.StateParam(CO_STATE),
        next_index=beam.DoFn.StateParam(NEXT_INDEX),
        pending=beam.DoFn.StateParam(PENDING),
    ) -> Iterator:
        key, frame = element
        expected = next_index.read() or 0
        if frame.index < expected:
            count(STREAM_STAGE, "late_frames")
            yield dead_letter(f"{key}#{frame.index}", frame.source, STREAM_STAGE,
                              LateFrameError(f"frame {frame.index} arrived after frame {expected - 1} was processed"))
            return
        waiting = sorted(pending.read(), key=lambda f: f.index)
        if frame.index > expected:
            if any(f.index == frame.index for f in waiting):
                count(STREAM_STAGE, "late_frames")
                yield dead_letter(f"{key}#{frame.index}", frame.source, STREAM_STAGE,
                                  LateFrameError(f"frame {frame.index} is already waiting (duplicate)"))
                return
            waiting.append(frame)
            waiting.sort(key=lambda f: f.index)
            if len(waiting) <= self._max_pending:
                pending.add(frame)
                count(STREAM_STAGE, "buffered_frames")
                return
            gap = waiting[0].index - expected
            count(STREAM_STAGE, "missing_frames", gap)
            yield dead_letter(f"{key}#{expected}", frame.source, STREAM_STAGE,
                              MissingFramesError(f"frames {expected}..{waiting[0].index - 1} never arrived"))
            expected = waiting[0].index
        else:
            waiting.insert(0, frame)
        state = co_state.read()
        state = self._stepper.init_state() if state is None else state
        rest: List[FrameInput] = []
        for f in waiting:
            if f.index != expected:
                rest.append(f)
                continue
            values, state = self._stepper.step(f.frame, state)
            expected += 1
            count(STREAM_STAGE, "frames")
            if values is not None:
                yield _output(self._stepper, key, f.source, f.index, values, self._fps, self._model)
        co_state.write(state)
        next_index.write(expected)
        pending.clear()
        for f in rest:
            pending.add(f)


class ContinualStreams(beam.PTransform):
    """``(stream_key, FrameInput)`` → ``FrameOutput``, with dead letters on ``DEAD_LETTER_TAG``.

    Args:
        factory: Picklable callable returning the ``StreamStepper`` (e.g. a
            ``functools.partial`` of ``operators.video.x3d.co_x3d_stepper``).
        model: Name written to every row.
        fps: Frame rate for ``time_s``.
        max_pending: Early frames buffered per stream before a gap is given up.
    """

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float] = None,
                 max_pending: int = 256):
        super().__init__()
        self._fn = ContinualStreamFn(factory, model, fps, max_pending)

    def expand(self, frames):
        return frames | "StepStreams" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="outputs")


class ContinualVideoFn(beam.DoFn):
    """Decodes one sample's video (streamed) and steps all its frames through the network.

    Rows of a video are emitted only once the whole video succeeded, so every sample gives
    either its rows or exactly one dead letter.

    Args:
        factory: Picklable callable returning the ``StreamStepper``.
        model: Name written to every row.
        fps: Decoding frame rate (``None``: every frame).
        width: Frame width after scaling.
        height: Frame height after scaling.
        decode: ``iter_video_frames``-like function ``(data, fps, width, height)``; injected
            so tests can use fakes.
        max_seconds: Decode at most this much of each video.
    """

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float], width: int, height: int,
                 decode: Optional[Callable[..., Iterable]] = None, max_seconds: Optional[float] = None):
        self._factory = factory
        self._model = model
        self._fps, self._width, self._height = fps, width, height
        self._decode = decode
        self._max_seconds = max_seconds
        self._stepper: Optional[StreamStepper] = None

    def setup(self) -> None:
        self._stepper = self._factory()
        if self._decode is None:
            from operators.media.decode import iter_video_frames

            self._decode = iter_video_frames

    def process(self, sample: MediaSample) -> Iterator:
        found = first_member(sample.members, "video")
        if found is None:
            count(VIDEO_STAGE, "skipped_no_video")
            yield beam.pvalue.TaggedOutput(SKIPPED_TAG, Skipped(sample.source, sample.key))
            return
        try:
            kwargs = {} if self._max_seconds is None else {"max_seconds": self._max_seconds}
            frames = self._decode(found[1], self._fps, self._width, self._height, **kwargs)
            counter = [0]
            rows = [
                _output(self._stepper, sample.key, sample.source, index, values, self._fps, self._model)
                for index, values in self._stepper.steps(_counted(frames, counter))
            ]
            n_frames = counter[0]
            if not rows:
                raise TooShortError(
                    f"{n_frames} frame(s) decoded, the network needs {self._stepper.delay + 1} for its first "
                    "output; lower the delay (--window) or raise --fps"
                )
        except Exception as err:  # noqa: BLE001 - any failure of one video is that video's dead letter
            count(VIDEO_STAGE, "failed")
            yield dead_letter(sample.key, sample.source, VIDEO_STAGE, err)
            return
        count(VIDEO_STAGE, "videos")
        count(VIDEO_STAGE, "frames", n_frames)
        count(VIDEO_STAGE, "rows", len(rows))
        yield from rows


def _counted(frames: Iterable, counter: List[int]) -> Iterator:
    for frame in frames:
        counter[0] += 1
        yield frame


class ContinualVideoSamples(beam.PTransform):
    """``MediaSample`` → ``FrameOutput`` rows (main), dead letters (``DEAD_LETTER_TAG``) and
    samples without a video member (``SKIPPED_TAG``, ``Skipped``).

    Each video is one stream (batch 1) stepped start to end inside one worker call; videos
    spread over workers. Arguments as for ``ContinualVideoFn``.
    """

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float], width: int, height: int,
                 decode: Optional[Callable[..., Iterable]] = None, max_seconds: Optional[float] = None):
        super().__init__()
        self._fn = ContinualVideoFn(factory, model, fps, width, height, decode, max_seconds)

    def expand(self, samples):
        return samples | "StepVideos" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, SKIPPED_TAG, main="rows")


class WriteVideoFramesFn(beam.DoFn):
    """Writes one shard's frame rows and dead letters after checking the accounting.

    Every record the reader produced for the shard must end up as a video with rows, a
    skipped non-video sample or exactly one dead letter.
    """

    def __init__(self, output_dir: str):
        self._out = output_dir

    def process(self, element: Tuple[str, Dict[str, Iterable]]) -> Iterator[Dict[str, Any]]:
        source, grouped = element
        rows = sorted(grouped["rows"], key=lambda r: (r.key, r.frame_index))
        dead = sorted_dead_letters(grouped["dead"])
        expected = records_read(grouped["stats"])
        videos = sorted({r.key for r in rows})
        skipped = len(list(grouped["skipped"]))
        if len(videos) + skipped + len(dead) != expected:
            raise AccountingError(
                f"{source}: read {expected} records but wrote {len(videos)} videos, skipped {skipped} "
                f"and wrote {len(dead)} dead letters"
            )
        stem = shard_stem(source)
        files = []
        if rows:
            path = FileSystems.join(self._out, "frames", f"{stem}.parquet")
            write_atomic(path, parquet_bytes(frame_outputs_table(rows)))
            files.append(path)
        files += write_shard_dead_letters(self._out, stem, dead)
        manifest = {
            "source": source,
            "records": expected,
            "videos": len(videos),
            "skipped_no_video": skipped,
            "rows": len(rows),
            "dead_letters": len(dead),
            "dead_letters_by_type": dict(Counter(d.error_type for d in dead)),
            "models": sorted({r.model for r in rows}),
            "files": files,
        }
        write_manifest(self._out, manifest)
        count(WRITE_STAGE, "rows", len(rows))
        yield manifest


class WriteVideoFrames(beam.PTransform):
    """Apply to ``{"rows", DEAD_LETTER_TAG, SKIPPED_TAG, "stats"}``; returns per-shard manifests."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._fn = WriteVideoFramesFn(output_dir)

    def expand(self, inputs):
        grouped = group_by_source({"Rows": inputs["rows"], "Dead": inputs[DEAD_LETTER_TAG],
                                   "Skipped": inputs[SKIPPED_TAG], "Stats": inputs["stats"]})
        return grouped | "WriteShard" >> beam.ParDo(self._fn)
