"""Beam wrappers for feature compression: table fitting, compress, decompress, quality.

``FitCodecTables`` fits quantisers and per-channel priors over the whole dataset (a combine
for the statistics, a second for the symbol histograms) and yields one serialised
``CodecTables``; ``CompressFeatures`` / ``DecompressFeatures`` use it as a side input, so every
worker codes with bit-identical tables. Failures become dead letters.
"""

import zlib
from typing import Dict, Iterator, List, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import torch
from apache_beam.io.filesystems import FileSystems

from operators.compression.bitstream import unpack
from operators.compression.codec import (
    CodecTables,
    FeatureCodec,
    build_tables,
    calibrate_quantizers,
    rate_key,
    record_histograms,
)
from operators.compression.priors import DEFAULT_PRECISION
from operators.compression.quantize import channel_vectors, feature_stats, fit_codebook, merge_stats
from operators.compression.split_compute import INPUT_SIZE, forward_with_features, load_model, sample_quality, tail
from operators.media.decode import decode_image
from operators.tokenizers.base import MediaError, first_member
from schemas.common import MediaSample
from schemas.features import FEATURES_SCHEMA, CompressedRecord, DecodedRecord, FeatureRecord, FeatureRow
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.io.write_shards import by_source, dead_letter_table, parquet_bytes, shard_stem, write_atomic

NAMESPACE = "compress"
TABLES_FILE = "tables.bin"


