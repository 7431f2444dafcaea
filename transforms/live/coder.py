"""``NumpyTreeCoder``: the Beam state coder of live streams (no pickle, no torch).

Per-stream engine states and the stream book are trees of dicts, lists, tuples, scalars,
strings, bytes and numpy arrays; this coder writes them deterministically (dict keys sorted),
so the same bytes restore on any worker and a restarted job continues identically.
"""

import struct
from typing import Any, List, Tuple

import numpy as np
from apache_beam.coders import Coder


class NumpyTreeCoder(Coder):
    """Deterministic binary coder for trees of dict / list / tuple / scalars / numpy arrays.

    Used for the per-stream operator state in Beam state. Arrays are stored as dtype string,
    shape and raw little-endian bytes (one copy each way); dict keys are ``str`` or ``int``;
    no pickle.
    """

    def encode(self, value: Any) -> bytes:
        parts: List[Any] = []  # bytes, and memoryviews of array data: one copy, in the join
        _encode_tree(value, parts)
        return b"".join(parts)

    def decode(self, encoded: bytes) -> Any:
        value, _ = _decode_tree(memoryview(encoded), 0)
        return value

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


def _encode_str(text: str, parts: List[bytes]) -> None:
    raw = text.encode("utf-8")
    parts.append(_U32.pack(len(raw)))
    parts.append(raw)


def _encode_tree(value: Any, parts: List[Any]) -> None:
    # Arrays and dicts first: they are nearly all of an engine state's nodes.
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays cannot be coded")
        array = value.astype(value.dtype.newbyteorder("<")) if value.dtype.byteorder == ">" else value
        array = array if array.flags.c_contiguous else array.copy(order="C")
        parts.append(b"A")
        _encode_str(array.dtype.str, parts)
        parts.append(_U32.pack(array.ndim) + b"".join(_I64.pack(d) for d in array.shape))
        parts.append(_I64.pack(array.nbytes))
        parts.append(memoryview(array.reshape(-1).view(np.uint8)))  # no copy: ``encode`` joins once
    elif isinstance(value, dict):
        parts.append(b"M" + _U32.pack(len(value)))
        for key in sorted(value, key=_key_order):
            _encode_tree(key, parts)
            _encode_tree(value[key], parts)
    elif isinstance(value, (list, tuple)):
        parts.append((b"L" if isinstance(value, list) else b"U") + _U32.pack(len(value)))
        for item in value:
            _encode_tree(item, parts)
    elif value is None:
        parts.append(b"N")
    elif isinstance(value, (bool, np.bool_)):
        parts.append(b"T" if value else b"F")
    elif isinstance(value, (int, np.integer)):
        parts.append(b"I" + _I64.pack(int(value)))
    elif isinstance(value, (float, np.floating)):
        parts.append(b"D" + _F64.pack(float(value)))
    elif isinstance(value, str):
        parts.append(b"S")
        _encode_str(value, parts)
    elif isinstance(value, (bytes, bytearray)):
        parts.append(b"B" + _U32.pack(len(value)))
        parts.append(bytes(value))
    else:
        raise TypeError(f"NumpyTreeCoder cannot code {type(value).__name__}")


def _key_order(key: Any) -> Tuple[bool, Any]:
    return isinstance(key, str), key


def _decode_str(buf: memoryview, pos: int) -> Tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    return bytes(buf[pos + 4 : pos + 4 + n]).decode("utf-8"), pos + 4 + n


def _decode_tree(buf: memoryview, pos: int) -> Tuple[Any, int]:
    tag = bytes(buf[pos : pos + 1])
    pos += 1
    if tag == b"N":
        return None, pos
    if tag in (b"T", b"F"):
        return tag == b"T", pos
    if tag == b"I":
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if tag == b"D":
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if tag == b"S":
        return _decode_str(buf, pos)
    if tag == b"B":
        (n,) = _U32.unpack_from(buf, pos)
        return bytes(buf[pos + 4 : pos + 4 + n]), pos + 4 + n
    if tag == b"A":
        dtype, pos = _decode_str(buf, pos)
        (ndim,) = _U32.unpack_from(buf, pos)
        pos += 4
        shape = tuple(_I64.unpack_from(buf, pos + 8 * i)[0] for i in range(ndim))
        pos += 8 * ndim
        (n,) = _I64.unpack_from(buf, pos)
        pos += 8
        array = np.frombuffer(buf[pos : pos + n], dtype=np.dtype(dtype)).reshape(shape).copy()
        return array, pos + n
    if tag == b"M":
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        result = {}
        for _ in range(n):
            key, pos = _decode_tree(buf, pos)
            result[key], pos = _decode_tree(buf, pos)
        return result, pos
    if tag in (b"L", b"U"):
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = _decode_tree(buf, pos)
            items.append(item)
        return (items if tag == b"L" else tuple(items)), pos
    raise ValueError(f"corrupt NumpyTreeCoder data: tag {tag!r} at {pos - 1}")
