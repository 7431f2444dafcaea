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
"""

from typing import Any, Dict, Iterable, Iterator, List, MutableMapping, Optional, Set, Tuple

from apache_beam.coders import BytesCoder, StrUtf8Coder, TupleCoder

from transforms.live.coder import NumpyTreeCoder

Record = Tuple[str, str, bytes]

BOOK, STATE, END = "book", "state", "end"
RECORD_CODER = TupleCoder([StrUtf8Coder(), StrUtf8Coder(), BytesCoder()])

# The log is rewritten once it holds more than twice the live bytes plus this slack (so a
# shard of small states is not rewritten on every bundle).
REWRITE_SLACK_BYTES = 1 << 20


class ShardStateLog(MutableMapping):
    """The replayed log of one shard: its book, and a mapping stream id → engine state.

    Reading a stream's state decodes its record (once per bundle); assigning or deleting one
    marks it for the next ``commit``. Nothing here touches Beam state: the DoFn reads the
    records from its bag and writes back what ``commit`` returns.

    Args:
        records: The bag's records in the order they were added (``None``: an empty shard).
    """

    def __init__(self, records: Optional[Iterable[Record]] = None):
        self._coder = NumpyTreeCoder()
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

    def __getitem__(self, stream_id: str) -> Any:
        if stream_id not in self._decoded:
            self._decoded[stream_id] = self._coder.decode(self._coded[stream_id])
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
            else:
                appended.append((END, stream_id, b""))
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
