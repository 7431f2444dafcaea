"""Per-frame layers: activations, dropout, softmax and eval-mode BatchNorm applied to each frame."""

from typing import Callable, Optional, Tuple, Type

import torch.nn.functional as F
from torch import Tensor, nn

from operators.video.continual.base import CoModule

PER_FRAME_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout3d,
)


class CoPerFrame(CoModule):
    """A per-frame layer: ``fn`` is applied to each frame ``[B, C, H, W]`` unchanged."""

    def __init__(self, module: nn.Module, fn: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        self.module = module
        self.fn = fn

    def step_masked(self, x, valid, reset, state):
        if x is None:
            return None, None, state
        return (self.fn(x) if self.fn is not None else self.module(x)), valid, state


class CoBatchNorm(CoModule):
    """``nn.BatchNorm3d`` in eval mode (running statistics) applied to each frame."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        if bn.running_mean is None:
            raise ValueError("BatchNorm without running statistics cannot run per frame")
        self.bn = bn

    def step_masked(self, x, valid, reset, state):
        if x is None:
            return None, None, state
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps), valid, state
