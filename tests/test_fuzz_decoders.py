"""Fuzzing the decoders of untrusted token and bitstream payloads (hypothesis, derandomized).

Streams are mutated from valid ones: bit flips, truncation, and header field overwrites with the
checksum recomputed (so the damage gets past the CRC into the parser). Properties:

* only the documented error types escape (``BitstreamError`` for feature streams, ``MediaError``
  for token decoders, budget refusals being subclasses of both);
* no silent wrong result: a decode that succeeds either reproduces the original, or decodes a
  stream that passed every consistency check (checksum, sizes, rANS end state) to the shape
  and length its header declares;
* memory: the feature codec's traced peak stays under a small multiple of its ``decoded_bytes``
  budget, and hostile headers are refused before allocating (checked with ``RLIMIT_AS`` in a
  subprocess);
* time: every example under 10 s (hypothesis ``deadline``).

``MEDIABEAM_FUZZ_EXAMPLES=N`` raises the number of examples per property (default: a few dozen,
so this file runs in well under a minute).
"""

import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from operators.compression.bitstream import BitstreamError, unpack
from operators.compression.codec import FeatureCodec
from operators.compression.tables import fit_tables
from operators.tokenizers.base import MediaError
from operators.tokenizers.byte_tokens import BOS, EOS, bytes_to_tokens, tokens_to_bytes
from operators.tokenizers.jpeg import JpegTokenizer
from operators.tokenizers.opus import OpusTokenizer, opus_packet_samples, unpack_packets

EXAMPLES = int(os.environ.get("MEDIABEAM_FUZZ_EXAMPLES", "0"))
BUDGET = 8 << 20


