"""CoX3D: X3D (``operators.video.x3d``) run one frame at a time with the same weights.

The clip-global parts become causal (see ``operators.video.continual``): SE averages the
last ``window`` frames, the head's ``AvgPool3d`` covers the last ``window`` frames (16 or 64:
extendable, it has no weights) and the final global average only pools space. Importing this
module registers the X3D blocks with ``from_module``.
"""

import functools
from typing import Iterable, Optional

import torch
from torch import Tensor

from operators.video.continual.base import CoModule
from operators.video.continual.containers import CoParallel, CoSequential
from operators.video.continual.convert import from_module, fuse, register_converter
from operators.video.continual.per_frame import CoPerFrame
from operators.video.continual.squeeze_excitation import CausalSqueezeExcitation
from operators.video.continual.stepper import StreamStepper
from operators.video.x3d import (
    BottleneckBlock,
    Conv2plus1d,
    Net,
    ResBlock,
    ResNetBasicHead,
    ResNetBasicStem,
    ResStage,
    SqueezeExcitation,
    Swish,
    build_x3d,
    make_se_causal,
    set_temporal_window,
    x3d_preprocess,
)


def co_x3d(net: Net, window: int = 16, fused: bool = False) -> CoModule:
    """CoX3D: the continual form of ``net`` (weights shared), one frame in, scores out.

    SE becomes causal over ``window`` frames and the head pools the last ``window`` frames
    (16 or 64 …, independent of the training clip length). ``net`` is modified the same way,
    so ``net.forward_frames`` is the offline reference of the stepped output. ``fused=True``
    folds BatchNorm into the convolutions (faster; those weights are then copies).
    """
    net.eval()
    make_se_causal(net, window)
    set_temporal_window(net, window)
    co = from_module(net)
    return fuse(co) if fused else co


def co_x3d_stepper(
    variant: str = "s", window: int = 16, num_classes: int = 400, weights: Optional[str] = None, seed: int = 0
) -> StreamStepper:
    """A single-stream CoX3D runner on uint8 RGB frames (what the Beam transforms build)."""
    return StreamStepper(co_x3d(build_x3d(variant, num_classes, weights, seed), window, fused=True), x3d_preprocess)


def _pointwise_conv(proj: torch.nn.Module, x: Tensor) -> Tensor:
    """The head's ``1×1×1`` projection conv applied to one frame ``[B, C, H, W]``."""
    return torch.nn.functional.conv2d(x, proj.weight[:, :, None, None], proj.bias)


def _spatial_mean(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3))


def _per_frame_head(head: ResNetBasicHead, **options) -> CoModule:
    layers = [from_module(m, **options) for m in head.pool.layers()]
    layers.append(CoPerFrame(head.proj, functools.partial(_pointwise_conv, head.proj)))
    if head.activation is not None:
        layers.append(CoPerFrame(head.activation))
    layers.append(CoPerFrame(head.output_pool, _spatial_mean))
    return CoSequential(*layers)


def _co_sequence(modules: Iterable[torch.nn.Module], **options) -> CoSequential:
    """The continual forms of ``modules``, run one after another."""
    return CoSequential(*[from_module(m, **options) for m in modules])


def _co_swish(m: Swish, **options) -> CoModule:
    return CoPerFrame(m, torch.nn.functional.silu)


def _co_squeeze_excitation(m: SqueezeExcitation, **options) -> CoModule:
    """Clip-global SE has no causal form: it becomes SE over a sliding window of frames."""
    return from_module(CausalSqueezeExcitation(m.block, options.get("se_window", 16)))


def _co_res_block(m: ResBlock, **options) -> CoModule:
    shortcut = _co_sequence(m.shortcut(), **options)
    return CoSequential(CoParallel([shortcut, from_module(m.branch2, **options)]), from_module(m.activation, **options))


register_converter(Swish, _co_swish)
register_converter(SqueezeExcitation, _co_squeeze_excitation)
register_converter(Conv2plus1d, lambda m, **o: _co_sequence((m.conv_t, m.conv_xy), **o))
register_converter(ResNetBasicStem, lambda m, **o: _co_sequence((m.conv, m.norm, m.activation), **o))
register_converter(BottleneckBlock, lambda m, **o: _co_sequence(m.layers(), **o))
register_converter(ResBlock, _co_res_block)
register_converter(ResStage, lambda m, **o: _co_sequence(m.res_blocks, **o))
register_converter(ResNetBasicHead, _per_frame_head)
register_converter(Net, lambda m, **o: _co_sequence(m.blocks, **o))
