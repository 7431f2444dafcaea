"""Helpers shared by the continual-inference tests (not a test module)."""

from typing import Optional, Tuple

import torch


def stepped(co, stream: torch.Tensor) -> Tuple[torch.Tensor, Optional[int]]:
    """Outputs of every step of ``co`` over ``stream [B, C, T, ...]`` stacked along time, and the
    index of the step that gave the first output (to check the operator's delay)."""
    state = co.init_state(stream.shape[0])
    outs, first = [], None
    for t in range(stream.shape[2]):
        y, state = co.step(stream[:, :, t], state)
        if y is not None:
            first = t if first is None else first
            outs.append(y)
    return torch.stack(outs, dim=2), first
