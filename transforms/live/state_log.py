"""``ShardStateLog``: one stream shard's live state as an append-only log of coded records.

A shard holds the ``StreamBook`` and every open stream's engine state (the embedded ASR model:
about 340 KB a stream). Stored as one value, every bundle would re-code and re-copy all of
them, and the SDK's state cache would re-measure them, although a bundle touches only the
streams that got chunks. In the log, a bundle appends one record per stream it stepped, one
per stream it ended and one for the book when the book changed; replaying the log (the last
record of a key wins) gives the state back, and a stream's state is decoded only when the
bundle uses it. When the records no longer in force outweigh the live ones, the whole log is
rewritten from the live records (the records are already coded: nothing is re-coded). So
the bytes a bundle writes follow the streams it touched, on any runner.

Records are ``(kind, stream_id, payload)`` with kind ``book`` (the book's tree), ``state`` (a
stream's engine state) or ``end`` (the stream's state is gone), each payload coded by
``NumpyTreeCoder``; ``RECORD_CODER`` codes a record for Beam (deterministic, no pickle).

A worker keeps the states it last wrote (``WrittenStates``), so the next bundle that reads the
very record it wrote takes the state back instead of decoding it; a record written elsewhere,
or restored, is decoded. Decoding was a tenth of a live bundle at 32 streams.
"""

from typing import Any, Dict, Iterable, Iterator, List, MutableMapping, Optional, Set, Tuple

import numpy as np
from apache_beam.coders import BytesCoder, StrUtf8Coder, TupleCoder

from operators.streaming.bounded_memo import BoundedMemo
from transforms.live.coder import NumpyTreeCoder

Record = Tuple[str, str, bytes]

BOOK, STATE, END = "book", "state", "end"
RECORD_CODER = TupleCoder([StrUtf8Coder(), StrUtf8Coder(), BytesCoder()])

# The log is rewritten once it holds more than twice the live bytes plus this slack (so a
# shard of small states is not rewritten on every bundle).
REWRITE_SLACK_BYTES = 1 << 20


