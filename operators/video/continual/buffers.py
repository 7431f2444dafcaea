"""Per-stream history buffers: the last ``n`` per-frame values of each stream, updated in place."""

from typing import Any, Dict, Optional

import numpy as np
from torch import Tensor

from operators.video.continual.base import row_indices


def _shift_in(buf: Tensor, x: Tensor) -> None:
    """Per stream (dim 0), drops the oldest entry of ``buf`` (dim 1), moves the rest one
    place down and puts ``x`` last, in place."""
    if buf.shape[1] > 1:
        buf[:, :-1] = buf[:, 1:].clone()
    buf[:, -1] = x


def history_buffer(state: Dict[str, Any], z: Tensor, length: int, init: np.ndarray, fill: float) -> Tensor:
    """``state["buf"]``: per stream, the last ``length`` per-frame values like ``z`` ``[B, ...]``.

    (Re)allocated, filled with ``fill``, when the batch or frame shape changes; rows that
    start a stream now (``init``) are reset to ``fill``.
    """
    buf = state["buf"]
    if buf is None or buf.shape[0] != z.shape[0] or buf.shape[2:] != z.shape[1:]:
        buf = z.new_full((z.shape[0], length, *z.shape[1:]), fill)
        state["buf"] = buf
    elif init.any():
        buf[row_indices(init)] = fill
    return buf


def push_active(buf: Tensor, z: Tensor, active: Optional[np.ndarray]) -> None:
    """``_shift_in`` for the rows in ``active`` (all when ``None``); the others keep theirs."""
    keep = None if active is None else buf[row_indices(~active)]
    _shift_in(buf, z)
    if keep is not None:
        buf[row_indices(~active)] = keep
