"""RoundTrip: one sample's features coded, decoded and measured at every rate, all or nothing.

The job's output has one row per sample and rate, but its accounting is per sample: a sample
is either all its rows or exactly one dead letter. This step runs ``CompressFn``,
``DecompressFn`` and ``MeasureQualityFn`` back to back on one record (no shuffle of the
rates between them) and keeps the rows only if every rate succeeded.
"""

from typing import Iterator, List, Optional

import apache_beam as beam

from schemas.features import FeatureRecord, FeatureRow, SampleFeatures
from transforms.compression.codec import CompressFn, DecompressFn
from transforms.compression.split_model import MeasureQualityFn


class RoundTripFn(beam.DoFn):
    """``FeatureRecord`` → one ``SampleFeatures`` (a ``FeatureRow`` per rate), or the first dead
    letter of the record.

    Takes the serialised tables (or None: inline coding) as a side input.

    Args:
        compress: Codes a record at every rate.
        decompress: Decodes one coded rate.
        measure: Runs the rest of the model on decoded features.
    """

    def __init__(self, compress: CompressFn, decompress: DecompressFn, measure: MeasureQualityFn):
        self._compress, self._decompress, self._measure = compress, decompress, measure

    def setup(self) -> None:
        for fn in (self._compress, self._decompress, self._measure):
            fn.setup()

    def process(self, record: FeatureRecord, tables: Optional[bytes]) -> Iterator:
        rows: List[FeatureRow] = []
        for compressed in self._compress.process(record, tables):
            if isinstance(compressed, beam.pvalue.TaggedOutput):
                yield compressed
                return
            for decoded in self._decompress.process(compressed, tables):
                if isinstance(decoded, beam.pvalue.TaggedOutput):
                    yield decoded
                    return
                rows.extend(self._measure.process(decoded))
        yield SampleFeatures(record.key, record.source, tuple(rows))
