"""``BoundedMemo``: values kept by key within a byte budget, least recently used dropped first.

The shared store behind the live path's memos of derived values (``operators.asr.kv_memo``'s
key/value caches, ``transforms.live.state_log``'s written states): each decides what a key is
and when an entry still matches; this only keeps entries and their sizes. Thread-safe.
"""

import threading
from collections import OrderedDict
from typing import Any, Hashable, Optional, Tuple

__all__ = ["BoundedMemo"]


class BoundedMemo:
    """Values by key whose sizes add up to at most ``max_bytes``.

    Args:
        max_bytes: Bound on the sizes given to ``put``; the least recently used entries go first.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[Any]:
        """The value kept for ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keeps ``value`` (``nbytes`` large) for ``key``, replacing its entry; a value larger than
        the whole bound is not kept."""
        with self._lock:
            self._drop(key)
            if nbytes > self.max_bytes:
                return
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def pop(self, key: Hashable) -> None:
        """Drops the entry of ``key``, if any."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """The sizes of the entries kept, summed."""
        return self._bytes