class WrittenStates:
    """The stream states a worker committed last, by stream id, with the record they were coded to.

    ``get`` hands a state back only for that same record (the in-process runner reads back the
    very bytes object; other runners equal bytes), so what a bundle sees is what decoding the
    record would give. The states' arrays are made read-only when kept: an engine takes its
    input states without changing them (it returns new ones), and this holds it to that.

    Args:
        max_bytes: Bound on the coded bytes of the states kept (least recently used dropped
            first); 256 MiB holds about 2,000 streams of the embedded ASR model.
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self._memo = BoundedMemo(max_bytes)

    def get(self, stream_id: str, coded: bytes) -> Optional[Any]:
        """The state kept for ``stream_id`` if it was coded to exactly ``coded``, else None."""
        entry = self._memo.get(stream_id)
        if entry is None or not (entry[0] is coded or entry[0] == coded):
            return None
        return entry[1]

    def put(self, stream_id: str, coded: bytes, state: Any) -> None:
        """Keeps ``state`` as the one ``coded`` holds (its arrays become read-only)."""
        _freeze(state)
        self._memo.put(stream_id, (coded, state), len(coded))

    def forget(self, stream_id: str) -> None:
        """Drops the state kept for ``stream_id`` (the stream ended)."""
        self._memo.pop(stream_id)

    def __len__(self) -> int:
        return len(self._memo)


def _freeze(tree: Any) -> None:
    if isinstance(tree, np.ndarray):
        tree.flags.writeable = False
    elif isinstance(tree, dict):
        for value in tree.values():
            _freeze(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            _freeze(value)


class ShardStateLog(MutableMapping):
    """The replayed log of one shard: its book, and a mapping stream id → engine state.

    Reading a stream's state decodes its record (once per bundle); assigning or deleting one
    marks it for the next ``commit``. Nothing here touches Beam state: the DoFn reads the
    records from its bag and writes back what ``commit`` returns.

    Args:
        records: The bag's records in the order they were added (``None``: an empty shard).
        written: The worker's ``WrittenStates``: read from before decoding, updated on commit
            (``None``: always decode).
    """

    def __init__(self, records: Optional[Iterable[Record]] = None, written: Optional[WrittenStates] = None):
        self._coder = NumpyTreeCoder()
        self._written = written
        self._book: Optional[bytes] = None
        self._coded: Dict[str, bytes] = {}
        self._logged_bytes = self._logged_records = 0
        for kind, stream_id, payload in records or ():
            self._logged_bytes += len(payload)
            self._logged_records += 1
            if kind == BOOK:
                self._book = payload
            elif kind == STATE:
                self._coded[stream_id] = payload
            elif kind == END:
                self._coded.pop(stream_id, None)
            else:
                raise ValueError(f"corrupt live state log: record kind {kind!r}")
        self._decoded: Dict[str, Any] = {}
        self._changed: Set[str] = set()

    def book(self) -> Optional[Dict[str, Any]]:
        """The book's tree as last committed (``None`` for a new shard)."""
        return None if self._book is None else self._coder.decode(self._book)

    @property
    def coded_book(self) -> Optional[bytes]:
        """The book's record as read or last committed (``None``: no book)."""
        return self._book

    def has_book(self, coded: Optional[bytes]) -> bool:
        """Whether the book read is exactly ``coded`` (the same object, or equal bytes)."""
        return self._book is coded or (self._book is not None and coded is not None and self._book == coded)

    def __getitem__(self, stream_id: str) -> Any:
        if stream_id not in self._decoded:
            coded = self._coded[stream_id]
            state = None if self._written is None else self._written.get(stream_id, coded)
            self._decoded[stream_id] = self._coder.decode(coded) if state is None else state
        return self._decoded[stream_id]

    def __setitem__(self, stream_id: str, state: Any) -> None:
        self._decoded[stream_id] = state
        self._changed.add(stream_id)

    def __delitem__(self, stream_id: str) -> None:
        if stream_id not in self:
            raise KeyError(stream_id)
        self._decoded.pop(stream_id, None)
        self._coded.pop(stream_id, None)
        self._changed.add(stream_id)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._decoded or stream_id in self._coded

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._decoded) | set(self._coded)))

    def __len__(self) -> int:
        return len(set(self._decoded) | set(self._coded))

    def commit(self, book_tree: Optional[Dict[str, Any]]) -> Tuple[bool, List[Record]]:
        """Codes what changed since the log was read; returns ``(rewrite, records)``.

        ``rewrite`` False: append ``records`` to the bag (nothing to write when empty). True:
        clear the bag, then add ``records`` (the live records; none once the shard holds
        nothing). Read back, the bag then replays to this object's current state.

        Args:
            book_tree: The book's current tree (``StreamBook.to_tree``), or ``None`` when the
                book holds nothing (no open or recently closed stream).
        """
        appended: List[Record] = []
        for stream_id in sorted(self._changed):
            if stream_id in self._decoded:
                coded = self._coder.encode(self._decoded[stream_id])
                self._coded[stream_id] = coded
                appended.append((STATE, stream_id, coded))
                if self._written is not None:
                    self._written.put(stream_id, coded, self._decoded[stream_id])
            else:
                appended.append((END, stream_id, b""))
                if self._written is not None:
                    self._written.forget(stream_id)
        self._changed.clear()
        book = self._coder.encode(book_tree) if book_tree is not None or self._coded else None
        if book is not None and book != self._book:
            appended.insert(0, (BOOK, "", book))
        self._book = book
        if book is None:
            was_logged, self._logged_bytes, self._logged_records = self._logged_records > 0, 0, 0
            return was_logged, []
        live = self._live_records()
        live_bytes = sum(len(payload) for _, _, payload in live)
        logged = self._logged_bytes + sum(len(payload) for _, _, payload in appended)
        if logged > 2 * live_bytes + REWRITE_SLACK_BYTES:
            self._logged_bytes, self._logged_records = live_bytes, len(live)
            return True, live
        self._logged_bytes, self._logged_records = logged, self._logged_records + len(appended)
        return False, appended

    def _live_records(self) -> List[Record]:
        records: List[Record] = [(BOOK, "", self._book)] if self._book is not None else []
        return records + [(STATE, stream_id, self._coded[stream_id]) for stream_id in sorted(self._coded)]
