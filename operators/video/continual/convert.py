"""Converting a trained 3D CNN to its continual form (``from_module``) and fusing BatchNorm."""

from typing import Any, Callable, Dict, Type

import torch
from torch import nn

from operators.video.continual.base import CoModule
from operators.video.continual.containers import CoParallel, CoSequential, Parallel
from operators.video.continual.conv import CoConv3d
from operators.video.continual.per_frame import PER_FRAME_TYPES, CoBatchNorm, CoPerFrame
from operators.video.continual.pooling import CoPool3d, CoSlidingGlobalAvgPool, SlidingGlobalAvgPool
from operators.video.continual.squeeze_excitation import CausalSqueezeExcitation, CoCausalSqueezeExcitation

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
