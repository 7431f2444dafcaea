"""The ``fit-tokenizer`` feature table: the training rows of each sample, one row per sample.

``fit-tokenizer`` writes these per input shard through ``ShardSink`` (``<output>/features/``),
so a resumed or retried fit reloads the finished shards' rows instead of decoding their media
again, and the k-means always sees every sample.
"""

from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import pyarrow as pa

from schemas.tables import TableSpec


class FitFeatureRow(NamedTuple):
    """The training rows one sample contributes to a codebook fit.

    Attributes:
        key: Sample key.
        source: Shard (or folder) the sample came from.
        modality: ``audio`` or ``image``.
        features: Feature rows ``[N, D]`` float32 (audio: semantic features; image: joint features).
        targets: Audio mel targets ``[N, G]`` float32 (``[N, 0]`` for images).
    """

    key: str
    source: str
    modality: str
    features: np.ndarray
    targets: np.ndarray


FIT_FEATURES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("num_rows", pa.int32(), nullable=False),
        pa.field("feature_dim", pa.int32(), nullable=False),
        pa.field("target_dim", pa.int32(), nullable=False),
        pa.field("features", pa.list_(pa.float32()), nullable=False),
        pa.field("targets", pa.list_(pa.float32()), nullable=False),
    ],
    metadata={"mediabeam.table": "features", "mediabeam.schema_version": "1"},
)


def _flat_lists(arrays: Sequence[np.ndarray]) -> pa.ListArray:
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))


def fit_features_table(rows: Sequence[FitFeatureRow]) -> pa.Table:
    """Rows to a ``FIT_FEATURES_SCHEMA`` table (arrays flattened, shapes kept as columns)."""
    return pa.table({
        "key": [r.key for r in rows],
        "source": [r.source for r in rows],
        "modality": [r.modality for r in rows],
        "num_rows": [int(r.features.shape[0]) for r in rows],
        "feature_dim": [int(r.features.shape[1]) for r in rows],
        "target_dim": [int(r.targets.shape[1]) for r in rows],
        "features": _flat_lists([r.features for r in rows]),
        "targets": _flat_lists([r.targets for r in rows]),
    }, schema=FIT_FEATURES_SCHEMA)


def _unflatten(column: pa.ChunkedArray, i: int, shape: Tuple[int, int]) -> np.ndarray:
    return np.asarray(column[i].values.to_numpy(zero_copy_only=False), np.float32).reshape(shape)


def fit_feature_rows(table: pa.Table) -> List[FitFeatureRow]:
    """The inverse of :func:`fit_features_table`."""
    data = {name: table.column(name) for name in FIT_FEATURES_SCHEMA.names}
    meta = table.select(["key", "source", "modality", "num_rows", "feature_dim", "target_dim"]).to_pylist()
    return [
        FitFeatureRow(m["key"], m["source"], m["modality"],
                      _unflatten(data["features"], i, (m["num_rows"], m["feature_dim"])),
                      _unflatten(data["targets"], i, (m["num_rows"], m["target_dim"])))
        for i, m in enumerate(meta)
    ]


def fit_features_sort_key(row: FitFeatureRow) -> Tuple[str, bytes]:
    """Rows by key (then content, so duplicate keys sort the same on every run)."""
    return row.key, row.features.tobytes()


def fit_features_manifest_fields(rows: Sequence[FitFeatureRow]) -> Dict[str, Any]:
    """Per shard: training rows contributed per modality."""
    out: Dict[str, int] = {}
    for r in rows:
        out[r.modality] = out.get(r.modality, 0) + int(r.features.shape[0])
    return {"feature_rows_by_modality": dict(sorted(out.items()))}


FIT_FEATURES_TABLE = TableSpec(
    name="features",
    schema=FIT_FEATURES_SCHEMA,
    to_table=fit_features_table,
    from_table=fit_feature_rows,
    sort_key=fit_features_sort_key,
    manifest_fields=fit_features_manifest_fields,
)
