"""CompressFeatures / DecompressFeatures: code features at every rate with shared tables.

The serialised ``CodecTables`` (from ``FitCodecTables`` or a previous run's ``tables.bin``)
is a singleton side input, so every worker codes with the same tables; without tables each
record is coded inline. Failures become dead letters.
"""

from typing import Iterator, Optional, Sequence

import apache_beam as beam

from operators.compression.codec import FeatureCodec
from operators.compression.tables import CodecTables, rate_key
from schemas.features import CompressedRecord, DecodedRecord, FeatureRecord
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter

NAMESPACE = "compress"


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