class FeatureStatsFn(beam.CombineFn):
    """Merges per-channel ``FeatureStats`` of ``FeatureRecord`` features (None if empty)."""

    def __init__(self, channel_axis: Optional[int]):
        self._axis = channel_axis

    def create_accumulator(self):
        return None

    def add_input(self, acc, record: FeatureRecord):
        stats = feature_stats(record.features, self._axis)
        return stats if acc is None else merge_stats(acc, stats)

    def merge_accumulators(self, accumulators):
        merged = None
        for acc in accumulators:
            if acc is not None:
                merged = acc if merged is None else merge_stats(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


class SumHistogramsFn(beam.CombineFn):
    """Sums ``{rate key: counts}`` dictionaries."""

    def create_accumulator(self) -> Dict[str, np.ndarray]:
        return {}

    def add_input(self, acc: Dict[str, np.ndarray], counts: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        for key, value in counts.items():
            acc[key] = acc[key] + value if key in acc else value.copy()
        return acc

    def merge_accumulators(self, accumulators) -> Dict[str, np.ndarray]:
        merged: Dict[str, np.ndarray] = {}
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return acc


def _quantizers(stats, vectors, bits, codebook_sizes, codebook_groups, clip_sigmas, seed):
    if stats is None:
        return {}
    quantizers = dict(calibrate_quantizers(stats, bits, clip_sigmas))
    for size in codebook_sizes:
        quantizers[rate_key(codebook_size=size)] = fit_codebook(np.concatenate(vectors), size, codebook_groups, seed=seed)
    return quantizers


def _histograms(record: FeatureRecord, quantizers, channel_axis, outliers):
    return record_histograms(record.features, quantizers, channel_axis, outliers)


def _tables(counts, quantizers, channel_axis, precision) -> bytes:
    return build_tables(quantizers, counts, channel_axis, precision).to_bytes()


def _sample_vectors(record: FeatureRecord, channel_axis: int, per_record: int, seed: int) -> List[np.ndarray]:
    vectors = channel_vectors(record.features, channel_axis)
    rng = np.random.default_rng([seed, zlib.crc32(record.key.encode())])
    return [vectors[rng.choice(len(vectors), min(per_record, len(vectors)), replace=False)]]


class FitCodecTables(beam.PTransform):
    """``FeatureRecord``s → one serialised ``CodecTables`` (bytes), fitted over all of them.

    Args:
        bits: Uniform bit depths to prepare.
        codebook_sizes: Codebook sizes to prepare (k-means on a sample of channel vectors).
        channel_axis: Channel axis of each record's features.
        granularity: ``"channel"`` or ``"tensor"`` uniform quantisers.
        clip_sigmas: Clip the uniform range at mean ± this many std (outliers escape).
        codebook_groups: Channel groups per codebook.
        codebook_sample: Channel vectors kept for k-means.
        outliers: ``"escape"`` or ``"clip"``.
        precision: Prior precision in bits.
        seed: k-means and sampling seed.
    """

    def __init__(
        self,
        bits: Sequence[int] = (2, 4, 6, 8),
        codebook_sizes: Sequence[int] = (),
        channel_axis: int = 0,
        granularity: str = "channel",
        clip_sigmas: Optional[float] = None,
        codebook_groups: int = 1,
        codebook_sample: int = 20_000,
        outliers: str = "escape",
        precision: int = DEFAULT_PRECISION,
        seed: int = 0,
    ):
        super().__init__()
        self._bits = list(bits)
        self._sizes = list(codebook_sizes)
        self._axis = channel_axis
        self._stats_axis = channel_axis if granularity == "channel" else None
        self._clip = clip_sigmas
        self._groups = codebook_groups
        self._sample = codebook_sample
        self._outliers = outliers
        self._precision = precision
        self._seed = seed

    def expand(self, records):
        stats = records | "FeatureStats" >> beam.CombineGlobally(FeatureStatsFn(self._stats_axis))
        if self._sizes:
            vectors = (
                records
                | "SampleVectors" >> beam.FlatMap(_sample_vectors, self._axis, 64, self._seed)
                | "KeepVectors" >> beam.combiners.Sample.FixedSizeGlobally(max(self._sample // 64, 1))
            )
        else:
            vectors = records.pipeline | "NoVectors" >> beam.Create([[]])
        quantizers = stats | "Calibrate" >> beam.Map(
            _quantizers,
            beam.pvalue.AsSingleton(vectors),
            self._bits,
            self._sizes,
            self._groups,
            self._clip,
            self._seed,
        )
        quantizers_side = beam.pvalue.AsSingleton(quantizers)
        counts = (
            records
            | "SymbolHistograms" >> beam.Map(_histograms, quantizers_side, self._axis, self._outliers)
            | "SumHistograms" >> beam.CombineGlobally(SumHistogramsFn())
        )
        return counts | "BuildTables" >> beam.Map(_tables, quantizers_side, self._axis, self._precision)


class _CodecFn(beam.DoFn):
    """Base for DoFns that need a codec built from the tables side input (cached per table)."""

    def __init__(self, channel_axis: int):
        self._axis = channel_axis
        self._codec: Optional[FeatureCodec] = None
        self._tables_bytes: Optional[bytes] = None

    def _codec_for(self, tables_bytes: Optional[bytes]) -> FeatureCodec:
        if self._codec is None or tables_bytes != self._tables_bytes:
            tables = CodecTables.from_bytes(tables_bytes) if tables_bytes else None
            self._codec = FeatureCodec(tables, channel_axis=self._axis)
            self._tables_bytes = tables_bytes
        return self._codec


class CompressFn(_CodecFn):
    """``FeatureRecord`` → one ``CompressedRecord`` per rate, or one dead letter."""

    def __init__(self, bits: Sequence[int], codebook_sizes: Sequence[int], channel_axis: int):
        super().__init__(channel_axis)
        self._rates = [(b, None) for b in bits] + [(None, k) for k in codebook_sizes]

    def process(self, record: FeatureRecord, tables: Optional[bytes]) -> Iterator:
        codec = self._codec_for(tables)
        try:
            out = [
                CompressedRecord(
                    record.key,
                    record.source,
                    rate_key(b, k),
                    codec.encode(record.features, bits=b, codebook_size=k),
                    int(record.features.size),
                    record.reference,
                )
                for b, k in self._rates
            ]
        except (ValueError, MemoryError) as error:
            count(NAMESPACE, "compress_failed")
            yield dead_letter(record.key, record.source, "CompressFeatures", error)
            return
        count(NAMESPACE, "records_compressed")
        yield from out


class DecompressFn(_CodecFn):
    """``CompressedRecord`` → ``DecodedRecord``, or a dead letter for a bad stream."""

    def process(self, record: CompressedRecord, tables: Optional[bytes]) -> Iterator:
        try:
            features = self._codec_for(tables).decode(record.stream)
        except ValueError as error:
            count(NAMESPACE, "decompress_failed")
            yield dead_letter(record.key, record.source, "DecompressFeatures", error)
            return
        yield DecodedRecord(record.key, record.source, record.rate, record.stream, features, record.reference)


def _tables_side_input(tables, records):
    """The tables as a singleton side input; without tables, a ``None`` one (inline coding)."""
    if tables is None:
        tables = records.pipeline | "NoTables" >> beam.Create([None])
    return beam.pvalue.AsSingleton(tables)


class CompressFeatures(beam.PTransform):
    """``FeatureRecord``s → ``CompressedRecord``s (main output) + dead letters.

    Args:
        tables: Singleton PCollection of serialised ``CodecTables`` (``FitCodecTables``), or
            None to code every record inline.
        bits: Uniform bit depths, one output per depth per record.
        codebook_sizes: Codebook sizes (need tables), one output per size per record.
        channel_axis: Channel axis of the features.
    """

    def __init__(self, tables, bits: Sequence[int], codebook_sizes: Sequence[int] = (), channel_axis: int = 0):
        super().__init__()
        self._tables = tables
        self._fn = CompressFn(bits, codebook_sizes, channel_axis)

    def expand(self, records):
        return records | "Compress" >> beam.ParDo(self._fn, _tables_side_input(self._tables, records)).with_outputs(
            DEAD_LETTER_TAG, main="compressed"
        )


class DecompressFeatures(beam.PTransform):
    """``CompressedRecord``s → ``DecodedRecord``s (main output) + dead letters."""

    def __init__(self, tables, channel_axis: int = 0):
        super().__init__()
        self._tables = tables
        self._fn = DecompressFn(channel_axis)

    def expand(self, records):
        return records | "Decompress" >> beam.ParDo(self._fn, _tables_side_input(self._tables, records)).with_outputs(
            DEAD_LETTER_TAG, main="decoded"
        )


def image_tensor(data: bytes, size: int = INPUT_SIZE) -> np.ndarray:
    """Decodes an image and resizes it to a ``[3, size, size]`` float32 tensor in [0, 1]."""
    image = decode_image(data).resize((size, size))
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0


class _SplitModelFn(beam.DoFn):
    """Base for DoFns that run the split model: it loads once per worker in ``setup`` from a
    local state dict (never at graph construction)."""

    def __init__(self, model_path: Optional[str], layer: str):
        self._model_path = model_path
        self._layer = layer
        self._model = None

    def setup(self):
        torch.set_num_threads(1)
        self._model = load_model(self._model_path)


class ExtractFeaturesFn(_SplitModelFn):
    """``MediaSample`` (first image member) → ``FeatureRecord`` at the split layer."""

    def process(self, sample: MediaSample) -> Iterator:
        member = first_member(sample.members, "image")
        try:
            if member is None:
                raise MediaError(f"sample has no image member (members: {sorted(sample.members)})")
            x = torch.from_numpy(image_tensor(member[1])[None])
            features, output = forward_with_features(self._model, self._layer, x)
        except MediaError as error:
            count(NAMESPACE, "extract_failed")
            yield dead_letter(sample.key, sample.source, "ExtractFeatures", error)
            return
        yield FeatureRecord(sample.key, sample.source, features[0], output[0])


class MeasureQualityFn(_SplitModelFn):
    """``DecodedRecord`` → ``FeatureRow``: runs the rest of the model on decoded features."""

    def process(self, record: DecodedRecord) -> Iterator:
        probe = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        output = tail(self._model, self._layer, probe, record.features[None])[0]
        same, diff = sample_quality(record.reference, output)
        codebook = record.rate.startswith("vq")
        rate = int(record.rate.lstrip("uvq"))
        yield FeatureRow(
            key=record.key,
            source=record.source,
            split_at=self._layer,
            rate=record.rate,
            quantizer="codebook" if codebook else "uniform",
            bits=int(np.ceil(np.log2(rate))) if codebook else rate,
            shape=tuple(int(d) for d in record.features.shape),
            num_elements=int(record.features.size),
            num_bytes=len(record.stream),
            bits_per_element=8.0 * len(record.stream) / max(record.features.size, 1),
            top1_agree=bool(same),
            max_abs_diff=diff,
            tables_id=unpack(record.stream)[0].tables_id.hex(),
            stream=record.stream,
        )


def _write_part(element, output_dir: str) -> int:
    source, rows = element
    rows = sorted(rows, key=lambda r: (r.key, r.rate))
    table = pa.table({name: [getattr(r, name) for r in rows] for name in FEATURES_SCHEMA.names}, schema=FEATURES_SCHEMA)
    write_atomic(FileSystems.join(output_dir, "features", shard_stem(source) + ".parquet"), parquet_bytes(table))
    return len(rows)


def _write_dead_letters(dead: List, output_dir: str) -> int:
    write_atomic(FileSystems.join(output_dir, "dead_letters.parquet"), parquet_bytes(dead_letter_table(dead)))
    return len(dead)


def _write_tables(tables: Optional[bytes], output_dir: str) -> int:
    write_atomic(FileSystems.join(output_dir, TABLES_FILE), tables or CodecTables([]).to_bytes())
    return 1


class WriteCompressedFeatures(beam.PTransform):
    """Writes ``features/<shard>.parquet`` (``FEATURES_SCHEMA``), ``dead_letters.parquet`` and
    the codec tables ``tables.bin`` under ``output_dir``, each atomically.

    Apply to a dict ``{"rows": FeatureRow PCollection, DEAD_LETTER_TAG: ..., "tables": ...}``.
    """

    def __init__(self, output_dir: str):
        super().__init__()
        self._output = output_dir

    def expand(self, inputs):
        parts = (
            inputs["rows"]
            | "KeyBySource" >> beam.Map(by_source)
            | "GroupBySource" >> beam.GroupByKey()
            | "WriteFeatureParts" >> beam.Map(_write_part, self._output)
        )
        dead = (
            inputs[DEAD_LETTER_TAG]
            | "CollectDeadLetters" >> beam.combiners.ToList()
            | "WriteDeadLetters" >> beam.Map(_write_dead_letters, self._output)
        )
        tables = inputs["tables"] | "WriteTables" >> beam.Map(_write_tables, self._output)
        return (parts, dead, tables) | "WritesDone" >> beam.Flatten()
