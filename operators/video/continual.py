"""Continual 3D CNNs: one frame in, one result out, equal to the offline forward pass.

A 3D CNN trained on clips (``[B, C, T, H, W]``) is re-organised so that every new frame
(``[B, C, H, W]``) costs one frame's worth of work (Hedegaard & Iosifidis, *Continual 3D
Convolutional Neural Networks*, CoX3D). The pure core is
``step(frame, state, reset) -> (output, state)`` with all stream state explicit.

Semantics (checked against ``continual-inference`` 1.2.4, re-implemented here):

* ``CoConv3d``: ``y_t = b + Σ_j W_j·x_{t-k+1+j}``: each new frame meets every temporal
  kernel slice once (one output frame of work). The state keeps the last ``k`` input frames
  and the output is one ``conv3d`` over them (faster on CPU than the library's partial-sum
  buffer, same MACs). Temporal padding ``p`` only exists at stream start (zeros, or
  ``replicate``: the first frame repeated). The first output appears after
  ``delay = k-1-p`` frames; temporal stride ``s`` is a per-stream phase counter: an output
  every ``s`` steps, ``None`` in between (and no conv is run then).
* Sequential composition: ``delay = d_1 + s_1 * d_2``, ``stride = s_1 * s_2``.
* ``CoParallel`` / residual: branches with different delays are aligned with ``CoDelay``
  buffers automatically (a branch's output index ``n`` meets the other branches' index ``n``).
* Per-frame layers (BatchNorm in eval, activations, spatial-only convs and pools, dropout in
  eval) are applied to each frame unchanged.
* Clip-global operations have no streaming form. They become causal equivalents, and the
  offline network is then defined with those equivalents (so stepped == offline holds):
  squeeze-and-excitation over the whole clip → ``CausalSqueezeExcitation`` (mean over the
  last ``window`` frames, fewer at stream start); global temporal average pooling →
  ``SlidingGlobalAvgPool`` (mean over the last ``window`` frames).

Batches hold independent streams. ``reset[b]`` starts a new stream in row ``b`` at this
step. Rows whose module has no output this step (stride phase, warm-up after a reset) are
tracked with a per-stream mask; ``step`` returns ``None`` when no row has an output.

State is a tree of dicts/lists holding torch tensors (frame buffers) and numpy ``int64``
phase counters, every one with the stream (batch) as its first dimension, so states of
separate streams stack into one batch and split again (``stack_states``/``split_states``).
For speed the state passed to ``step`` is *consumed*: its buffers are updated in place and
returned (like JAX buffer donation); ``clone_state`` keeps a copy. ``state_to_numpy`` /
``state_from_numpy`` convert it for Beam state coders; ``map_state`` maps a function over
its leaves.

Deliberately unlike the library (bugs seen in 1.2.4): temporal dilation other than 1 is
rejected for convs and pools; a state whose batch size differs from the input raises
instead of broadcasting.
"""

from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Any
Mask = Optional[np.ndarray]

