"""FitCodecTables: quantisers and per-channel priors fitted over the whole input.

A combine gathers the feature statistics (and, for codebooks, a fixed-size sample of channel
vectors), the quantisers are calibrated from them, and a second combine sums the symbol
histograms those quantisers produce; the result is one serialised ``CodecTables`` that every
worker then codes with (bit-identical tables everywhere).
"""

import zlib
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
import numpy as np

from operators.compression.priors import DEFAULT_PRECISION
from operators.compression.quantize import (
    channel_vectors,
    feature_stats,
    fit_codebook,
    merge_stats,
)
from operators.compression.tables import (
    build_tables,
    calibrate_quantizers,
    rate_key,
    record_histograms,
)
from schemas.features import FeatureRecord


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
