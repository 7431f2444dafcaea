"""Model folders: a ``model.json`` settings file next to one ``<name>.npy`` file per array.

The learned tokenizers (dual-image, semantic-audio) store their fitted models this way so a
model is plain files anyone can inspect with NumPy. ``model.json`` is written last and
atomically: a folder that has one is complete. ``atomic_write`` also serves the k-means
codebook files (``operators.tokenizers.codebooks``).
"""

import hashlib
import json
import os
from typing import IO, Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

INFO_FILE = "model.json"


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls ``write`` on a temporary sibling of ``path`` opened for binary writing, then
    renames it into place, so readers never see a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def save_model_folder(directory: str, info: Dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Writes each array as ``<name>.npy`` (dtype as given), then ``model.json`` atomically."""
    os.makedirs(directory, exist_ok=True)
    for name, array in arrays.items():
        np.save(os.path.join(directory, f"{name}.npy"), array)
    atomic_write(os.path.join(directory, INFO_FILE), lambda f: f.write(json.dumps(info, indent=1).encode()))


def load_model_info(directory: str, kind: str, modality: str) -> Dict[str, Any]:
    """Reads ``model.json``.

    Args:
        directory: The model folder.
        kind: Model name used in the error message (e.g. ``"dual-image"``).
        modality: ``--modality`` value of ``mediabeam fit-tokenizer`` that makes such a model.

    Raises:
        ValueError: If the folder has no ``model.json``, saying how to make one.
    """
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"no {kind} model at {directory!r} ({INFO_FILE} missing); "
                         f"fit one with `mediabeam fit-tokenizer --modality {modality}`")
    with open(path) as f:
        return json.load(f)


def load_array(directory: str, name: str) -> np.ndarray:
    """Reads ``<name>.npy`` as float32 (shipped defaults may be stored as float16)."""
    return np.load(os.path.join(directory, f"{name}.npy"), allow_pickle=False).astype(np.float32)


def model_version(directory: str, extra_files: Tuple[Optional[str], ...] = ()) -> str:
    """A version that pins a fitted model: ``1-`` + the first 16 hex digits of a SHA-256 over
    the folder's ``model.json`` and ``.npy`` files (names and bytes, sorted by name) and any
    ``extra_files`` (e.g. a plug-in encoder). A user-fitted model and the shipped default
    therefore record different versions; refitting with the same data and seed gives the same.

    Raises:
        ValueError: If the folder has no ``model.json``.
    """
    if not os.path.isfile(os.path.join(directory, INFO_FILE)):
        raise ValueError(f"no model at {directory!r} ({INFO_FILE} missing)")
    digest = hashlib.sha256()
    names = sorted(n for n in os.listdir(directory) if n == INFO_FILE or n.endswith(".npy"))
    paths = [(n, os.path.join(directory, n)) for n in names]
    paths += [(f"extra:{i}", p) for i, p in enumerate(extra_files) if p]
    for name, path in paths:
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "1-" + digest.hexdigest()[:16]
