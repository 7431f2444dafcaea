"""``CoDelay``: a stream delayed by ``n`` steps (aligns parallel branches)."""

import numpy as np
import torch

from operators.video.continual.base import CoModule, advance, reset_without_input
from operators.video.continual.state import State


class CoDelay(CoModule):
    """Delays a stream by ``n`` of its own (valid) steps; used to align parallel branches.

    The buffer holds references to the last ``n`` inputs (no copies): modules never modify
    a tensor in place once they have returned it.
    """

    def __init__(self, n: int):
        super().__init__()
        if n < 0:
            raise ValueError(f"delay must be >= 0, got {n}")
        self.n = n
        self.delay = n

    def init_state(self, batch_size: int) -> State:
        if self.n == 0:
            return None
        return {"t": np.zeros(batch_size, dtype=np.int64), "frames": None}

    def step_masked(self, x, valid, reset, state):
        if self.n == 0:
            return x, valid, state
        t = state["t"]
        if x is None:
            reset_without_input(t, reset)
            return None, None, state
        _, emit, active = advance(t, x.shape[0], valid, reset, self.n, 1)
        frames = state["frames"]
        if frames is None or frames[0].shape != x.shape:
            frames = [torch.zeros_like(x) for _ in range(self.n)]
        y = frames[0]
        if valid is None:
            state["frames"] = frames[1:] + [x]
        else:
            keep = torch.from_numpy(active).view(-1, *([1] * (x.dim() - 1)))
            shifted = frames[1:] + [x]
            state["frames"] = [torch.where(keep, new, old) for new, old in zip(shifted, frames)]
        if emit is not None and not emit.any():
            return None, None, state
        return y, emit, state
