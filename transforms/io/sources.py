"""Which inputs are shards: a folder of tar shards is its shards, not one sample folder.

``--input shards/`` where ``shards/`` holds ``a.tar``, ``b.tar`` means "read these shards"; read
as a sample folder it would turn every tar into a member of a sample and every sample into a
dead letter. :func:`expand_sources` makes that call once, before the pipeline starts.
"""

import os
from typing import List, Sequence

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class InputError(ValueError):
    """An input cannot be used as given; the message says which and how to fix it."""


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL handled by one of Beam's remote file systems (gs://, s3://)."""
    return "://" in path


def is_shard(path: str) -> bool:
    """Whether ``path`` names a tar shard (by its suffix)."""
    return path.lower().endswith(SHARD_SUFFIXES)


def _visible_files(folder: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def expand_sources(paths: Sequence[str]) -> List[str]:
    """Replaces each folder whose files are all tar shards by those shards (recursively,
    sorted; hidden entries ignored); other paths are kept as they are.

    Args:
        paths: Existing inputs (globs and brace ranges already expanded).

    Raises:
        InputError: A folder holds no files, mixes tar shards with other files (ambiguous:
            say which is meant), or a local path is not valid UTF-8 (it could not be stored
            in the output).
    """
    sources: List[str] = []
    for path in paths:
        if is_remote(path) or not os.path.isdir(path):
            sources.append(path)
            continue
        if not any(files for _, _, files in os.walk(path)):
            raise InputError(f"--input {path!r} is a folder with no files in it; point it at the shards or media")
        files = _visible_files(path)
        shards = [f for f in files if is_shard(f)]
        if not shards:
            sources.append(path)
        elif len(shards) == len(files):
            sources.extend(shards)
        else:
            other = [os.path.relpath(f, path) for f in files if not is_shard(f)][:3]
            raise InputError(
                f"--input {path!r} mixes tar shards with other files ({', '.join(other)} ...); pass the "
                f"shards ({os.path.join(path, '*.tar')}) or a folder of media files without tars"
            )
    for source in sources:
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"input {source!r}: the path is not valid UTF-8; rename it") from None
    return sorted(dict.fromkeys(sources))
