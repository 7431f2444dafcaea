"""Per-frame outputs of continual video networks (``video-features`` and live inference)."""

import hashlib
from typing import Any, Dict, Iterable, List, NamedTuple, Sequence, Tuple

import numpy as np
import pyarrow as pa

from schemas.tables import TableSpec


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


class VideoFrames(NamedTuple):
    """Every output row of one video: the unit a shard's accounting counts (one per record).

    Attributes:
        key: The video's sample key.
        source: Shard the video came from.
        frames: Its ``FrameOutput`` rows in frame order.
    """

    key: str
    source: str
    frames: Tuple[FrameOutput, ...]


def frame_output_rows(table: pa.Table) -> List[FrameOutput]:
    """The inverse of :func:`frame_outputs_table` (``values`` as float32 arrays)."""
    return [
        FrameOutput(r["key"], r["source"], r["frame_index"], r["output_index"], r["time_s"], r["model"],
                    np.asarray(r["values"], dtype=np.float32))
        for r in table.to_pylist()
    ]


def video_frames_table(videos: Sequence[VideoFrames]) -> pa.Table:
    """One table row per output frame of every video (in the given order)."""
    return frame_outputs_table([frame for video in videos for frame in video.frames])


def video_frames(table: pa.Table) -> List[VideoFrames]:
    """The inverse of :func:`video_frames_table`: rows grouped back into videos."""
    videos: Dict[Tuple[str, str], List[FrameOutput]] = {}
    for row in frame_output_rows(table):
        videos.setdefault((row.source, row.key), []).append(row)
    return [VideoFrames(key, source, tuple(frames)) for (source, key), frames in videos.items()]


def _video_order(video: VideoFrames) -> Tuple[str, str]:
    """By key; two videos under one key (a hostile shard may repeat one) by their content."""
    digest = hashlib.sha1(b"".join(np.asarray(f.values, np.float32).tobytes() for f in video.frames))
    return video.key, digest.hexdigest()


def _video_fields(videos: Sequence[VideoFrames]) -> Dict[str, Any]:
    return {"frames": sum(len(v.frames) for v in videos),
            "models": sorted({f.model for v in videos for f in v.frames})}


VIDEO_FRAMES_TABLE = TableSpec(
    name="frames",
    schema=VIDEO_FRAMES_SCHEMA,
    to_table=video_frames_table,
    from_table=video_frames,
    sort_key=_video_order,
    manifest_fields=_video_fields,
)
"""``<output>/frames/<shard name>-00000.parquet``: one table row per output frame of each video;
the sink's rows are ``VideoFrames`` (one per video), so ``rows`` in a manifest counts videos."""
