"""Causal squeeze-and-excitation (offline form) and its continual form."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.video.continual.base import CoModule, advance, reset_without_input
from operators.video.continual.buffers import history_buffer, push_active
from operators.video.continual.state import State


def _window_mean_divisor(t_before: np.ndarray, window: int) -> Tensor:
    return torch.from_numpy(np.minimum(t_before + 1, window).astype(np.float32))


class CausalSqueezeExcitation(nn.Module):
    """Offline squeeze-and-excitation whose squeeze is causal: the channel means of frame
    ``t`` averaged over frames ``max(0, t-window+1)..t``.

    Clip-global SE (the mean over the whole clip) depends on future frames; this is its
    streaming equivalent. ``block`` maps ``[B, C, T, 1, 1]`` means to gates (for the
    fvcore/pytorchvideo SE: conv1x1x1, ReLU, conv1x1x1, sigmoid), so checkpoints load as is.
    """

    def __init__(self, block: nn.Module, window: int):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.block = block
        self.window = window

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(3, 4))
        csum = F.pad(m.cumsum(dim=2), (1, 0))
        T = m.shape[2]
        idx = torch.arange(T, device=x.device)
        lo = (idx + 1 - self.window).clamp(min=0)
        mean = (csum[:, :, idx + 1] - csum[:, :, lo]) / (idx + 1 - lo).to(x.dtype)
        return x * self.block(mean[..., None, None])


class CoCausalSqueezeExcitation(CoModule):
    """Continual ``CausalSqueezeExcitation`` (delay 0): keeps the last ``window-1`` frame means."""

    def __init__(self, se: CausalSqueezeExcitation):
        super().__init__()
        self.se = se
        self.window = se.window

    def init_state(self, batch_size: int) -> State:
        return {"t": np.zeros(batch_size, dtype=np.int64), "buf": None}

    def step_masked(self, x, valid, reset, state):
        t = state["t"]
        if x is None:
            reset_without_input(t, reset)
            return None, None, state
        batch = x.shape[0]
        w = self.window
        init, _, active = advance(t, batch, valid, reset, 0, 1)
        m = x.mean(dim=(2, 3))
        if w == 1:
            mean = m
        else:
            buf = history_buffer(state, m, w - 1, init, 0.0)
            mean = (buf.sum(1) + m) / _window_mean_divisor(t - 1, w).view(-1, 1)
            push_active(buf, m, active if valid is not None else None)
        gate = self.se.block(mean[:, :, None, None, None])[:, :, 0]
        return x * gate, valid, state
