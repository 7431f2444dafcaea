"""``KeyValueMemo``: the attention key/value cache of each live stream's last step, kept in memory.

A live stream's stored state leaves out the key/value cache (``cache_last_kv``, two thirds of
its bytes), which is a pure function of the attention cache it keeps (``cache_last_channel``):
``FastConformerEncoder.kv_cache_from`` rebuilds it with one matrix product per layer over all
``L`` cached frames. The step that produced the attention cache also produced its key/value
cache, so the engine remembers that one and the next step takes it back instead of rebuilding,
as long as the attention cache it is handed is the very one the memo was made for (checked by
content, so a stream restored from stored state, or any other stream, never gets a wrong cache;
it gets a rebuilt one). Like the weight memos in ``operators.asr.layers`` it holds derived values
only: results are the same with or without it, to float rounding (a rebuilt cache and a stepped
one come from matrix products of different shapes).

A stream's step replaces its entry (streams with equal caches, e.g. all fed digital silence,
share one) and its end drops it; entries are bounded by bytes (least recently used dropped
first), so streams that went idle or moved to another worker cost memory only until newer
entries push them out.
"""

from typing import Optional

import numpy as np

from operators.streaming.bounded_memo import BoundedMemo

__all__ = ["KeyValueMemo"]


class KeyValueMemo:
    """Key/value caches by the attention cache they belong to.

    Args:
        max_bytes: Bound on the key/value bytes held (e.g. 256 MiB holds ~1,200 streams of the
            embedded model, 215 KB each).
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self._memo = BoundedMemo(max_bytes)

    @staticmethod
    def _key(att_cache: np.ndarray) -> bytes:
        """A cheap lookup key: every layer's newest cached frame (``att_cache [layers, 1, L, d]``)."""
        return att_cache[:, :, -1].tobytes() if att_cache.shape[2] else b""

    def get(self, att_cache: np.ndarray) -> Optional[np.ndarray]:
        """The key/value cache ``[layers, 1, L, 2d]`` remembered for exactly ``att_cache``, or None."""
        entry = self._memo.get(self._key(att_cache))
        if entry is None:
            return None
        att, kv = entry
        return kv if att is att_cache or np.array_equal(att, att_cache) else None

    def put(self, att_cache: np.ndarray, kv_cache: np.ndarray) -> None:
        """Remembers ``kv_cache`` as the key/value cache of ``att_cache`` (both one stream's; the
        memo keeps both arrays, so pass arrays of their own, not views of a batch)."""
        self._memo.put(self._key(att_cache), (att_cache, kv_cache), kv_cache.nbytes)

    def forget(self, att_cache: np.ndarray) -> None:
        """Drops the entry of ``att_cache`` (a stream stepped on from it, restarted or ended)."""
        self._memo.pop(self._key(att_cache))

    def __len__(self) -> int:
        return len(self._memo)

    @property
    def nbytes(self) -> int:
        """Key/value bytes held."""
        return self._memo.nbytes
