"""Continual pools: temporal ``AvgPool3d`` / ``MaxPool3d`` and the sliding global average."""

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.video.continual.base import CoModule, advance, reset_without_input
from operators.video.continual.buffers import history_buffer, push_active
from operators.video.continual.state import State


def _triple(v) -> Tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class CoPool3d(CoModule):
    """Continual ``nn.AvgPool3d`` / ``nn.MaxPool3d``: spatial pooling per frame, then a
    sliding temporal window over the last ``k`` pooled frames.

    Temporal padding pads zeros (avg, ``count_include_pad=True``) or ``-inf`` (max) at
    stream start only, as the regular pools do.
    """

    def __init__(self, pool: nn.Module):
        super().__init__()
        ks, st, pd = (_triple(pool.kernel_size), _triple(pool.stride or pool.kernel_size), _triple(pool.padding))
        self.is_max = isinstance(pool, nn.MaxPool3d)
        if self.is_max:
            if _triple(pool.dilation) != (1, 1, 1):
                raise ValueError("MaxPool3d with dilation is not supported")
            if pool.return_indices:
                raise ValueError("MaxPool3d(return_indices=True) is not supported")
        else:
            if pool.divisor_override is not None:
                raise ValueError("AvgPool3d(divisor_override=...) is not supported")
            if pd[0] > 0 and not pool.count_include_pad:
                raise ValueError("AvgPool3d with temporal padding needs count_include_pad=True")
        if pool.ceil_mode:
            raise ValueError("ceil_mode=True is not supported for continual pools")
        self.pool = pool
        self.k, self.stride, self.pad = ks[0], st[0], pd[0]
        self.spatial = (ks[1:], st[1:], pd[1:])
        self.delay = self.k - 1 - self.pad

    def init_state(self, batch_size: int) -> State:
        return {"t": np.zeros(batch_size, dtype=np.int64), "buf": None}

    def _spatial(self, x: Tensor) -> Tensor:
        ks, st, pd = self.spatial
        if ks == (1, 1) and st == (1, 1):
            return x
        if self.is_max:
            return F.max_pool2d(x, ks, st, pd)
        return F.avg_pool2d(x, ks, st, pd, count_include_pad=self.pool.count_include_pad)

    def step_masked(self, x, valid, reset, state):
        t = state["t"]
        if x is None:
            reset_without_input(t, reset)
            return None, None, state
        batch = x.shape[0]
        init, emit, active = advance(t, batch, valid, reset, self.delay, self.stride)
        z = self._spatial(x)
        k = self.k
        if k == 1:
            y = z
        else:
            buf = history_buffer(state, z, k - 1, init, float("-inf") if self.is_max else 0.0)
            if self.is_max:
                y = torch.maximum(buf.amax(1), z)
            else:
                y = (buf.sum(1) + z) / k
            push_active(buf, z, active if valid is not None else None)
        if emit is not None and not emit.any():
            return None, None, state
        return y, emit, state


class SlidingGlobalAvgPool(nn.Module):
    """Offline streaming form of global average pooling: ``[B, C, T, H, W] → [B, C, T-w+1]``,
    the spatial mean averaged over each window of ``window`` consecutive frames."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool1d(x.mean(dim=(3, 4)), self.window, stride=1)


class CoSlidingGlobalAvgPool(CoModule):
    """Continual ``SlidingGlobalAvgPool``: frame ``[B, C, H, W]`` → ``[B, C]`` (delay ``w-1``)."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window
        self.inner = CoPool3d(nn.AvgPool3d((window, 1, 1), stride=1))
        self.delay = window - 1

    def init_state(self, batch_size: int) -> State:
        return self.inner.init_state(batch_size)

    def step_masked(self, x, valid, reset, state):
        if x is not None:
            x = x.mean(dim=(2, 3), keepdim=True)
        y, v, state = self.inner.step_masked(x, valid, reset, state)
        return (None if y is None else y[:, :, 0, 0]), v, state
