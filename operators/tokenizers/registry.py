"""Tokenizers by name: the one place a job looks up what ``--tokenizer NAME`` builds.

Register a new tokenizer by adding one ``name: "module:Class"`` entry to :data:`TOKENIZERS`.
The class takes keyword options, has a ``modality`` class attribute and implements
:class:`operators.tokenizers.base.Tokenizer`. Entries are imported only when used, so a job that
tokenizes JPEGs never imports torch; constructors must be cheap (weights load lazily).
"""

import importlib
from typing import Any, Callable, Dict

from operators.tokenizers.base import Tokenizer

TOKENIZERS: Dict[str, str] = {
    "jpeg": "operators.tokenizers.jpeg:JpegTokenizer",
    "avc": "operators.tokenizers.avc:AvcTokenizer",
    "opus": "operators.tokenizers.opus:OpusTokenizer",
    "semantic-audio": "operators.tokenizers.semantic_audio:SemanticAudioTokenizer",
    "dual-image": "operators.tokenizers.dual_image:DualImageTokenizer",
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