def fuzz_settings(default: int):
    return settings(max_examples=EXAMPLES or default, derandomize=True, deadline=10_000, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def with_crc(stream: bytes) -> bytes:
    """Recomputes the feature stream's length and CRC-32 after a mutation."""
    body = bytearray(stream[:-4])
    body[5:9] = struct.pack("<I", len(body) + 4)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def mutate(data: bytes, draw, header_bytes: int) -> tuple[bytes, str]:
    """One mutation of ``data``: ``(mutated, kind)``."""
    kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "extend"]))
    out = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(out) - 1))
            out[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        out = out[: draw(st.integers(0, len(out) - 1))]
    elif kind == "overwrite":
        position = draw(st.integers(0, min(header_bytes, len(out) - 1)))
        value = draw(st.sampled_from([b"\x00", b"\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x40", b"\x7f", b"\x80"]))
        out[position : position + len(value)] = value
    else:
        out += draw(st.binary(min_size=1, max_size=64))
    return bytes(out), kind


@pytest.fixture(scope="module")
def feature_streams():
    rng = np.random.default_rng(0)
    samples = [rng.normal(size=(8, 6, 5)).astype(np.float32) for _ in range(4)]
    tables = fit_tables(samples, bits=(2, 4), codebook_sizes=(8,), channel_axis=0)
    codec = FeatureCodec(tables, decoded_bytes=BUDGET)
    inline = FeatureCodec(decoded_bytes=BUDGET)
    x = samples[0]
    streams = {
        "shared-u4": codec.encode(x, bits=4),
        "shared-vq8": codec.encode(x, codebook_size=8),
        "inline-u3": inline.encode(x, bits=3),
        "inline-f16": inline.encode(rng.normal(size=(40, 30)).astype(np.float16), bits=5),
        "constant": inline.encode(np.zeros((64, 64), np.float32), bits=2),
    }
    return codec, streams


@fuzz_settings(60)
@given(data=st.data(), name=st.sampled_from(["shared-u4", "shared-vq8", "inline-u3", "inline-f16", "constant"]),
       recompute_crc=st.booleans())
def test_feature_codec_mutations(feature_streams, data, name, recompute_crc):
    codec, streams = feature_streams
    original = streams[name]
    expected = codec.decode(original)
    mutated, kind = mutate(original, data.draw, 48)
    if recompute_crc and len(mutated) > 12:
        mutated = with_crc(mutated)
    tracemalloc.start()
    try:
        decoded = codec.decode(mutated)
    except BitstreamError:
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * BUDGET + (4 << 20), f"{kind}: traced peak {peak} bytes"
    if mutated == original:
        np.testing.assert_array_equal(decoded, expected)
        return
    assert recompute_crc, f"{kind} mutation without a valid checksum decoded"
    header, _ = unpack(mutated)
    assert decoded.shape == header.shape and decoded.dtype == np.dtype(header.dtype)


@fuzz_settings(40)
@given(fields=st.fixed_dictionaries({
    "shape": st.lists(st.integers(0, 1 << 31), min_size=0, max_size=8).map(tuple),
    "n_symbols": st.integers(0, (1 << 32) - 1),
    "rate": st.integers(0, (1 << 32) - 1),
    "n_states": st.integers(0, 255),
    "dtype": st.sampled_from(["float16", "float32", "float64"]),
}), name=st.sampled_from(["shared-u4", "shared-vq8", "inline-u3"]))
def test_feature_codec_header_overwrites_with_valid_checksum(feature_streams, fields, name):
    codec, streams = feature_streams
    from operators.compression.bitstream import pack

    header, sections = unpack(streams[name])
    hostile = pack(header._replace(**fields), sections)
    tracemalloc.start()
    try:
        codec.decode(hostile)
    except BitstreamError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * BUDGET + (4 << 20)


def test_hostile_feature_headers_are_refused_under_an_address_space_limit():
    """Headers asking for GiBs, decoded with 512 MiB of address space for the whole interpreter."""
    script = textwrap.dedent("""
        import resource, numpy as np
        from operators.compression.bitstream import BitstreamError, StreamHeader, pack
        from operators.compression.codec import FeatureCodec
        from operators.compression.priors import EntropyPrior
        from operators.compression.quantize import UniformParams
        codec = FeatureCodec()
        codec.decode(codec.encode(np.ones((4, 4), np.float32), bits=2))  # warm up the kernels first
        params = UniformParams(2, np.ones(1, np.float32), np.zeros(1, np.int16)).to_bytes()
        peaked = EntropyPrior(np.array([[(1 << 16) - 4, 1, 1, 1, 1]], np.uint32), 16).to_bytes()
        many = EntropyPrior(np.full((4000, 2), 1 << 23, np.uint32), 24).to_bytes()
        words = b"\\0" * 64
        cases = [
            (StreamHeader("float32", (1 << 15, 1 << 15), None, "uniform", 2, 1, 1 << 30), [params, peaked, b"", words]),
            (StreamHeader("float64", (1 << 20, 1 << 8), None, "uniform", 2, 1, 1 << 28), [params, peaked, b"", words]),
            (StreamHeader("float32", (16,), None, "uniform", 2, 1, 16), [params, many, b"", words]),
        ]
        size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, ((size << 10) + (512 << 20),) * 2)
        for header, sections in cases:
            try:
                codec.decode(pack(header, sections))
            except BitstreamError as error:
                print("refused:", str(error)[:80])
            else:
                raise SystemExit("decoded a hostile stream")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("refused:") == 3
    assert proc.stdout.count("budget decoded_bytes") == 2 and "inline prior must be one" in proc.stdout


@pytest.fixture(scope="module")
def opus_tokens():
    tokenizer = OpusTokenizer(frame_ms=20)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16000)).astype(np.float32)
    tokens = bytes_to_tokens(tokenizer.to_payload(wave))
    return tokenizer, tokens, tokenizer.decode(tokens)


@fuzz_settings(25)
@given(data=st.data())
def test_opus_token_mutations(opus_tokens, data):
    tokenizer, tokens, expected = opus_tokens
    original = tokens_to_bytes(tokens)
    mutated, kind = mutate(original, data.draw, 6)
    try:
        decoded = tokenizer.decode(bytes_to_tokens(mutated))
    except MediaError:
        return
    if mutated == original:
        np.testing.assert_array_equal(decoded, expected)
        return
    pre_skip, num_samples, packets = unpack_packets(mutated)
    tokenizer.check_stream(pre_skip, num_samples, packets)  # Opus has no checksum: a valid different stream
    assert decoded.shape == (num_samples,) and np.isfinite(decoded).all()


@pytest.mark.parametrize("factor", [100, None])
def test_opus_num_samples_must_match_the_packets(opus_tokens, factor):
    tokenizer, tokens, _ = opus_tokens
    payload = tokens_to_bytes(tokens)
    pre_skip, num_samples = struct.unpack_from(">HI", payload)
    forged = struct.pack(">HI", pre_skip, num_samples * factor if factor else 0xFFFFFFFF) + payload[6:]
    with pytest.raises(MediaError, match="budget audio_samples|packets hold"):
        tokenizer.decode(bytes_to_tokens(forged))


def test_opus_packets_hold_more_than_the_budget():
    tokenizer = OpusTokenizer(media_seconds=1.0)
    packet = bytes([0xF8 | 3, 48])  # CELT 20 ms, code 3, 48 frames: refused (> 120 ms)
    with pytest.raises(MediaError, match="a packet holds 1 to 5760"):
        opus_packet_samples(packet)
    long_stream = struct.pack(">HI", 312, 16000 * 2) + b"".join(b"\x02\xf8\x00" for _ in range(110))
    with pytest.raises(MediaError, match="budget media_seconds=1 exceeded: the Opus packets hold 2.2 s"):
        tokenizer.decode(bytes_to_tokens(long_stream))


@pytest.fixture(scope="module")
def jpeg_tokens():
    tokenizer = JpegTokenizer(size=32)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tokens = tokenizer.encode(buffer.getvalue()).tokens
    return tokenizer, tokens, np.asarray(tokenizer.decode(tokens))


@fuzz_settings(60)
@given(data=st.data())
def test_jpeg_token_mutations(jpeg_tokens, data):
    tokenizer, tokens, expected = jpeg_tokens
    original = tokens_to_bytes(tokens)
    mutated, _ = mutate(original, data.draw, 200)
    try:
        image = tokenizer.decode(bytes_to_tokens(mutated))
    except MediaError:
        return
    if mutated == original:
        np.testing.assert_array_equal(np.asarray(image), expected)
    assert image.size == (tokenizer.size, tokenizer.size) and image.mode == "RGB"


def test_jpeg_tokens_declaring_a_huge_frame_are_refused_before_decoding(jpeg_tokens):
    tokenizer, tokens, _ = jpeg_tokens
    payload = bytearray(tokens_to_bytes(tokens))
    sof = payload.find(b"\xff\xc0")
    payload[sof + 5 : sof + 9] = struct.pack(">HH", 9000, 9000)  # under Pillow's own bomb limit
    tracemalloc.start()
    with pytest.raises(MediaError, match="9000x9000"):
        tokenizer.decode(bytes_to_tokens(bytes(payload)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


@fuzz_settings(100)
@given(ids=st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=64))
def test_byte_token_decoding(ids):
    tokens = np.asarray(ids, np.int64)
    inner = tokens[1:] if tokens.size and tokens[0] == BOS else tokens
    inner = inner[:-1] if inner.size and inner[-1] == EOS else inner
    try:
        payload = tokens_to_bytes(tokens)
    except MediaError:
        assert inner.size and (inner.min() < 0 or inner.max() > 255)
        return
    assert payload == bytes(inner.tolist())
