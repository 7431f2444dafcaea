"""Model folders: a ``model.json`` settings file next to one ``<name>.npy`` file per array.

The learned tokenizers (dual-image, semantic-audio) store their fitted models this way so a
model is plain files anyone can inspect with NumPy. ``model.json`` is written last and
atomically: a folder that has one is complete. ``atomic_write`` also serves the k-means
codebook files (``operators.tokenizers.codebooks``).
"""

import json
import os
from typing import IO, Any, Callable, Dict, Mapping

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
