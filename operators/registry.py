"""Tokenizers by name: the one place a job looks up what ``--tokenizer NAME`` builds.

Register a new tokenizer by adding one ``name: factory`` entry to :data:`TOKENIZERS`; the
factory takes keyword options and returns an object implementing
:class:`operators.base.Tokenizer`. Factories must be cheap (no weights loaded at import).
"""

from typing import Any, Callable, Dict

from operators.avc_tokenizer import AvcTokenizer
from operators.base import Tokenizer
from operators.jpeg_tokenizer import JpegTokenizer
from operators.opus_tokenizer import OpusTokenizer

TOKENIZERS: Dict[str, Callable[..., Tokenizer]] = {
    "jpeg": JpegTokenizer,
    "avc": AvcTokenizer,
    "opus": OpusTokenizer,
}

DEFAULT_TOKENIZER_FOR_MODALITY: Dict[str, str] = {"image": "jpeg", "video": "avc", "audio": "opus"}


def build_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Builds the tokenizer registered as ``name`` with keyword options.

    Raises:
        ValueError: If ``name`` is not registered, listing the known names.
    """
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**kwargs)


def tokenizer_modality(name: str) -> str:
    """Returns the modality (``image``/``video``/``audio``) of a registered tokenizer.

    Raises:
        ValueError: If ``name`` is not registered, listing the known names.
    """
    factory = TOKENIZERS.get(name)
    modality = getattr(factory, "modality", None)
    return modality if isinstance(modality, str) else build_tokenizer(name).modality
