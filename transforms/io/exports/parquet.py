"""Packed sequences as Parquet rows (``schemas.exports.PACKED_SCHEMA``), for HF ``datasets``."""

from typing import Sequence

import numpy as np
import pyarrow as pa

from operators.corpus.packing import PAD_DOCUMENT, PackedSequences
from schemas.exports import PACKED_SCHEMA


def fixed_lists(rows: np.ndarray) -> pa.ListArray:
    """A ``list<int32>`` column from a ``[num_rows, length]`` array, without Python ints."""
    offsets = np.arange(rows.shape[0] + 1, dtype=np.int32) * rows.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.ravel().astype(np.int32)))


def sequence_keys(document_ids: np.ndarray, keys: Sequence[str], first_document_id: int) -> list:
    """Per sequence, the keys of the documents it holds, in order (padding left out)."""
    out = []
    for row in document_ids:
        ids = row[row != PAD_DOCUMENT]
        starts = np.flatnonzero(np.diff(ids, prepend=-2))
        out.append([keys[int(i) - first_document_id] for i in ids[starts]])
    return out


def packed_table(packed: PackedSequences, keys: Sequence[str], first_document_id: int) -> pa.Table:
    """The Parquet table of ``packed``; ``keys[i]`` is the key of document ``first_document_id + i``."""
    columns = {
        "input_ids": fixed_lists(packed.tokens),
        "position_ids": fixed_lists(packed.position_ids),
        "document_ids": fixed_lists(packed.document_ids),
        "keys": pa.array(sequence_keys(packed.document_ids, keys, first_document_id), pa.list_(pa.string())),
    }
    return pa.table(columns, schema=PACKED_SCHEMA)
