"""Rate figures of one tokenized item: tokens per item and per second, bits per item and per second.

The bits count what a tokenizer's output needs, from what it reports: byte tokenizers (jpeg,
avc, opus) carry ``num_bytes`` (the payload between BOS and EOS, 8 bits a byte); learned ones
carry ``bits_per_image`` (dual-image) or ``bitrate_bps`` (semantic-audio, Σ log2 codebook
sizes per row).
"""

from typing import Any, Mapping, NamedTuple, Optional

import numpy as np


class Rate(NamedTuple):
    """Attributes:
        num_tokens: Token entries of the item (``T`` or ``T × C``, BOS/EOS included).
        duration_s: Seconds of media the tokens cover (None for images).
        tokens_per_s: ``num_tokens / duration_s`` (None for images).
        bits: Bits of the item's tokens.
        bits_per_s: ``bits / duration_s`` (None for images).
    """

    num_tokens: int
    duration_s: Optional[float]
    tokens_per_s: Optional[float]
    bits: float
    bits_per_s: Optional[float]


def item_bits(num_tokens: int, meta: Mapping[str, Any], vocabulary_size: Optional[int] = None) -> float:
    """Bits of one item: from ``num_bytes``, ``bits_per_image`` or ``bitrate_bps × duration_s``
    in ``meta``, else ``num_tokens × log2(vocabulary_size)``.

    Raises:
        ValueError: ``meta`` says nothing about size and no vocabulary size is given.
    """
    if meta.get("num_bytes") is not None:
        return 8.0 * float(meta["num_bytes"])
    if meta.get("bits_per_image") is not None:
        return float(meta["bits_per_image"])
    if meta.get("bitrate_bps") is not None and meta.get("duration_s"):
        return float(meta["bitrate_bps"]) * float(meta["duration_s"])
    if vocabulary_size:
        return num_tokens * float(np.log2(vocabulary_size))
    raise ValueError("cannot tell the bits of these tokens: no num_bytes, bits_per_image or bitrate_bps in "
                     "the tokenizer's meta and no vocabulary size")


def rate_of(tokens: np.ndarray, meta: Mapping[str, Any]) -> Rate:
    """The rate figures of one tokenizer output (``TokenOutput.tokens`` and ``.meta``)."""
    num_tokens = int(np.size(tokens))
    bits = item_bits(num_tokens, meta)
    duration = meta.get("duration_s")
    if not duration:
        return Rate(num_tokens, None, None, bits, None)
    duration = float(duration)
    return Rate(num_tokens, duration, num_tokens / duration, bits, bits / duration)
