"""Where a job's output files go, what they are named, and how each one lands.

An output folder holds the product and, beside it, everything else in folders whose names
start with ``__``, so the common Parquet readers pointed at the folder see only the product::

    out/<table>/<name>-00000.parquet            product rows (ParquetWriter)
    out/__webdataset/<table>/<name>-00000.tar   WebDataset copy of the rows (WebDatasetWriter)
    out/__dead_letters/<name>.jsonl             dead letters, one JSON object per line
    out/__manifests/<name>.json                 per-shard manifest, written last: "shard done"
    out/__manifests/<name>.pending              files a rewrite of the shard may leave behind

``pyarrow.dataset.dataset(out)`` skips names starting with ``_`` or ``.``, Hugging Face
``datasets`` skips hidden files and folders starting with ``__``, and ``out/**/*.parquet``
globs (DuckDB, Polars) match no file but the product. Temporary files are hidden
(``.<final name>.tmp-<hex>``) until renamed into place.

``<name>`` is :func:`output_name` of the input shard: its base name made file-name safe plus
a hash of its full path, so no two inputs share a name (``a.tar`` and ``a-b.tar``, or two
``shard.tar`` in different folders).
"""

import hashlib
import os
import re
import uuid
from typing import Iterable, List

from apache_beam.io.filesystems import FileSystems

from transforms.io.sources import is_remote

MANIFEST_DIR = "__manifests"
DEAD_LETTER_DIR = "__dead_letters"
FILTERED_DIR = "__filtered"
WEBDATASET_DIR = "__webdataset"
JOB_DIR = "__job"
"""For the job layer: run-level files (summary, report, progress) that are not product."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-[0-9a-f]{32}$")
_SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class OutputNotWritable(ValueError):
    """The output folder cannot be written; the message says which folder and how to fix it."""


def output_name(source: str) -> str:
    """Name of everything written for input shard ``source``: ``<safe stem>-<8 hex>``.

    The stem is the base name without ``.tar``/``.tar.gz``/``.tgz``, characters outside
    ``[A-Za-z0-9._-]`` replaced by ``_`` and leading ``._-`` dropped (a leading ``_`` or
    ``.`` would hide the product from readers). The hash is of the absolute path (local) or
    the URL, so the name is unambiguous per source and stable across runs.
    """
    base = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _SHARD_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    stem = _UNSAFE.sub("_", base).lstrip("._-")[:80] or "shard"
    identity = source if is_remote(source) else os.path.abspath(source)
    digest = hashlib.sha1(identity.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


def join(output_dir: str, relative: str) -> str:
    """Joins a ``/``-separated path relative to the output folder onto it."""
    return FileSystems.join(output_dir, *relative.split("/"))


def manifest_path(output_dir: str, source: str) -> str:
    """Where the manifest that marks ``source`` as done lives."""
    return join(output_dir, f"{MANIFEST_DIR}/{output_name(source)}.json")


def pending_path(output_dir: str, source: str) -> str:
    """Where the list of files a rewrite of ``source`` may leave behind lives."""
    return join(output_dir, f"{MANIFEST_DIR}/{output_name(source)}.pending")


def dead_letter_file(source: str) -> str:
    """The dead-letter file of ``source``, relative to the output folder."""
    return f"{DEAD_LETTER_DIR}/{output_name(source)}.jsonl"


def filtered_file(source: str) -> str:
    """The file listing the records of ``source`` a job left out on purpose, relative to the output folder."""
    return f"{FILTERED_DIR}/{output_name(source)}.jsonl"


def part_file(folder: str, name: str, part: int, extension: str) -> str:
    """A product part, relative to the output folder: ``<folder>/<name>-<part:05d>.<ext>``."""
    return f"{folder}/{name}-{part:05d}.{extension}"


def owned_file_pattern(name: str) -> "re.Pattern[str]":
    """The relative paths the sink may write for output name ``name``; a file listed in an old
    manifest is deleted only if it matches (a tampered manifest cannot delete other files)."""
    n = re.escape(name)
    return re.compile(
        rf"^(?:(?:{WEBDATASET_DIR}/)?[a-z][a-z0-9_]*/{n}-\d{{5,}}\.(?:parquet|tar)|(?:{DEAD_LETTER_DIR}|{FILTERED_DIR})/{n}\.jsonl)$"
    )


def list_names(directory: str) -> List[str]:
    """Base names of the entries of ``directory`` (empty when it does not exist), without
    glob patterns, so folder names with ``[`` or ``*`` are listed correctly."""
    if not is_remote(directory):
        try:
            return sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
    results = FileSystems.match([FileSystems.join(directory, "*")])
    return sorted(m.path.rstrip("/").rsplit("/", 1)[-1] for r in results for m in r.metadata_list)


def ensure_dir(directory: str) -> None:
    """Creates ``directory`` (and its parents) unless it exists; races with other workers are fine."""
    if is_remote(directory):
        return  # object stores have no folders
    os.makedirs(directory, exist_ok=True)


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to a hidden temporary sibling of ``path``, then renames it into place,
    so no reader ever sees a half-written file under a final name."""
    parent, base = path.rsplit("/", 1) if is_remote(path) else os.path.split(path)
    ensure_dir(parent)
    tmp = FileSystems.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(tmp) as f:
            f.write(data)
        if not is_remote(path):
            os.replace(tmp, path)
            return
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise


def remove_stale_temps(paths: Iterable[str]) -> List[str]:
    """Deletes temporary files a crashed writer left for exactly these final ``paths`` (never
    any other file); returns what was deleted."""
    by_dir = {}
    for path in paths:
        parent, base = path.rsplit("/", 1) if is_remote(path) else os.path.split(path)
        by_dir.setdefault(parent, set()).add(base)
    stale = []
    for parent, bases in sorted(by_dir.items()):
        for entry in list_names(parent):
            match = _TEMP.match(entry)
            if match and match.group("final") in bases:
                stale.append(FileSystems.join(parent, entry))
    delete_if_present(stale)
    return stale


def delete_if_present(paths: Iterable[str]) -> None:
    """Deletes the files that exist among ``paths``."""
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def check_output_writable(output_dir: str) -> None:
    """Fails early, before any pipeline starts, if ``output_dir`` cannot be written.

    Probes the folder (or its nearest existing parent, which is not modified beyond a
    hidden probe file that is removed at once). Remote URLs are not probed.

    Raises:
        OutputNotWritable: With the folder and how to fix it; jobs turn it into exit status 2.
    """
    if is_remote(output_dir):
        return
    target = os.path.abspath(output_dir)
    while not os.path.exists(target):
        parent = os.path.dirname(target)
        if parent == target:
            break
        target = parent
    if not os.path.isdir(target):
        raise OutputNotWritable(f"--output {output_dir!r}: {target!r} exists and is not a folder; choose another path")
    probe = os.path.join(target, f".mediabeam-probe-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as err:
        raise OutputNotWritable(
            f"--output {output_dir!r} is not writable ({err.strerror or err}: {target}); "
            "fix its permissions or choose another folder"
        ) from None
