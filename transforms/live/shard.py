"""Grouping live chunks by stream shard, so one stateful call can batch many streams.

A Beam stateful DoFn sees one key at a time, and ``finish_bundle`` cannot touch state, so a
DoFn keyed by stream could only step one stream per call. ``ShardChunks`` therefore collects
the chunks that arrived together (up to the source's ``PollEnd`` punctuation, or to the end of
the bundle for sources without it) and emits one ``(shard, [chunks])`` element per shard,
``shard = crc32(stream_id) % num_shards``; each stream lives in exactly one shard.
"""

import zlib
from typing import Any, Dict, Iterator, List, Tuple, Union

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from schemas.live import LiveChunk, PollEnd


def shard_of(stream_id: str, num_shards: int) -> int:
    """Stable shard of a stream id (the same on every worker and run)."""
    return zlib.crc32(stream_id.encode("utf-8")) % num_shards


class ShardChunks(beam.DoFn):
    """Groups the chunks of one poll by shard: ``LiveChunk`` → ``(shard, [LiveChunk, ...])``.

    Emits at each ``PollEnd`` and in ``finish_bundle`` (and early once ``max_chunks`` are
    buffered), so the chunks that arrived together reach ``LiveStreamFn`` as one element per
    shard, as soon as their poll ends.
    """

    def __init__(self, num_shards: int, max_chunks: int = 1024):
        self._num_shards = num_shards
        self._max_chunks = max_chunks
        self._buffer: Dict[Tuple[Any, int], List[LiveChunk]] = {}
        self._stamp: Dict[Any, Any] = {}
        self._buffered = 0

    def start_bundle(self) -> None:
        self._buffer, self._stamp, self._buffered = {}, {}, 0

    def process(self, chunk: Union[LiveChunk, PollEnd], timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam) -> Iterator[WindowedValue]:
        if isinstance(chunk, PollEnd):
            yield from self._flush()
            return
        self._buffer.setdefault((window, shard_of(chunk.stream_id, self._num_shards)), []).append(chunk)
        self._stamp[window] = max(self._stamp.get(window, timestamp), timestamp)
        self._buffered += 1
        if self._buffered >= self._max_chunks:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._flush()

    def _flush(self) -> Iterator[WindowedValue]:
        """One ``(shard, chunks)`` per shard buffered, in shard order, stamped with its window's newest chunk."""
        items = sorted(self._buffer.items(), key=lambda kv: kv[0][1])
        stamps = self._stamp
        self._buffer, self._stamp, self._buffered = {}, {}, 0
        for (window, shard), chunks in items:
            yield WindowedValue((shard, chunks), stamps[window], [window])
