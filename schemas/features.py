"""Compressed-feature records and the Parquet table of the compress-features job."""

from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import pyarrow as pa

from schemas.tables import TableSpec


class FeatureRecord(NamedTuple):
    """Features of one sample at the split point, with the uncompressed model output.

    Attributes:
        key: WebDataset ``__key__``.
        source: Shard the sample came from.
        features: float32 features of this sample (no batch axis), channels first.
        reference: float32 model output computed from the uncompressed features.
    """

    key: str
    source: str
    features: np.ndarray
    reference: np.ndarray


class CompressedRecord(NamedTuple):
    """One sample's features coded at one rate.

    Attributes:
        key: WebDataset ``__key__``.
        source: Shard the sample came from.
        rate: Rate key (``"u4"`` = 4-bit uniform, ``"vq256"`` = 256-code codebook).
        stream: The self-describing compressed stream.
        num_elements: Feature elements coded.
        reference: float32 model output on the uncompressed features (for quality).
    """

    key: str
    source: str
    rate: str
    stream: bytes
    num_elements: int
    reference: np.ndarray


class DecodedRecord(NamedTuple):
    """A ``CompressedRecord`` after decoding: ``features`` are the decoded tensor."""

    key: str
    source: str
    rate: str
    stream: bytes
    features: np.ndarray
    reference: np.ndarray


class FeatureRow(NamedTuple):
    """One row of the compressed-feature table (see ``FEATURES_SCHEMA``)."""

    key: str
    source: str
    split_at: str
    rate: str
    quantizer: str
    bits: int
    shape: Tuple[int, ...]
    num_elements: int
    num_bytes: int
    bits_per_element: float
    top1_agree: bool
    max_abs_diff: float
    tables_id: str
    stream: bytes


FEATURES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split_at", pa.string(), nullable=False),
        pa.field("rate", pa.string(), nullable=False),
        pa.field("quantizer", pa.string(), nullable=False),
        pa.field("bits", pa.int32(), nullable=False),
        pa.field("shape", pa.list_(pa.int32()), nullable=False),
        pa.field("num_elements", pa.int64(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("bits_per_element", pa.float64(), nullable=False),
        pa.field("top1_agree", pa.bool_(), nullable=False),
        pa.field("max_abs_diff", pa.float64(), nullable=False),
        pa.field("tables_id", pa.string(), nullable=False),
        pa.field("stream", pa.binary(), nullable=False),
    ],
    metadata={"mediabeam.table": "compressed_features", "mediabeam.schema_version": "1"},
)
"""``bits`` is the uniform bit depth, or ceil(log2(size)) for a codebook rate; ``tables_id``
is the hex id of the shared tables (empty for inline-coded streams); ``stream`` decodes with
``operators.compression.codec.FeatureCodec(CodecTables.load(<output>/tables.bin)).decode``."""


class SampleFeatures(NamedTuple):
    """Every row of one sample (one per rate): the unit a shard's accounting counts.

    Attributes:
        key: The sample's key.
        source: Shard the sample came from.
        rows: Its ``FeatureRow`` per rate.
    """

    key: str
    source: str
    rows: Tuple[FeatureRow, ...]


def feature_table(samples: Sequence[SampleFeatures]) -> pa.Table:
    """One table row per sample and rate (in the given order)."""
    rows = [row for sample in samples for row in sample.rows]
    columns = {name: [getattr(r, name) for r in rows] for name in FEATURES_SCHEMA.names}
    columns["shape"] = [list(r.shape) for r in rows]
    return pa.table(columns, schema=FEATURES_SCHEMA)


def feature_samples(table: pa.Table) -> List[SampleFeatures]:
    """The inverse of :func:`feature_table`: rows grouped back into samples."""
    samples: Dict[Tuple[str, str], List[FeatureRow]] = {}
    for record in table.to_pylist():
        row = FeatureRow(**{**{name: record[name] for name in FeatureRow._fields}, "shape": tuple(record["shape"])})
        samples.setdefault((row.source, row.key), []).append(row)
    return [SampleFeatures(key, source, tuple(rows)) for (source, key), rows in samples.items()]


def _sample_order(sample: SampleFeatures) -> Tuple[str, Tuple[Tuple[str, bytes], ...]]:
    """By key; two samples under one key (a hostile shard may repeat one) by their streams."""
    return sample.key, tuple((r.rate, r.stream) for r in sample.rows)


def _sample_fields(samples: Sequence[SampleFeatures]) -> Dict[str, Any]:
    return {"feature_rows": sum(len(s.rows) for s in samples),
            "stream_bytes": int(sum(r.num_bytes for s in samples for r in s.rows))}


FEATURES_TABLE = TableSpec(
    name="features",
    schema=FEATURES_SCHEMA,
    to_table=feature_table,
    from_table=feature_samples,
    sort_key=_sample_order,
    manifest_fields=_sample_fields,
)
"""``<output>/features/<shard name>-00000.parquet``: one table row per sample and rate; the
sink's rows are ``SampleFeatures`` (one per sample), so ``rows`` in a manifest counts samples."""
