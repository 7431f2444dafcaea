"""MosaicML MDS shards: ``shard.NNNNN.mds`` files and their ``index.json``.

Read by ``streaming.StreamingDataset`` (mosaicml-streaming's ``MDSReader``). Every column of
a packed sequence has a fixed shape, so a sample is its columns' bytes in sorted column-name
order with no size header. A shard file is, little-endian::

    sample count u32   offsets u32[count + 1] (absolute, into this file)   config JSON   samples

and ``index.json`` is ``{"version": 2, "shards": [<config> + samples, raw_data, zip_data]}``
(uncompressed, no hashes), as ``MDSWriter`` writes them. Basenames may include a folder, so
one root ``index.json`` lists the shards of every export shard's sub-folder.
"""

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

SIZE_LIMIT = 1 << 26
"""Most bytes in one ``.mds`` file (MDSWriter's default, 64 MiB)."""
INDEX_FILE = "index.json"


def shard_config(columns: Mapping[str, str], sizes: Mapping[str, int]) -> Dict[str, Any]:
    """The writer configuration MDS stores in every shard file and index entry."""
    names = sorted(columns)
    return {
        "version": 2,
        "format": "mds",
        "compression": None,
        "hashes": [],
        "size_limit": SIZE_LIMIT,
        "column_names": names,
        "column_encodings": [columns[n] for n in names],
        "column_sizes": [sizes[n] for n in names],
    }


def encode_shards(
    columns: Mapping[str, str], arrays: Mapping[str, np.ndarray]
) -> List[Tuple[str, bytes, Dict[str, Any]]]:
    """Encodes fixed-shape samples into MDS shard files of at most :data:`SIZE_LIMIT` bytes.

    Args:
        columns: Column name → MDS encoding (``ndarray:<dtype>:<length>``).
        arrays: Column name → ``[num_samples, ...]`` array whose rows match the encoding.

    Returns:
        ``(file name, bytes, index entry)`` per shard file, in order.
    """
    names = sorted(columns)
    rows = [np.ascontiguousarray(arrays[n]).reshape(len(arrays[n]), -1) for n in names]
    count = len(rows[0]) if rows else 0
    if any(len(r) != count for r in rows):
        raise ValueError("every MDS column needs the same number of samples")
    body = np.concatenate([r.astype(r.dtype.newbyteorder("<")).view(np.uint8) for r in rows], axis=1)
    sizes = {n: r.shape[1] * r.dtype.itemsize for n, r in zip(names, rows)}
    config = shard_config(columns, sizes)
    config_bytes = json.dumps(config, sort_keys=True).encode("utf-8")
    sample_size = body.shape[1]
    per_file = max(1, (SIZE_LIMIT - 8 - len(config_bytes)) // (sample_size + 4))
    out = []
    for number, start in enumerate(range(0, count, per_file)):
        chunk = body[start : start + per_file]
        head = 4 + 4 * (len(chunk) + 1) + len(config_bytes)
        offsets = head + sample_size * np.arange(len(chunk) + 1, dtype=np.int64)
        data = b"".join([np.array([len(chunk)], "<u4").tobytes(), offsets.astype("<u4").tobytes(), config_bytes,
                         chunk.tobytes()])
        name = f"shard.{number:05d}.mds"
        entry = dict(config, samples=len(chunk), zip_data=None,
                     raw_data={"basename": name, "bytes": len(data), "hashes": {}})
        out.append((name, data, entry))
    return out


def in_folder(entries: Sequence[Mapping[str, Any]], folder: str) -> List[Dict[str, Any]]:
    """Index entries with ``folder/`` put before their basenames (for a root index)."""
    return [dict(e, raw_data=dict(e["raw_data"], basename=f"{folder}/{e['raw_data']['basename']}")) for e in entries]


def index_json(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """``index.json`` bytes listing ``entries`` in order."""
    return json.dumps({"version": 2, "shards": list(entries)}, sort_keys=True).encode("utf-8")
