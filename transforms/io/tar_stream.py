"""A streaming tar reader for untrusted shards: every size is checked before it is allocated.

Python's ``tarfile`` trusts headers: a member whose size says 2**80 sends its stream mode into
an endless skip past the end, and PAX records, GNU long names and sparse maps are read whole
whatever their size. :class:`TarStream` parses headers itself (ustar, GNU and PAX) and holds
each one to ``schemas.budgets.Budgets``:

* a header (PAX records, GNU long name/link, old GNU sparse map) larger than ``header_bytes``
  is skipped unread and the member it describes is refused, naming the budget;
* a member's data is read only when asked for and only if it is at most ``member_bytes``;
* a size past the end of the shard, a negative or malformed size, a bad checksum or a
  malformed PAX record is damage (:class:`TarDamage`): reading stops there.

Links, devices, FIFOs and sparse members are refused (never followed, never expanded).
Member names are bytes; :func:`decode_name` turns them into text losslessly.
"""

import bz2
import dataclasses
import gzip
import lzma
import os
import re
from typing import BinaryIO, Dict, Iterator, Optional, Tuple

from schemas.budgets import BudgetExceeded, Budgets

BLOCK = 512
_CHUNK = 1 << 20
_REGULAR = {b"0", b"\0", b"7"}
_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device", b"6": "FIFO"}
_ESCAPE = re.compile(rb"\\(\\|x([0-9a-f]{2}))")


class TarDamage(ValueError):
    """The shard cannot be read past this point (truncated, corrupt or hostile framing).

    Attributes:
        member: Name of the member the damage is in, when it is known.
        offset: Byte offset in the (uncompressed) stream where it was found.
    """

    def __init__(self, message: str, member: Optional[str] = None, offset: Optional[int] = None):
        super().__init__(message)
        self.member = member
        self.offset = offset


def decode_name(raw: bytes) -> str:
    """A member name as text. Valid UTF-8 is kept as is; otherwise each byte that is not part
    of valid UTF-8 becomes ``\\xNN`` and a backslash becomes ``\\\\`` (undo with
    :func:`unescape_name`), so names stay lossless and every writer can store them."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape").replace("\\", "\\\\")
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def unescape_name(name: str) -> bytes:
    """The original bytes of a name escaped by :func:`decode_name` (only for names that
    contain ``\\x``; valid UTF-8 names are their own encoding)."""
    return _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(2), 16)]), name.encode("utf-8"))


@dataclasses.dataclass
class TarEntry:
    """One member of the archive (headers that only describe the next member are folded in).

    Attributes:
        name: Member name (see :func:`decode_name`).
        kind: ``file``, ``dir``, or why it is not a regular file (``symbolic link`` ...).
        size: Bytes of data the archive stores for it.
        refusal: Why its data will not be read (a budget or an unsafe kind), if so.
    """

    name: str
    kind: str
    size: int
    refusal: Optional[ValueError] = None


def _number(field: bytes, what: str) -> int:
    """A numeric header field: octal text or GNU base-256 (which can be negative)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarDamage(f"invalid {what} field {field[:16]!r} in a tar header") from None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored in (unsigned, signed)


def _pax_records(data: bytes) -> Dict[bytes, bytes]:
    """Parses PAX ``"<length> <key>=<value>\\n"`` records."""
    records: Dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos, pos + 24)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarDamage(f"malformed PAX record at byte {pos} of an extended header")
        key, value = record[:-1].split(b"=", 1)
        records[key] = value
        pos += length
    return records


