"""``CoModule``, the base of continual modules, and the per-stream phase counters they share."""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from operators.video.continual.state import State, first_counter

Mask = Optional[np.ndarray]


class CoModule(nn.Module):
    """Base of continual modules.

    Attributes:
        delay: Input steps (frames) before the first output, counted from a stream's start.
        stride: Input steps between two outputs.
    """

    delay: int = 0
    stride: int = 1

    def init_state(self, batch_size: int) -> State:
        """Returns the state of ``batch_size`` fresh streams (buffers are allocated lazily)."""
        return None

    def step_masked(
        self, x: Optional[Tensor], valid: Mask, reset: Mask, state: State
    ) -> Tuple[Optional[Tensor], Mask, State]:
        """One step for the batch; the general core every module implements.

        Args:
            x: Frame batch ``[B, C, H, W]``, or ``None`` when no stream has an input.
            valid: Per-stream bool mask of rows holding an input, ``None`` for all rows.
            reset: Per-stream bool mask of rows starting a new stream now, or ``None``.
            state: This module's state (consumed).

        Returns:
            ``(y, valid_out, state)``; ``y`` is ``None`` when no row has an output.
        """
        raise NotImplementedError

    def step(
        self, frame: Tensor, state: State, reset: Optional[Sequence[bool]] = None
    ) -> Tuple[Optional[Tensor], State]:
        """Feeds one frame per stream; returns ``(output or None, state)``.

        Rows without an output this step (out of phase or warming up while other rows have
        one) are filled with NaN; use ``step_masked`` to get the mask instead. ``frame`` may
        be kept in the state by reference: do not write into it afterwards.

        Raises:
            ValueError: If ``state`` holds a different number of streams than ``frame``
                (checked before any state is touched).
        """
        counter = first_counter(state)
        if counter is not None and counter.shape[0] != frame.shape[0]:
            raise ValueError(
                f"state holds {counter.shape[0]} stream(s) but the frame batch has {frame.shape[0]}; "
                "create a state with init_state(batch_size) for this batch (no broadcasting)"
            )
        reset_mask = None if reset is None else np.asarray(reset, dtype=bool)
        if reset_mask is not None and reset_mask.shape != (frame.shape[0],):
            raise ValueError(f"reset mask has shape {reset_mask.shape}, expected ({frame.shape[0]},)")
        y, valid, state = self.step_masked(frame, None, reset_mask, state)
        if y is not None and valid is not None:
            y = y.masked_fill(~torch.from_numpy(valid).view(-1, *([1] * (y.dim() - 1))), float("nan"))
        return y, state


def advance(
    t: np.ndarray, batch: int, valid: Mask, reset: Mask, delay: int, stride: int
) -> Tuple[np.ndarray, Mask, np.ndarray]:
    """Updates per-stream phase counters; returns ``(init_rows, emit_mask, active_rows)``.

    ``t[b]`` counts the inputs stream ``b`` has fed this module since its reset. A row is
    initialised at its first input (``t == 0``) and emits when ``t >= delay`` and
    ``(t - delay) % stride == 0``. ``emit_mask`` is ``None`` when every row emits.
    """
    if t.shape[0] != batch:
        raise ValueError(
            f"state holds {t.shape[0]} stream(s) but the input has batch size {batch}; "
            "create a state with init_state(batch_size) for this batch (no broadcasting)"
        )
    if reset is not None:
        t[reset] = 0
    active = np.ones(batch, dtype=bool) if valid is None else valid
    init = active & (t == 0)
    emit = active & (t >= delay) & ((t - delay) % stride == 0)
    t += active
    return init, (None if emit.all() else emit), active


def row_indices(mask: np.ndarray) -> Tensor:
    """The indices of the ``True`` rows of a per-stream mask, as a tensor for indexing buffers."""
    return torch.from_numpy(np.flatnonzero(mask))


def reset_without_input(t: np.ndarray, reset: Mask) -> None:
    """A step with no input for any stream: only zeroes the counters of the rows in ``reset``."""
    if reset is not None:
        if reset.shape[0] != t.shape[0]:
            raise ValueError(f"state holds {t.shape[0]} stream(s) but reset has {reset.shape[0]}")
        t[reset] = 0
