"""ReadMediaShards: WebDataset tar shards and plain folders in, keyed ``MediaSample`` out.

Members are grouped into samples the way WebDataset does: a member ``dir/abc.seg.jpg`` has
key ``dir/abc`` and extension ``seg.jpg``; consecutive members sharing a key form one sample.
Shards are streamed member by member (``transforms.io.tar_stream``), never loaded whole, and
held to ``schemas.budgets.Budgets`` (``member_bytes``, ``header_bytes``, ``sample_members``).
A folder is read with the same rules, file by file; hidden entries, symbolic links and
anything that is not a regular file are refused, never followed or opened.

Every record the reader emits is a sample or a dead letter (``ShardStats`` counts both):
damage ends a shard with one dead letter, keeping the samples before it.
"""

import dataclasses
import lzma
import os
import re
import stat
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from schemas.budgets import DEFAULT_BUDGETS, BudgetExceeded, Budgets
from schemas.common import MediaSample
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.io.sources import is_remote
from transforms.io.tar_stream import TarDamage, TarStream, decode_name

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


class _Sample:
    """The sample being assembled: its members, or the first reason it is refused."""

    def __init__(self, key: str, budgets: Budgets):
        self.key = key
        self.members: Dict[str, bytes] = {}
        self.problem: Optional[ValueError] = None
        self.seen = 0
        self._budgets = budgets

    def admit(self, name: str, refusal: Optional[ValueError] = None) -> Optional[str]:
        """Checks one more member; returns its extension if its data may be read."""
        self.seen += 1
        parts = split_member_name(name)
        reason = unsafe_name_reason(name)
        problem = refusal or (ValueError(reason) if reason else None)
        if problem is None and parts is None:
            problem = ValueError(f"member {name!r} has no extension, so no sample key")
        if problem is None and self.seen > self._budgets.sample_members:
            problem = BudgetExceeded("sample_members", self._budgets.sample_members,
                                     f"sample {self.key!r} has more members")
        if problem is None and parts[1] in self.members:
            problem = ValueError(f"sample {self.key!r} has two members with extension {parts[1]!r}")
        self.problem = self.problem or problem
        return None if self.problem is not None else parts[1]

    def result(self, source: str):
        """The ``MediaSample``, or its dead letter."""
        if self.problem is not None:
            return dead_letter(self.key, source, STAGE, self.problem, str(self.problem))
        count(STAGE, "samples")
        return MediaSample(self.key, source, self.members)


def sample_key(name: str) -> str:
    """The sample key of a member name (the name itself when it has no extension)."""
    parts = split_member_name(name)
    return parts[0] if parts else name


class ReadShardFn(beam.DoFn):
    """Streams one shard (tar file or folder) into samples; damage becomes dead letters.

    Args:
        budgets: Limits for members, headers and samples.
    """

    def __init__(self, budgets: Budgets = DEFAULT_BUDGETS):
        self._budgets = budgets

    def process(self, source: str) -> Iterator:
        records = 0
        for out in self._read(source):
            records += 1
            yield out
        count(STAGE, "shards")
        yield beam.pvalue.TaggedOutput(SHARD_STATS_TAG, ShardStats(source, records))

    def _read(self, source: str) -> Iterator:
        if not is_remote(source) and os.path.isdir(source):
            yield from self._read_folder(source)
        else:
            yield from self._read_tar(source)

    def _read_folder(self, folder: str) -> Iterator:
        samples: Dict[str, _Sample] = {}
        paths: Dict[Tuple[str, str], str] = {}
        for name, path, refusal in walk_folder(folder):
            key = sample_key(name)
            sample = samples.setdefault(key, _Sample(key, self._budgets))
            ext = sample.admit(name, refusal)
            if ext is not None:
                sample.members[ext] = b""
                paths[key, ext] = path
        for key in sorted(samples):
            sample = samples[key]
            for ext in sorted(sample.members) if sample.problem is None else ():
                try:
                    sample.members[ext] = read_regular_file(paths[key, ext], self._budgets.member_bytes)
                except (OSError, ValueError) as err:
                    sample.problem = err if isinstance(err, ValueError) else ValueError(f"{ext} member: {err}")
                    break
            yield sample.result(folder)

    def _read_tar(self, source: str) -> Iterator:
        sample: Optional[_Sample] = None
        try:
            size = None if is_remote(source) else os.path.getsize(source)
            raw = FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED)
            with raw:
                stream = TarStream(raw, self._budgets, size)
                for entry in stream:
                    if entry.kind == "dir":
                        continue
                    key = sample_key(entry.name)
                    if sample is None or key != sample.key:
                        if sample is not None:
                            yield sample.result(source)
                        sample = _Sample(key, self._budgets)
                    ext = sample.admit(entry.name, entry.refusal)
                    if ext is not None:
                        sample.members[ext] = stream.read(entry)
        except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as err:
            count(STAGE, "damaged_shards")
            yield from self._damage(source, sample, err)
            return
        if sample is not None:
            yield sample.result(source)


    @staticmethod
    def _damage(source: str, sample: Optional[_Sample], err: Exception) -> Iterator:
        """Ends a shard at damage: a sample that the damage did not touch is kept, the damage
        becomes one dead letter (keyed by the member it hit, else ``<shard>#damage@<offset>``)."""
        member = getattr(err, "member", None)
        offset = getattr(err, "offset", None)
        unattributed = isinstance(err, TarDamage) and member is None
        if sample is not None and (unattributed or (member is not None and sample_key(member) != sample.key)):
            yield sample.result(source)
            sample = None
        if sample is not None:
            key = sample.key
        elif member is not None:
            key = sample_key(member)
        else:
            key = f"{source}#damage" + (f"@{offset}" if offset else "")
        msg = f"shard is truncated or corrupt ({err}); samples before the damage were kept" + (
            f", sample {key!r} was cut by it" if sample is not None or member is not None else "")
        yield dead_letter(key, source, STAGE, err, msg)


