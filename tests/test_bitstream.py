"""Bitstream container: round trip, and every truncation or damage raises a clear error."""

import numpy as np
import pytest

from operators.compression.bitstream import BitstreamError, StreamBudgetExceeded, StreamHeader, pack, unpack
from operators.compression.codec import FeatureCodec, UnknownTablesError
from operators.compression.tables import fit_tables


def header(**changes):
    base = StreamHeader("float32", (4, 3, 2), 0, "uniform", 4, 2, 24, b"abcdefgh")
    return base._replace(**changes)


def test_pack_unpack_round_trip():
    for h in (header(), header(channel_axis=None, tables_id=b"", shape=()), header(kind="codebook", dtype="float16")):
        sections = [b"", b"xyz", bytes(range(256))]
        got_header, got_sections = unpack(pack(h, sections))
        assert got_header == h and got_sections == sections


def test_every_truncation_raises():
    stream = pack(header(), [b"params", b"\x01" * 40])
    for cut in range(len(stream)):
        with pytest.raises(BitstreamError, match="truncated|magic"):
            unpack(stream[:cut])


def test_every_single_bit_flip_raises():
    stream = pack(header(), [b"params", b"\x01" * 20])
    for byte in range(len(stream)):
        for bit in (0, 3, 7):
            damaged = bytearray(stream)
            damaged[byte] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(damaged))


def test_foreign_version_and_trailing_bytes_are_named():
    stream = pack(header(), [b"a"])
    with pytest.raises(BitstreamError, match="not a mediabeam feature stream"):
        unpack(b"PK\x03\x04" + stream[4:])
    with pytest.raises(BitstreamError, match="version 9"):
        unpack(stream[:4] + b"\x09" + stream[5:])
    with pytest.raises(BitstreamError, match="trailing"):
        unpack(stream + b"\x00")


@pytest.fixture(scope="module")
def shared_codec():
    rng = np.random.default_rng(0)
    samples = [np.maximum(rng.normal(size=(4, 6, 6)), 0).astype(np.float32) for _ in range(4)]
    return FeatureCodec(fit_tables(samples, bits=(4,), codebook_sizes=(8,), codebook_groups=2)), samples[0]


@pytest.mark.parametrize("rate", [{"bits": 4}, {"bits": 3}, {"codebook_size": 8}])
def test_codec_never_returns_data_from_damaged_streams(shared_codec, rate):
    codec, x = shared_codec
    stream = codec.encode(x, **rate)
    expected = codec.decode(stream)
    rng = np.random.default_rng(1)
    for position in rng.choice(len(stream), 60, replace=False):
        damaged = bytearray(stream)
        damaged[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(BitstreamError):
            codec.decode(bytes(damaged))
    for cut in rng.choice(len(stream), 20, replace=False):
        with pytest.raises(BitstreamError):
            codec.decode(stream[:cut])
    np.testing.assert_array_equal(codec.decode(stream), expected)


def test_unknown_tables_are_reported(shared_codec):
    codec, x = shared_codec
    with pytest.raises(UnknownTablesError, match="load the table file"):
        FeatureCodec().decode(codec.encode(x, bits=4))


def test_hostile_header_with_valid_checksum_is_refused_before_allocating(shared_codec):
    codec, x = shared_codec
    header, sections = unpack(codec.encode(x, bits=4))
    huge = header._replace(shape=(4, 1 << 14, 1 << 14), n_symbols=1 << 30)
    refusal = r"budget decoded_bytes=1073741824 exceeded: .* \(4294967296 bytes\)"
    with pytest.raises(StreamBudgetExceeded, match=refusal):
        codec.decode(pack(huge, sections))
    roomy = FeatureCodec(codec.tables, decoded_bytes=1 << 40)
    with pytest.raises(BitstreamError, match="cannot fit"):
        roomy.decode(pack(huge, sections))
