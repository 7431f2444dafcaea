"""Per-frame outputs of continual video networks (``video-features`` and live inference)."""

from typing import Iterable, NamedTuple

import numpy as np
import pyarrow as pa


class FrameInput(NamedTuple):
    """One decoded frame of a stream, as it crosses Beam stages.

    Attributes:
        index: Position of the frame in its stream (0, 1, …); frames may arrive out of order.
        frame: The frame (``[H, W, 3]`` uint8 for decoded video).
        source: Where the stream comes from (shard, camera URL ...).
    """

    index: int
    frame: np.ndarray
    source: str


class FrameOutput(NamedTuple):
    """The network's output completed by one input frame.

    Attributes:
        key: Stream key (the WebDataset ``__key__`` for video shards).
        source: Shard or stream the frames came from.
        frame_index: Index of the input frame whose step produced this output.
        output_index: Index of this output in the offline (clip) network's output sequence:
            ``(frame_index - delay) // stride``.
        time_s: ``frame_index / fps`` (time of the newest frame used), or -1 if unknown.
        model: Network name, e.g. ``co_x3d_s-w16``.
        values: Scores (or features) as float32.
    """

    key: str
    source: str
    frame_index: int
    output_index: int
    time_s: float
    model: str
    values: np.ndarray


VIDEO_FRAMES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("output_index", pa.int64(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("top_class", pa.int32(), nullable=False),
        pa.field("top_score", pa.float32(), nullable=False),
        pa.field("values", pa.list_(pa.float32()), nullable=False),
    ],
    metadata={"mediabeam.table": "video_frames", "mediabeam.schema_version": "1"},
)


def frame_outputs_table(rows: Iterable[FrameOutput]) -> pa.Table:
    """Builds a ``VIDEO_FRAMES_SCHEMA`` table from ``FrameOutput`` rows."""
    rows = list(rows)
    return pa.table(
        {
            "key": [r.key for r in rows],
            "source": [r.source for r in rows],
            "frame_index": [int(r.frame_index) for r in rows],
            "output_index": [int(r.output_index) for r in rows],
            "time_s": [float(r.time_s) for r in rows],
            "model": [r.model for r in rows],
            "top_class": [int(np.argmax(r.values)) for r in rows],
            "top_score": [float(np.max(r.values)) for r in rows],
            "values": [np.asarray(r.values, dtype=np.float32).ravel().tolist() for r in rows],
        },
        schema=VIDEO_FRAMES_SCHEMA,
    )
