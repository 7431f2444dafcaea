"""Megatron-LM indexed datasets: a ``.bin`` of tokens and its ``.idx`` (the ``MMIDIDX`` format).

Read by megatron-core's ``megatron.core.datasets.indexed_dataset.IndexedDataset`` (and so by
``GPTDataset``). Layout of the ``.idx`` file, little-endian, as ``_IndexWriter`` writes it:

    b"MMIDIDX\\x00\\x00"  version u64 (1)  dtype code u8
    sequence count u64   document count u64 (documents + 1)
    sequence lengths     int32[sequence count]
    sequence pointers    int64[sequence count]   byte offsets into the .bin
    document indices     int64[document count]   0, then the sequence index ending each document

Each document is one sequence (one Megatron document of one sequence), in the global
shuffled order. Megatron's ``GPTDataset`` packs them into ``--seq-length`` samples itself.
"""

import struct
from typing import Sequence, Tuple

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
"""megatron-core's ``DType`` codes."""


def indexed_dataset(documents: Sequence[np.ndarray], dtype: np.dtype) -> Tuple[bytes, bytes]:
    """The ``(.bin, .idx)`` bytes of ``documents``, one sequence per document.

    Args:
        documents: 1-D token arrays, in order.
        dtype: Token dtype on disk (``schemas.exports.token_dtype``).

    Raises:
        ValueError: A token that does not fit ``dtype``, or a document over 2**31 tokens.
    """
    dtype = np.dtype(dtype)
    lengths = np.array([d.size for d in documents], dtype=np.int64)
    if lengths.size and lengths.max() >= 2**31:
        raise ValueError("a Megatron sequence holds fewer than 2**31 tokens")
    tokens = np.concatenate([np.asarray(d).ravel() for d in documents]) if documents else np.zeros(0, np.int64)
    info = np.iinfo(dtype)
    if tokens.size and (tokens.min() < info.min or tokens.max() > info.max):
        raise ValueError(f"token ids {tokens.min()}..{tokens.max()} do not fit {dtype.name}")
    pointers = np.zeros(len(documents), dtype=np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    index = b"".join([
        INDEX_HEADER,
        struct.pack("<Q", INDEX_VERSION),
        struct.pack("<B", DTYPE_CODES[dtype]),
        struct.pack("<Q", len(documents)),
        struct.pack("<Q", len(documents) + 1),
        lengths.astype("<i4").tobytes(),
        pointers.astype("<i8").tobytes(),
        np.arange(len(documents) + 1, dtype="<i8").tobytes(),
    ])
    return tokens.astype(dtype.newbyteorder("<")).tobytes(), index