PER_FRAME_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout3d,
)


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
        counter = _first_counter(state)
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

    def forward_steps(self, clip: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """Steps through a clip ``[B, C, T, ...]`` and stacks the outputs along time."""
        state = self.init_state(clip.shape[0]) if state is None else state
        outs = []
        for t in range(clip.shape[2]):
            y, state = self.step(clip[:, :, t], state)
            if y is not None:
                outs.append(y)
        if not outs:
            raise ValueError(f"{clip.shape[2]} frames produce no output (delay {self.delay})")
        return torch.stack(outs, dim=2), state


def _first_counter(state: State) -> Optional[np.ndarray]:
    """The first per-stream phase counter in a state tree (its length is the batch size)."""
    if isinstance(state, dict):
        if "t" in state:
            return state["t"]
        state = list(state.values())
    if isinstance(state, list):
        for item in state:
            found = _first_counter(item)
            if found is not None:
                return found
    return None


def _advance(
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


def _rows(mask: np.ndarray) -> Tensor:
    return torch.from_numpy(np.flatnonzero(mask))


def _batch_check_none(t: np.ndarray, reset: Mask) -> None:
    if reset is not None:
        if reset.shape[0] != t.shape[0]:
            raise ValueError(f"state holds {t.shape[0]} stream(s) but reset has {reset.shape[0]}")
        t[reset] = 0


class CoConv3d(CoModule):
    """Continual ``nn.Conv3d`` (weights shared with the wrapped module).

    The state is a buffer of the stream's last ``k`` input frames (oldest first); each
    output is one ``conv3d`` over that window, i.e. every temporal kernel slice ``W_j``
    touches the new frame once, the cost of one output frame. This is mathematically the
    partial-sum formulation (``y_t = b + Σ_j W_j·x_{t-k+1+j}``) but runs as a single
    optimised depthwise/dense kernel instead of a grouped conv with channel multiplier plus
    ``k-1`` additions, which measured 2–4× slower on CPU for X3D's depthwise convs.
    Temporal padding ``p`` fills the window at stream start (zeros or copies of the first
    frame); with stride ``s`` the conv only runs on output steps.

    Args:
        conv: The trained ``nn.Conv3d``; temporal dilation must be 1 and temporal padding
            at most ``k-1``.
        temporal_fill: ``"zeros"`` or ``"replicate"`` padding at stream start; defaults to
            ``"replicate"`` for ``padding_mode="replicate"``, else ``"zeros"``.
    """

    def __init__(self, conv: nn.Conv3d, temporal_fill: Optional[str] = None):
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError("string padding ('same'/'valid') is not supported; give ints")
        k, s, p, dil = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        if dil != 1:
            raise ValueError(f"temporal dilation {dil} is not supported (only 1)")
        if p > k - 1:
            raise ValueError(f"temporal padding {p} exceeds kernel size - 1 = {k - 1}")
        fill = temporal_fill or ("replicate" if conv.padding_mode == "replicate" else "zeros")
        if fill not in ("zeros", "replicate"):
            raise ValueError(f"temporal_fill must be 'zeros' or 'replicate', got {fill!r}")
        if conv.padding_mode not in ("zeros", fill):
            raise ValueError(f"padding_mode {conv.padding_mode!r} differs from temporal_fill {fill!r}")
        self.conv = conv
        self.k, self.stride, self.pad, self.fill = k, s, p, fill
        self.delay = k - 1 - p
        self.stateless = k == 1 and s == 1 and p == 0

    def _spatial_pad(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Pads non-zero spatial padding modes by hand (the conv then pads nothing)."""
        ph, pw = self.conv.padding[1:]
        if self.conv.padding_mode == "zeros" or (ph == 0 and pw == 0):
            return x, (ph, pw)
        return F.pad(x, (pw, pw, ph, ph), mode=self.conv.padding_mode), (0, 0)

    def init_state(self, batch_size: int) -> State:
        if self.stateless:
            return None
        return {"t": np.zeros(batch_size, dtype=np.int64), "window": None}

    def step_masked(self, x, valid, reset, state):
        conv = self.conv
        if self.stateless:
            if x is None:
                return None, None, state
            x, pad = self._spatial_pad(x)
            return F.conv2d(x, conv.weight[:, :, 0], conv.bias, conv.stride[1:], pad, conv.dilation[1:], conv.groups), valid, state
        t = state["t"]
        if x is None:
            _batch_check_none(t, reset)
            return None, None, state
        init, emit, active = _advance(t, x.shape[0], valid, reset, self.delay, self.stride)
        x, pad = self._spatial_pad(x)
        k = self.k
        win = state["window"]
        if win is None or win.shape[0] != x.shape[0] or win.shape[3:] != x.shape[2:]:
            if win is not None and not init.all():
                raise ValueError(f"frame size changed mid-stream: {tuple(win.shape[3:])} → {tuple(x.shape[2:])}")
            win = x.new_empty((x.shape[0], x.shape[1], k, *x.shape[2:]))
            state["window"] = win
        keep = None if valid is None else win[_rows(~active)].clone()
        if init.any():
            rows = _rows(init)
            win[rows, :, 1:] = x[rows].unsqueeze(2) if self.fill == "replicate" else 0.0
        for i in range(k - 1):
            win[:, :, i].copy_(win[:, :, i + 1])
        win[:, :, k - 1].copy_(x)
        if keep is not None:
            win[_rows(~active)] = keep
        if emit is not None and not emit.any():
            return None, None, state
        y = F.conv3d(win, conv.weight, conv.bias, (1, *conv.stride[1:]), (0, *pad), 1, conv.groups)
        return y[:, :, 0], emit, state


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
            _batch_check_none(t, reset)
            return None, None, state
        batch = x.shape[0]
        init, emit, active = _advance(t, batch, valid, reset, self.delay, self.stride)
        z = self._spatial(x)
        k = self.k
        if k == 1:
            y = z
        else:
            buf = _history(state, z, k - 1, init, float("-inf") if self.is_max else 0.0)
            if self.is_max:
                y = torch.maximum(buf.amax(1), z)
            else:
                y = (buf.sum(1) + z) / k
            _push_active(buf, z, active if valid is not None else None)
        if emit is not None and not emit.any():
            return None, None, state
        return y, emit, state


def _shift_in(buf: Tensor, x: Tensor) -> None:
    """Per stream (dim 0), drops the oldest entry of ``buf`` (dim 1), moves the rest one
    place down and puts ``x`` last, in place."""
    if buf.shape[1] > 1:
        buf[:, :-1] = buf[:, 1:].clone()
    buf[:, -1] = x


def _history(state: Dict[str, Any], z: Tensor, length: int, init: np.ndarray, fill: float) -> Tensor:
    """``state["buf"]``: per stream, the last ``length`` per-frame values like ``z`` ``[B, ...]``.

    (Re)allocated, filled with ``fill``, when the batch or frame shape changes; rows that
    start a stream now (``init``) are reset to ``fill``.
    """
    buf = state["buf"]
    if buf is None or buf.shape[0] != z.shape[0] or buf.shape[2:] != z.shape[1:]:
        buf = z.new_full((z.shape[0], length, *z.shape[1:]), fill)
        state["buf"] = buf
    elif init.any():
        buf[_rows(init)] = fill
    return buf


def _push_active(buf: Tensor, z: Tensor, active: Optional[np.ndarray]) -> None:
    """``_shift_in`` for the rows in ``active`` (all when ``None``); the others keep theirs."""
    keep = None if active is None else buf[_rows(~active)]
    _shift_in(buf, z)
    if keep is not None:
        buf[_rows(~active)] = keep


def _triple(v) -> Tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


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
            _batch_check_none(t, reset)
            return None, None, state
        _, emit, active = _advance(t, x.shape[0], valid, reset, self.n, 1)
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
            _batch_check_none(t, reset)
            return None, None, state
        batch = x.shape[0]
        w = self.window
        init, _, active = _advance(t, batch, valid, reset, 0, 1)
        m = x.mean(dim=(2, 3))
        if w == 1:
            mean = m
        else:
            buf = _history(state, m, w - 1, init, 0.0)
            mean = (buf.sum(1) + m) / _window_mean_divisor(t - 1, w).view(-1, 1)
            _push_active(buf, m, active if valid is not None else None)
        gate = self.se.block(mean[:, :, None, None, None])[:, :, 0]
        return x * gate, valid, state


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


_CONVERTERS: Dict[Type[nn.Module], Callable[..., CoModule]] = {}


def register_converter(cls: Type[nn.Module], fn: Callable[..., CoModule]) -> None:
    """Teaches ``from_module`` to convert ``cls``; ``fn(module, **options) -> CoModule``."""
    _CONVERTERS[cls] = fn


def from_module(module: nn.Module, **options: Any) -> CoModule:
    """Converts a trained regular 3D CNN into its continual form, sharing its weights.

    Known: ``Conv3d``, ``AvgPool3d``, ``MaxPool3d``, ``BatchNorm3d`` (eval statistics),
    elementwise activations, ``Dropout`` (eval), ``Softmax(dim=1)``, ``Sequential``,
    ``Parallel``, ``CausalSqueezeExcitation``, ``SlidingGlobalAvgPool`` and any class given to
    ``register_converter``. Options (e.g. ``temporal_fill``) are passed to converters.

    Raises:
        TypeError: For a module with no continual form (e.g. clip-global
            ``AdaptiveAvgPool3d``), naming its causal replacement where there is one.
    """
    for cls in type(module).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls](module, **options)
    if isinstance(module, CoModule):
        return module
    if isinstance(module, nn.Conv3d):
        return CoConv3d(module, options.get("temporal_fill"))
    if isinstance(module, (nn.AvgPool3d, nn.MaxPool3d)):
        return CoPool3d(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return CoBatchNorm(module)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        if module.dim != 1:
            raise TypeError(f"{type(module).__name__}(dim={module.dim}) is not per-frame; use dim=1")
        return CoPerFrame(module)
    if isinstance(module, PER_FRAME_TYPES):
        return CoPerFrame(module)
    if isinstance(module, nn.Sequential):
        return CoSequential(*[from_module(m, **options) for m in module])
    if isinstance(module, Parallel):
        return CoParallel([from_module(b, **options) for b in module.branches], module.reduce)
    if isinstance(module, CausalSqueezeExcitation):
        return CoCausalSqueezeExcitation(module)
    if isinstance(module, SlidingGlobalAvgPool):
        return CoSlidingGlobalAvgPool(module.window)
    if isinstance(module, (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)):
        raise TypeError(
            f"{type(module).__name__} pools over the whole clip; replace it with "
            "SlidingGlobalAvgPool(window) (or a temporal AvgPool3d) before converting"
        )
    raise TypeError(f"no continual form for {type(module).__name__}; add one with register_converter")


def _fold_batchnorm(co: CoConv3d, bn: nn.modules.batchnorm._BatchNorm) -> CoConv3d:
    conv = co.conv
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.weight is not None else 1 / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shift = bn.bias if bn.bias is not None else 0.0
        fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return CoConv3d(fused.eval(), co.fill)


def fuse(co: CoModule) -> CoModule:
    """Folds every BatchNorm into the convolution right before it and flattens nested
    sequences: fewer passes over memory per frame, same outputs (to float rounding).

    The fused convs get new weights (no longer shared with the regular module); delay and
    stride are unchanged. Returns the (modified) module.
    """
    if isinstance(co, CoParallel):
        for i, b in enumerate(co.branches):
            co.branches[i] = fuse(b)
        return co
    if not isinstance(co, CoSequential):
        return co
    flat: list = []
    for m in co.layers:
        m = fuse(m)
        flat.extend(m.layers if isinstance(m, CoSequential) else [m])
    out: list = []
    for m in flat:
        if isinstance(m, CoBatchNorm) and out and isinstance(out[-1], CoConv3d):
            out[-1] = _fold_batchnorm(out[-1], m.bn)
        else:
            out.append(m)
    co.layers = nn.ModuleList(out)
    return co


def map_state(fn: Callable[[Any], Any], tree: State) -> State:
    """Applies ``fn`` to every leaf of a state tree (nested dicts and lists), keeping its shape."""
    if isinstance(tree, dict):
        return {k: map_state(fn, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_state(fn, v) for v in tree]
    return fn(tree)


def _clone_leaf(leaf: Any) -> Any:
    if isinstance(leaf, Tensor):
        return leaf.clone()
    if isinstance(leaf, np.ndarray):
        return leaf.copy()
    return leaf


def _leaf_to_numpy(leaf: Any) -> Any:
    return leaf.detach().cpu().numpy() if isinstance(leaf, Tensor) else leaf


def clone_state(state: State) -> State:
    """Deep copy of a state tree (``step`` consumes the state it is given)."""
    return map_state(_clone_leaf, state)


def state_to_numpy(state: State) -> State:
    """The state tree with every tensor as a numpy array (picklable, for Beam state)."""
    return map_state(_leaf_to_numpy, state)


def state_from_numpy(tree: State) -> State:
    """Inverse of ``state_to_numpy``: float arrays back to tensors, counters stay numpy."""
    if isinstance(tree, dict):
        return {k: (v if k == "t" else state_from_numpy(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [state_from_numpy(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.array(tree, copy=True))
    return tree


def _batch_of(tree: State) -> int:
    counter = _first_counter(tree)
    return 1 if counter is None else int(counter.shape[0])


def _zeros_like_tree(template: State, batch: int) -> State:
    def zeros(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray):
            return np.zeros((batch, *leaf.shape[1:]), dtype=leaf.dtype)
        return leaf

    return map_state(zeros, template)


def stack_states(states: Sequence[State]) -> State:
    """Stacks numpy states of separate streams (``state_to_numpy`` form) into one batch.

    A buffer not yet allocated in some streams (fresh streams allocate lazily) is filled
    with zeros there: a stream's buffers are re-initialised at its first frame anyway.
    """
    first = next((s for s in states if s is not None), None)
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: stack_states([s[k] for s in states]) for k in first}
    if isinstance(first, list):
        filled = [s if s is not None else _zeros_like_tree(first, 1) for s in states]
        return [stack_states([s[i] for s in filled]) for i in range(len(first))]
    parts = []
    for s in states:
        parts.append(s if s is not None else np.zeros((1, *first.shape[1:]), dtype=first.dtype))
    return np.concatenate(parts, axis=0)


def split_states(state: State) -> list:
    """Inverse of ``stack_states``: one numpy state per stream (copies)."""
    def stream(i: int) -> State:
        return map_state(lambda leaf: leaf[i : i + 1].copy() if isinstance(leaf, np.ndarray) else leaf, state)

    return [stream(i) for i in range(_batch_of(state))]


class StreamStepper:
    """Runs a continual module on one stream with numpy frames and numpy state.

    This is what keyed stateful runners (Beam state, checkpoints) hold: the state goes in
    and out as a numpy tree, so any pickle-based coder can store it between frames.

    Args:
        module: The continual network (in eval mode).
        preprocess: Maps one input frame (e.g. ``[H, W, 3]`` uint8) to ``[C, H, W]`` float.
    """

    def __init__(self, module: CoModule, preprocess: Callable[[np.ndarray], Tensor]):
        self.module = module.eval()
        self.preprocess = preprocess

    @property
    def delay(self) -> int:
        """Frames before the first output."""
        return self.module.delay

    @property
    def stride(self) -> int:
        """Frames between outputs."""
        return self.module.stride

    def init_state(self) -> State:
        """A fresh single-stream state, as numpy."""
        return state_to_numpy(self.module.init_state(1))

    def step(self, frame: np.ndarray, state: State) -> Tuple[Optional[np.ndarray], State]:
        """One frame in; ``(output [..] as float32 numpy or None, new numpy state)``."""
        with torch.inference_mode():
            x = self.preprocess(frame).unsqueeze(0)
            y, new = self.module.step(x, state_from_numpy(state))
            out = None if y is None else y[0].float().numpy().copy()
            return out, state_to_numpy(new)

    def step_many(
        self, frames: Sequence[np.ndarray], states: Sequence[State]
    ) -> Tuple[list, list]:
        """Steps one frame of each of several streams as one batch (faster per frame).

        Returns:
            ``(outputs, states)``: per stream, its output (or ``None``) and its new numpy state.
        """
        with torch.inference_mode():
            x = torch.stack([self.preprocess(f) for f in frames])
            batch = state_from_numpy(stack_states(list(states)))
            y, valid, batch = self.module.step_masked(x, None, None, batch)
            new = split_states(state_to_numpy(batch))
            outs = [
                None if y is None or (valid is not None and not valid[i]) else y[i].float().numpy().copy()
                for i in range(len(frames))
            ]
        return outs, new

    def steps(self, frames: Iterable[np.ndarray]) -> Iterator[Tuple[int, np.ndarray]]:
        """Streams ``(frame index, output)`` for every frame that completes an output,
        keeping the state as tensors between frames (no numpy round trip)."""
        state = self.module.init_state(1)
        with torch.inference_mode():
            for t, frame in enumerate(frames):
                y, state = self.module.step(self.preprocess(frame).unsqueeze(0), state)
                if y is not None:
                    yield t, y[0].float().numpy().copy()
