"""Bytes ⇄ token ids for codec tokenizers whose tokens are the codec's own bytes.

Byte ``b`` is token ``b`` (0–255); :data:`BOS` and :data:`EOS` wrap each item so a language
model sees where one media item ends and the next begins.
"""

import numpy as np

from operators.tokenizers.base import MediaError

BOS = 256
EOS = 257


def bytes_to_tokens(payload: bytes) -> np.ndarray:
    """Returns ``[BOS, *payload, EOS]`` as int32 token ids."""
    tokens = np.empty(len(payload) + 2, dtype=np.int32)
    tokens[0], tokens[-1] = BOS, EOS
    tokens[1:-1] = np.frombuffer(payload, dtype=np.uint8)
    return tokens


def tokens_to_bytes(tokens: np.ndarray) -> bytes:
    """Inverts :func:`bytes_to_tokens`; the BOS/EOS wrappers are optional.

    Raises:
        MediaError: If a token other than a leading BOS / trailing EOS is not a byte.
    """
    ids = np.asarray(tokens).reshape(-1)
    if ids.size and ids[0] == BOS:
        ids = ids[1:]
    if ids.size and ids[-1] == EOS:
        ids = ids[:-1]
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise MediaError("token sequence holds ids outside 0-255 between BOS and EOS")
    return ids.astype(np.uint8).tobytes()
