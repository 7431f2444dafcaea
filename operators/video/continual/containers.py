"""Composition: ``CoSequential``, ``CoParallel`` (delay-aligned branches) and offline ``Parallel``."""

from typing import Sequence

import torch
from torch import Tensor, nn

from operators.video.continual.base import CoModule
from operators.video.continual.delay import CoDelay
from operators.video.continual.state import State


class CoSequential(CoModule):
    """Modules applied in order; ``delay = d_1 + s_1·d_2 + s_1·s_2·d_3 + …``."""

    def __init__(self, *modules: CoModule):
        super().__init__()
        self.layers = nn.ModuleList(modules)
        delay, stride = 0, 1
        for m in modules:
            delay += stride * m.delay
            stride *= m.stride
        self.delay, self.stride = delay, stride

    def init_state(self, batch_size: int) -> State:
        return [m.init_state(batch_size) for m in self.layers]

    def step_masked(self, x, valid, reset, state):
        for i, m in enumerate(self.layers):
            x, valid, state[i] = m.step_masked(x, valid, reset, state[i])
        return x, valid, state


class CoParallel(CoModule):
    """Branches fed the same input, outputs reduced by ``"sum"``, ``"mul"`` or ``"cat"``.

    Branches with smaller delay get a ``CoDelay`` so all outputs of index ``n`` meet: on
    their output when the gap is a multiple of the stride (fewer frames to buffer after a
    strided branch), else on their input.

    Raises:
        ValueError: If branch strides differ.
    """

    def __init__(self, branches: Sequence[CoModule], reduce: str = "sum"):
        super().__init__()
        if reduce not in ("sum", "mul", "cat"):
            raise ValueError(f"reduce must be 'sum', 'mul' or 'cat', got {reduce!r}")
        strides = {b.stride for b in branches}
        if len(strides) != 1:
            raise ValueError(f"parallel branches need one temporal stride, got {sorted(strides)}")
        stride = strides.pop()
        delay = max(b.delay for b in branches)
        aligned = []
        for b in branches:
            gap = delay - b.delay
            if gap == 0:
                aligned.append(b)
            elif gap % stride == 0:
                aligned.append(CoSequential(b, CoDelay(gap // stride)))
            else:
                aligned.append(CoSequential(CoDelay(gap), b))
        self.branches = nn.ModuleList(aligned)
        self.reduce = reduce
        self.delay, self.stride = delay, stride

    def init_state(self, batch_size: int) -> State:
        return [b.init_state(batch_size) for b in self.branches]

    def step_masked(self, x, valid, reset, state):
        outs = []
        out_valid = None
        for i, b in enumerate(self.branches):
            y, v, state[i] = b.step_masked(x, valid, reset, state[i])
            outs.append(y)
            out_valid = v if i == 0 else out_valid
        if outs[0] is None:
            return None, None, state
        if self.reduce == "cat":
            return torch.cat(outs, dim=1), out_valid, state
        y = outs[0]
        for o in outs[1:]:
            y = y + o if self.reduce == "sum" else y * o
        return y, out_valid, state


class Parallel(nn.Module):
    """Offline counterpart of ``CoParallel`` (branches on one input, reduced)."""

    def __init__(self, branches: Sequence[nn.Module], reduce: str = "sum"):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.reduce = reduce

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        if self.reduce == "cat":
            return torch.cat(outs, dim=1)
        y = outs[0]
        for o in outs[1:]:
            y = y + o if self.reduce == "sum" else y * o
        return y