def walk_folder(folder: str) -> Iterator[Tuple[str, Optional[str], Optional[ValueError]]]:
    """``(member name, path, refusal)`` for every entry under ``folder``, sorted, without
    following symbolic links. Hidden entries (a hidden folder as one entry, unread), links
    and non-regular files (FIFOs, sockets, devices) come with a refusal instead of a path."""
    def visit(prefix: bytes, directory: str) -> Iterator[Tuple[str, Optional[str], Optional[ValueError]]]:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            raw = prefix + os.fsencode(entry.name)
            name = decode_name(raw)
            if entry.name.startswith("."):
                kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
                yield name, None, ValueError(f"hidden {kind} {name!r} skipped (not read)")
            elif entry.is_symlink():
                yield name, None, ValueError(f"{name!r} is a symbolic link; refused (links are not followed)")
            elif entry.is_dir(follow_symlinks=False):
                yield from visit(raw + b"/", entry.path)
            elif entry.is_file(follow_symlinks=False):
                yield name, entry.path, None
            else:
                yield name, None, ValueError(f"{name!r} is not a regular file (FIFO, socket or device); refused")

    yield from visit(b"", folder)


def read_regular_file(path: str, limit: int) -> bytes:
    """Reads a regular file of at most ``limit`` bytes without following a link or blocking
    on a FIFO swapped in after listing.

    Raises:
        BudgetExceeded: The file is larger than ``limit`` (checked before reading it).
        ValueError: It is not a regular file (any more).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path!r} is not a regular file; refused")
        if info.st_size > limit:
            raise BudgetExceeded("member_bytes", limit, f"file {path!r} has {info.st_size} bytes")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BudgetExceeded("member_bytes", limit, f"file {path!r} grew past the limit while read")
    return data


class ReadMediaShards(beam.PTransform):
    """Reads shards into ``MediaSample`` records, with dead letters and per-shard counts.

    Apply to a pipeline root. The result has ``.samples``, ``.dead_letters`` and
    ``.shard_stats`` (one ``ShardStats`` per shard, for the accounting check).

    Args:
        sources: Shard paths or folders, already expanded (see
            ``transforms.io.sources.expand_sources``).
        max_member_bytes: Largest member read into memory (overrides ``budgets.member_bytes``).
        budgets: Limits for members, headers and samples.
    """

    def __init__(self, sources: List[str], max_member_bytes: Optional[int] = None,
                 budgets: Budgets = DEFAULT_BUDGETS):
        super().__init__()
        self._sources = list(sources)
        self._budgets = budgets if max_member_bytes is None else dataclasses.replace(
            budgets, member_bytes=max_member_bytes)

    def expand(self, pbegin):
        # One shuffle spreads the shards over the workers; Create's own would add a stage.
        return (
            pbegin
            | "ListShards" >> beam.Create(self._sources, reshuffle=False)
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadShards"
            >> beam.ParDo(ReadShardFn(self._budgets)).with_outputs(
                DEAD_LETTER_TAG, SHARD_STATS_TAG, main="samples"
            )
        )
