"""ReadMediaShards: WebDataset tar shards and plain folders in, keyed ``MediaSample`` out.

Members are grouped into samples the way WebDataset does: a member ``dir/abc.seg.jpg`` has
key ``dir/abc`` and extension ``seg.jpg``; consecutive members sharing a key form one sample.
Shards are streamed member by member (``tarfile`` stream mode), never loaded whole.
"""

import os
import re
import tarfile
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from schemas.common import MediaSample
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter

STAGE = "ReadShards"
SHARD_STATS_TAG = "shard_stats"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_BRACE_RE = re.compile(r"\{([^{}]*)\}")


class ShardStats(NamedTuple):
    """How many records one shard produced, so the writer can check the accounting.

    Attributes:
        source: The shard.
        records: Samples emitted plus dead letters emitted by the reader.
    """

    source: str
    records: int


def expand_braces(pattern: str) -> List[str]:
    """Expands ``{000..009}`` numeric ranges (zero padding kept) and ``{a,b}`` lists."""
    match = _BRACE_RE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if ".." in body:
        lo, hi = body.split("..", 1)
        width = len(lo)
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for option in options for p in expand_braces(head + option + tail)]


def split_member_name(name: str) -> Optional[Tuple[str, str]]:
    """Returns ``(key, extension)`` of a member name, or None if it has no extension."""
    match = _KEY_RE.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def unsafe_name_reason(name: str) -> Optional[str]:
    """Says why a member name is unsafe to use as a key or path (absolute, ``..``), if it is."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return f"member name {name!r} is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return f"member name {name!r} tries to escape the shard with '..'"
    return None


class ReadShardFn(beam.DoFn):
    """Streams one shard (tar file or folder) into samples; damage becomes dead letters.

    Args:
        max_member_bytes: Members larger than this are not read into memory; the sample
            becomes a dead letter instead.
    """

    def __init__(self, max_member_bytes: int = 1 << 31):
        self._max_member_bytes = max_member_bytes

    def process(self, source: str) -> Iterator:
        records = 0
        for out in self._read(source):
            records += 1
            yield out
        count(STAGE, "shards")
        yield beam.pvalue.TaggedOutput(SHARD_STATS_TAG, ShardStats(source, records))

    def _read(self, source: str) -> Iterator:
        if os.path.isdir(source):
            yield from self._read_folder(source)
        else:
            yield from self._read_tar(source)

    def _read_folder(self, folder: str) -> Iterator:
        paths: Dict[str, Dict[str, str]] = {}
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in files:
                path = os.path.join(root, name)
                parts = split_member_name(os.path.relpath(path, folder).replace(os.sep, "/"))
                if parts is not None:
                    paths.setdefault(parts[0], {})[parts[1]] = path
        for key in sorted(paths):
            members = {}
            for ext, path in sorted(paths[key].items()):
                with open(path, "rb") as f:
                    members[ext] = f.read()
            count(STAGE, "samples")
            yield MediaSample(key, folder, members)

    def _read_tar(self, source: str) -> Iterator:
        key: Optional[str] = None
        members: Dict[str, bytes] = {}
        problem: Optional[Tuple[Exception, str]] = None

        def flush():
            if key is None:
                return None
            if problem is not None:
                return dead_letter(key, source, STAGE, problem[0], problem[1])
            count(STAGE, "samples")
            return MediaSample(key, source, members)

        try:
            raw = FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED)
            with raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
                for info in tar:
                    if info.isdir():
                        continue
                    parts = split_member_name(info.name)
                    member_key = parts[0] if parts else info.name
                    if member_key != key:
                        out = flush()
                        if out is not None:
                            yield out
                        key, members, problem = member_key, {}, None
                    reason = unsafe_name_reason(info.name)
                    if reason is not None:
                        problem = problem or (ValueError(reason), reason)
                    elif parts is None:
                        msg = f"member {info.name!r} has no extension, so no sample key"
                        problem = problem or (ValueError(msg), msg)
                    elif not info.isfile():
                        msg = f"member {info.name!r} is a link or device, not a regular file"
                        problem = problem or (ValueError(msg), msg)
                    elif info.size > self._max_member_bytes:
                        msg = (
                            f"member {info.name!r} has {info.size} bytes, over the "
                            f"{self._max_member_bytes}-byte limit"
                        )
                        problem = problem or (ValueError(msg), msg)
                    elif parts[1] in members:
                        msg = f"sample {key!r} has two members with extension {parts[1]!r}"
                        problem = problem or (ValueError(msg), msg)
                    else:
                        members[parts[1]] = tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            count(STAGE, "damaged_shards")
            damage_key = key if key is not None else f"{source}#damage"
            msg = (
                f"shard is truncated or corrupt ({err}); samples before the damage were kept"
                + (f", sample {key!r} was cut by it" if key is not None else "")
            )
            yield dead_letter(damage_key, source, STAGE, err, msg)
            return
        out = flush()
        if out is not None:
            yield out


class ReadMediaShards(beam.PTransform):
    """Reads shards into ``MediaSample`` records, with dead letters and per-shard counts.

    Apply to a pipeline root. The result has ``.samples``, ``.dead_letters`` and
    ``.shard_stats`` (one ``ShardStats`` per shard, for the accounting check).

    Args:
        sources: Shard paths or folders, already expanded (see
            ``pipelines.common.expand_inputs``).
        max_member_bytes: Largest member read into memory.
    """

    def __init__(self, sources: List[str], max_member_bytes: int = 1 << 31):
        super().__init__()
        self._sources = list(sources)
        self._max_member_bytes = max_member_bytes

    def expand(self, pbegin):
        # One shuffle spreads the shards over the workers; Create's own would add a stage.
        return (
            pbegin
            | "ListShards" >> beam.Create(self._sources, reshuffle=False)
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadShards"
            >> beam.ParDo(ReadShardFn(self._max_member_bytes)).with_outputs(
                DEAD_LETTER_TAG, SHARD_STATS_TAG, main="samples"
            )
        )
