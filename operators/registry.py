"""Tokenizers by name: the one place a job looks up what ``--tokenizer NAME`` builds.

Register a new tokenizer by adding one ``name: "module:Class"`` entry to :data:`TOKENIZERS`.
The class takes keyword options, has a ``modality`` class attribute and implements
:class:`operators.base.Tokenizer`. Entries are imported only when used, so a job that
tokenizes JPEGs never imports torch; constructors must be cheap (weights load lazily).
"""

import importlib
from typing import Any, Callable, Dict

from operators.base import Tokenizer

TOKENIZERS: Dict[str, str] = {
    "jpeg": "operators.jpeg_tokenizer:JpegTokenizer",
    "avc": "operators.avc_tokenizer:AvcTokenizer",
    "opus": "operators.opus_tokenizer:OpusTokenizer",
    "semantic-audio": "operators.semantic_audio_tokenizer:SemanticAudioTokenizer",
    "dual-image": "operators.dual_image_tokenizer:DualImageTokenizer",
}

DEFAULT_TOKENIZER_FOR_MODALITY: Dict[str, str] = {"image": "jpeg", "video": "avc", "audio": "opus"}


def tokenizer_class(name: str) -> Callable[..., Tokenizer]:
    """Imports and returns the class registered as ``name``.

    Raises:
        ValueError: If ``name`` is not registered, listing the known names.
    """
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {sorted(TOKENIZERS)}")
    module, attr = TOKENIZERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Builds the tokenizer registered as ``name`` with keyword options.

    Raises:
        ValueError: If ``name`` is not registered, listing the known names.
    """
    return tokenizer_class(name)(**kwargs)


def tokenizer_modality(name: str) -> str:
    """Returns the modality (``image``/``video``/``audio``) of a registered tokenizer."""
    return tokenizer_class(name).modality
