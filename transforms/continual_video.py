"""Continual video inference in Beam for video shards (live streams: ``transforms.live``).

* ``ContinualVideoSamples``: ``MediaSample`` (a video member) in, ``VideoFrames`` (its rows) out;
  decodes frames streamed at a chosen fps and size and steps them through the network
  (the video-features job writes the rows per shard through ``transforms.io.sink``).
"""

from typing import Callable, Iterable, Iterator, List, Optional

import apache_beam as beam

from operators.tokenizers.base import first_member
from operators.video.continual.stepper import StreamStepper
from schemas.common import Filtered, MediaSample
from schemas.video import FrameOutput, VideoFrames
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter

VIDEO_STAGE = "ContinualVideo"
FILTERED_TAG = "filtered"
FRAMES_TAG = "frames"
NO_VIDEO = "no video member"


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


class SplitVideoSamples(beam.DoFn):
    """Passes samples with a video member; the others go to ``FILTERED_TAG`` as ``Filtered``."""

    def process(self, sample: MediaSample) -> Iterator:
        if first_member(sample.members, "video") is None:
            count(VIDEO_STAGE, "skipped_no_video")
            yield beam.pvalue.TaggedOutput(FILTERED_TAG, Filtered(sample.key, sample.source, NO_VIDEO))
            return
        yield sample


class ContinualVideoFn(beam.DoFn):
    """Decodes one sample's video (streamed) and steps all its frames through the network.

    A video's rows are emitted together, as one ``VideoFrames``, once the whole video
    succeeded, so every sample gives either its rows or exactly one dead letter. While a video is stepped, every frame also
    yields a ``1`` on ``FRAMES_TAG`` as soon as its output is computed: a ``CountStage``
    there shows progress through a long video long before its rows are emitted.

    Args:
        factory: Picklable callable returning the ``StreamStepper``.
        model: Name written to every row.
        fps: Decoding frame rate (``None``: every frame).
        width: Frame width after scaling.
        height: Frame height after scaling.
        decode: ``iter_video_frames``-like function ``(data, fps, width, height)``; injected
            so tests can use fakes.
        max_seconds: Decode at most this much of each video.
        threads: Torch threads per worker process (None: leave torch's setting).
    """

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float], width: int, height: int,
                 decode: Optional[Callable[..., Iterable]] = None, max_seconds: Optional[float] = None,
                 threads: Optional[int] = None):
        self._factory = factory
        self._model = model
        self._fps, self._width, self._height = fps, width, height
        self._decode = decode
        self._max_seconds = max_seconds
        self._threads = threads
        self._stepper: Optional[StreamStepper] = None

    def setup(self) -> None:
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
        self._stepper = self._factory()
        if self._decode is None:
            from operators.media.video import iter_video_frames

            self._decode = iter_video_frames

    def process(self, sample: MediaSample) -> Iterator:
        _, payload = first_member(sample.members, "video")
        rows: List[FrameOutput] = []
        counter = [0]
        ticked = 0
        try:
            kwargs = {} if self._max_seconds is None else {"max_seconds": self._max_seconds}
            frames = self._decode(payload, self._fps, self._width, self._height, **kwargs)
            for index, values in self._stepper.steps(_counted(frames, counter)):
                rows.append(_output(self._stepper, sample.key, sample.source, index, values, self._fps, self._model))
                for _ in range(counter[0] - ticked):
                    yield beam.pvalue.TaggedOutput(FRAMES_TAG, 1)
                ticked = counter[0]
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
        yield VideoFrames(sample.key, sample.source, tuple(rows))


class ContinualVideoSamples(beam.PTransform):
    """``MediaSample`` → ``VideoFrames`` (main, one per video), dead letters (``DEAD_LETTER_TAG``),
    samples without a video member (``FILTERED_TAG``, ``Filtered``) and one ``1`` per frame
    stepped (``FRAMES_TAG``, for progress).

    Each video is one stream (batch 1) stepped start to end inside one worker call; videos
    spread over workers. Arguments as for ``ContinualVideoFn``.
    """

    def __init__(self, factory: Callable[[], StreamStepper], model: str, fps: Optional[float], width: int, height: int,
                 decode: Optional[Callable[..., Iterable]] = None, max_seconds: Optional[float] = None,
                 threads: Optional[int] = None):
        super().__init__()
        self._fn = ContinualVideoFn(factory, model, fps, width, height, decode, max_seconds, threads)

    def expand(self, samples):
        split = samples | "SplitVideos" >> beam.ParDo(SplitVideoSamples()).with_outputs(FILTERED_TAG, main="videos")
        stepped = split.videos | "StepVideos" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, FRAMES_TAG, main="rows")
        return {"rows": stepped.rows, DEAD_LETTER_TAG: stepped[DEAD_LETTER_TAG], FILTERED_TAG: split[FILTERED_TAG],
                FRAMES_TAG: stepped[FRAMES_TAG]}


def _counted(frames: Iterable, counter: List[int]) -> Iterator:
    for frame in frames:
        counter[0] += 1
        yield frame
