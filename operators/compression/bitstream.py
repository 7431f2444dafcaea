"""Versioned, self-describing container for one compressed feature tensor.

Layout (little endian)::

    magic "MBFC" | version u8 | total length u32
    header: flags u8 | dtype u8 | kind u8 | n_states u8 | channel_axis i8 | ndim u8
            | rate u32 (bits, or codebook size) | n_symbols u32 | tables id 8 bytes
            | shape u32 × ndim
    sections: count u8 | length u32 × count | payloads
    crc32 of everything above, u32

The total length catches truncation, the CRC-32 catches damage, and every field is range
checked before use, so a bad stream raises ``BitstreamError`` with a reason instead of
decoding to wrong values. The CRC is no defence against a crafted stream (anyone can recompute
it): decoders check what the header asks for against their budgets before allocating, and a
stream over budget raises :class:`StreamBudgetExceeded`. The sections are opaque here (the
feature codec defines them).
"""

import struct
import zlib
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from schemas.budgets import BudgetExceeded

MAGIC = b"MBFC"
VERSION = 1
FLAG_SHARED_TABLES = 1
KINDS = ("uniform", "codebook")
DTYPES = ("float16", "float32", "float64")
_PRELUDE = struct.Struct("<4sBI")
_FIXED = struct.Struct("<BBBBbBII8s")
_CRC = struct.Struct("<I")
MAX_NDIM = 8
MAX_SECTIONS = 16


class BitstreamError(ValueError):
    """A stream that is not ours, from an unsupported version, truncated or damaged."""


class StreamBudgetExceeded(BitstreamError, BudgetExceeded):
    """A well-formed header asks a decoder for more than its budget (``decoded_bytes``)."""


class StreamHeader(NamedTuple):
    """What a decoder needs to know before reading the payload sections.

    Attributes:
        dtype: Feature dtype name (one of ``DTYPES``).
        shape: Feature shape.
        channel_axis: Channel axis for per-channel tables/parameters, or None.
        kind: ``"uniform"`` or ``"codebook"``.
        rate: Bit depth (uniform) or codebook size (codebook).
        n_states: Interleaved rANS states used by the encoder.
        n_symbols: Number of coded symbols.
        tables_id: 8-byte id of the shared quantiser+prior tables, or ``b""`` when the
            quantiser parameters and prior travel inline in the sections.
    """

    dtype: str
    shape: Tuple[int, ...]
    channel_axis: int | None
    kind: str
    rate: int
    n_states: int
    n_symbols: int
    tables_id: bytes = b""


def pack(header: StreamHeader, sections: Sequence[bytes]) -> bytes:
    """Serialises ``header`` and payload ``sections`` into one checksummed stream."""
    if len(header.shape) > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dimensions are supported, got {len(header.shape)}")
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"at most {MAX_SECTIONS} sections, got {len(sections)}")
    if header.tables_id and len(header.tables_id) != 8:
        raise ValueError("tables_id must be 8 bytes")
    flags = FLAG_SHARED_TABLES if header.tables_id else 0
    axis = -1 if header.channel_axis is None else header.channel_axis
    body = [
        _FIXED.pack(
            flags,
            DTYPES.index(header.dtype),
            KINDS.index(header.kind),
            header.n_states,
            axis,
            len(header.shape),
            header.rate,
            header.n_symbols,
            header.tables_id or bytes(8),
        ),
        np.asarray(header.shape, "<u4").tobytes(),
        struct.pack(f"<B{len(sections)}I", len(sections), *(len(s) for s in sections)),
        *sections,
    ]
    total = _PRELUDE.size + sum(len(b) for b in body) + _CRC.size
    out = b"".join([_PRELUDE.pack(MAGIC, VERSION, total), *body])
    return out + _CRC.pack(zlib.crc32(out))


def unpack(data: bytes) -> Tuple[StreamHeader, List[bytes]]:
    """Verifies and parses a stream made by ``pack``.

    Raises:
        BitstreamError: Saying whether the stream is foreign, of another version,
            truncated, damaged (checksum) or internally inconsistent.
    """
    data = bytes(data)
    if len(data) < _PRELUDE.size:
        raise BitstreamError(f"stream is truncated: {len(data)} bytes is shorter than the {_PRELUDE.size}-byte prelude")
    magic, version, total = _PRELUDE.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not a mediabeam feature stream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise BitstreamError(f"feature stream version {version} is not supported (this build reads {VERSION})")
    if len(data) < total:
        raise BitstreamError(f"stream is truncated: header says {total} bytes, got {len(data)}")
    if len(data) > total:
        raise BitstreamError(f"stream has {len(data) - total} unexpected trailing bytes (header says {total})")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(data[: total - _CRC.size]) != crc:
        raise BitstreamError("stream is damaged: CRC-32 checksum mismatch")
    try:
        return _parse(data, total - _CRC.size)
    except (struct.error, ValueError, IndexError) as error:
        raise BitstreamError(f"stream header is inconsistent: {error}") from error


def _parse(data: bytes, end: int) -> Tuple[StreamHeader, List[bytes]]:
    pos = _PRELUDE.size
    flags, dtype, kind, n_states, axis, ndim, rate, n_symbols, tables_id = _FIXED.unpack_from(data, pos)
    pos += _FIXED.size
    if dtype >= len(DTYPES) or kind >= len(KINDS) or ndim > MAX_NDIM or flags & ~FLAG_SHARED_TABLES:
        raise ValueError(f"unknown dtype/kind/flags code ({dtype}, {kind}, {flags}) or ndim {ndim}")
    if not -1 <= axis < max(ndim, 1):
        raise ValueError(f"channel axis {axis} out of range for {ndim} dimensions")
    shape = tuple(int(v) for v in np.frombuffer(data, "<u4", ndim, pos))
    pos += 4 * ndim
    (count,) = struct.unpack_from("<B", data, pos)
    if count > MAX_SECTIONS:
        raise ValueError(f"{count} sections")
    lengths = struct.unpack_from(f"<{count}I", data, pos + 1)
    pos += 1 + 4 * count
    if pos + sum(lengths) != end:
        raise ValueError(f"section lengths {lengths} do not add up to the stream size")
    sections = []
    for length in lengths:
        sections.append(data[pos : pos + length])
        pos += length
    header = StreamHeader(
        dtype=DTYPES[dtype],
        shape=shape,
        channel_axis=None if axis < 0 else axis,
        kind=KINDS[kind],
        rate=rate,
        n_states=n_states,
        n_symbols=n_symbols,
        tables_id=tables_id if flags & FLAG_SHARED_TABLES else b"",
    )
    return header, sections