class TarStream:
    """Iterates the members of a tar stream; call :meth:`read` on the current entry to get its
    data (it is skipped otherwise).

    Args:
        fileobj: The raw shard (plain, gzip, bzip2 or xz; detected from its first bytes).
        budgets: Limits for headers, members and samples.
        total_size: Size of the raw shard if known: sizes past it are damage at once.
    """

    def __init__(self, fileobj: BinaryIO, budgets: Budgets, total_size: Optional[int] = None):
        head = fileobj.read(6)
        fileobj.seek(0)
        opener = {b"\x1f\x8b": gzip.GzipFile, b"BZ": bz2.BZ2File, b"\xfd7z": lzma.LZMAFile}
        kind = next((k for k in opener if head.startswith(k)), None)
        self._compressed = kind is not None
        self._f = opener[kind](fileobj=fileobj) if kind == b"\x1f\x8b" else (opener[kind](fileobj) if kind else fileobj)
        self._total = None if self._compressed else total_size
        self._budgets = budgets
        self._pos = 0
        self._unread = 0  # data (plus padding) of the current entry not consumed yet

    def _read(self, n: int, member: Optional[str] = None) -> bytes:
        """Exactly ``n`` bytes (in chunks: memory follows the data, not the claim), or damage."""
        chunks, left = [], n
        while left > 0:
            chunk = self._f.read(min(left, _CHUNK))
            if not chunk:
                raise TarDamage(f"shard ends at byte {self._pos} inside a member or header that claims {n} bytes",
                                member, self._pos)
            chunks.append(chunk)
            left -= len(chunk)
            self._pos += len(chunk)
        return b"".join(chunks)

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        if not self._compressed and self._f.seekable():
            self._f.seek(n, os.SEEK_CUR)
            self._pos += n
            return
        while n > 0:
            got = len(self._f.read(min(n, _CHUNK)))
            if not got:
                raise TarDamage(f"shard ends at byte {self._pos} inside a member", None, self._pos)
            n -= got
            self._pos += got

    def _claim(self, size: int, name: str, member: Optional[str]) -> int:
        """Checks a declared data size against the shard; returns it padded to whole blocks.
        Damage is attributed to ``member`` (None for an extended header)."""
        if size < 0:
            raise TarDamage(f"{name} declares a negative size ({size})", member, self._pos)
        padded = -(-size // BLOCK) * BLOCK
        if self._total is not None and self._pos + size > self._total:
            raise TarDamage(
                f"{name} declares {size} bytes, past the end of the {self._total}-byte shard "
                f"(at byte {self._pos})", member, self._pos,
            )
        if self._compressed and size > self._budgets.member_bytes:
            # Skipping it would mean decompressing all of it: stop here instead.
            over = BudgetExceeded("member_bytes", self._budgets.member_bytes,
                                  f"member {name!r} of a compressed shard declares {size} bytes")
            raise TarDamage(f"{over}; the rest of the shard is not read", member, self._pos)
        return padded

    def _header(self) -> Optional[bytes]:
        block = self._f.read(BLOCK)
        self._pos += len(block)
        if not block or block == bytes(BLOCK):
            return None  # end of archive (a missing end marker is tolerated, as tar does)
        if len(block) < BLOCK:
            raise TarDamage(f"shard ends at byte {self._pos} inside a tar header", None, self._pos)
        try:
            ok = _checksum_ok(block)
        except TarDamage:
            ok = False
        if not ok:
            raise TarDamage(f"bad tar header checksum at byte {self._pos - BLOCK}", None, self._pos - BLOCK)
        return block

    def _extended(self, size: int, what: str) -> Tuple[Optional[bytes], Optional[ValueError]]:
        """Reads an extended header's data if within ``header_bytes``; skips it otherwise."""
        padded = self._claim(size, what, None)
        if size > self._budgets.header_bytes:
            self._skip(padded)
            return None, BudgetExceeded("header_bytes", self._budgets.header_bytes, f"{what} of {size} bytes")
        data = self._read(size)
        self._skip(padded - size)
        return data, None

    def __iter__(self) -> Iterator[TarEntry]:
        global_pax: Dict[bytes, bytes] = {}
        global_bytes = 0
        while True:
            self._skip(self._unread)
            self._unread = 0
            pax: Dict[bytes, bytes] = {}
            long_name: Optional[bytes] = None
            refusal: Optional[ValueError] = None
            header_total = 0
            while True:
                block = self._header()
                if block is None:
                    return
                kind = block[156:157]
                try:
                    size = _number(block[124:136], "size")
                except TarDamage as err:
                    raise TarDamage(str(err), None, self._pos - BLOCK) from None
                if kind not in (b"L", b"K", b"x", b"X", b"g"):
                    break
                header_total += max(size, 0)
                what = "PAX header" if kind in b"xXg" else "GNU long name"
                data, over = self._extended(size, what)
                if over is None and header_total > self._budgets.header_bytes:
                    over = BudgetExceeded("header_bytes", self._budgets.header_bytes,
                                          f"headers of {header_total} bytes")
                refusal = refusal or over
                if data is None:
                    continue
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0]
                elif kind in b"xX":
                    pax.update(_pax_records(data))
                elif kind == b"g":
                    global_bytes += size
                    if global_bytes > self._budgets.header_bytes:
                        over = BudgetExceeded("header_bytes", self._budgets.header_bytes,
                                              f"global PAX headers of {global_bytes} bytes in all")
                        raise TarDamage(str(over), None, self._pos)
                    global_pax.update(_pax_records(data))
            yield from self._member(block, kind, size, {**global_pax, **pax}, long_name, refusal)

    def _member(self, block: bytes, kind: bytes, size: int, pax: Dict[bytes, bytes],
                long_name: Optional[bytes], refusal: Optional[ValueError]) -> Iterator[TarEntry]:
        raw = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0" and prefix:
            raw = prefix + b"/" + raw
        raw = pax.get(b"GNU.sparse.name") or pax.get(b"path") or long_name or raw
        name = decode_name(raw)
        if b"size" in pax:
            if not pax[b"size"].isdigit():
                raise TarDamage(f"member {name!r} has a non-numeric PAX size {pax[b'size'][:40]!r}", name, self._pos)
            size = int(pax[b"size"])
        if kind == b"S" and block[482] != 0:  # old GNU sparse map continues in extra blocks
            extra = 0
            while True:
                extra += BLOCK
                if extra > self._budgets.header_bytes:
                    over = BudgetExceeded("header_bytes", self._budgets.header_bytes,
                                          f"sparse map of {name!r} is longer")
                    raise TarDamage(str(over), name, self._pos)
                if self._read(BLOCK, name)[504] == 0:
                    break
        padded = self._claim(size, f"member {name!r}", name)
        if kind == b"5":
            entry_kind = "dir"
        elif kind == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax):
            entry_kind = "sparse file"
        elif kind in _REGULAR:
            entry_kind = "file"
        else:
            entry_kind = _KINDS.get(kind, f"special member (type {kind!r})")
        if refusal is None and entry_kind not in ("file", "dir"):
            refusal = ValueError(f"member {name!r} is a {entry_kind}, not a regular file; refused")
        if refusal is None and entry_kind == "file" and size > self._budgets.member_bytes:
            refusal = BudgetExceeded(
                "member_bytes", self._budgets.member_bytes,
                f"member {name!r} has {size} bytes, over the {self._budgets.member_bytes}-byte limit",
            )
        self._unread = padded
        yield TarEntry(name, entry_kind, size, refusal)

    def read(self, entry: TarEntry) -> bytes:
        """The data of the current ``entry`` (which must not be refused)."""
        if entry.refusal is not None or self._unread == 0 and entry.size:
            raise ValueError(f"member {entry.name!r} cannot be read: {entry.refusal or 'already consumed'}")
        data = self._read(entry.size, entry.name)
        self._unread -= entry.size
        return data
