"""Training exports of a corpus: what the export stage reads and what it writes.

The stage reads the ``documents`` table (``DOCUMENT_COLUMNS``, the contract with the corpus
job) and ``__vocab.json``, and writes, under ``<output>/__export/``, one part per export shard in
each format (see ``docs/exports.md``). The ``__`` prefix keeps the packed exports out of what
Parquet readers pointed at the output read: there they see the documents alone.
"""

from typing import Dict, NamedTuple, Tuple

import numpy as np
import pyarrow as pa

DOCUMENT_COLUMNS = ("key", "source", "tokens")
"""Columns of the documents table the export reads."""
EXPORT_DIR = "__export"
EXPORT_FORMATS = ("megatron", "mds", "parquet")
STATS_FILE = "stats.json"
"""Per-export figures (``<output>/__export/stats.json``; also in ``summary.json``)."""


class ExportDocument(NamedTuple):
    """One document on its way to the exports.

    Attributes:
        key: The document's key (the sample's ``__key__``).
        source: The input shard it came from (breaks ties between equal keys).
        tokens: Its tokens in the global vocabulary (1-D int32).
    """

    key: str
    source: str
    tokens: np.ndarray


class ExportShardStats(NamedTuple):
    """What one export shard wrote.

    Attributes:
        shard: Export shard index.
        documents: Documents in the shard.
        sequences: Packed sequences.
        tokens: Document tokens.
        padding: Padding tokens in the packed sequences.
        files: Files written, relative to ``<output>/__export``.
        mds_shards: The shard entries of the shard's MDS ``index.json`` (basenames relative
            to the MDS folder), for the root index.
    """

    shard: int
    documents: int
    sequences: int
    tokens: int
    padding: int
    files: Tuple[str, ...]
    mds_shards: Tuple[Dict, ...]


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest token dtype for ``vocab_size`` ids, as Megatron-core chooses it
    (``DType.optimal_dtype``: uint16 below 65500, else int32)."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


PACKED_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("document_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("keys", pa.list_(pa.string()), nullable=False),
    ],
    metadata={"mediabeam.table": "packed", "mediabeam.schema_version": "1"},
)
"""One packed sequence per row: ``input_ids``, ``position_ids`` and ``document_ids`` of
``seq_len`` each, and the keys of the documents it holds, in order."""


def mds_columns(seq_len: int, dtype: np.dtype) -> Dict[str, str]:
    """MDS column encodings of a packed sequence (fixed shapes: no per-sample header).

    ``tokens`` is the column name llm-foundry's ``StreamingTextDataset`` reads.
    """
    return {
        "tokens": f"ndarray:{np.dtype(dtype).name}:{seq_len}",
        "position_ids": f"ndarray:int32:{seq_len}",
        "document_ids": f"ndarray:int32:{seq_len}",
    }
