"""X3D-S/M whose state-dict keys match pytorchvideo's public checkpoints.

Module names and nesting follow ``pytorchvideo.models.x3d.create_x3d`` (``blocks.0`` stem,
``blocks.1-4`` residual stages, ``blocks.5`` head), so ``X3D_S.pyth`` / ``X3D_M.pyth`` load
with ``strict=True`` from a local path. Facts carried over (not code): the stem's
``conv.conv_t`` is the *spatial* 1×3×3 conv and ``conv.conv_xy`` the depthwise temporal 5×1×1
conv (pytorchvideo swaps the names); SE (fvcore) sits in ``norm_b.1`` with parameters
``block.0`` / ``block.2``, in every other block of a stage (blocks 0, 2, 4, …); widths come
from ``round_width`` with divisor 8; depths are ``ceil(2.2 · [1, 2, 5, 3])``.

The continual form (CoX3D, one frame at a time) is ``operators.video.co_x3d``; the causal
variants it needs (``make_se_causal``, ``set_temporal_window``) are defined here, on the
offline network, so that ``Net.forward_frames`` is the reference of the stepped output.
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from operators.video.continual.squeeze_excitation import CausalSqueezeExcitation


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """Channel count ``width·multiplier`` rounded to a multiple of ``divisor`` (X3D rule)."""
    scaled = width * multiplier
    out = max(min_width, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


class Swish(nn.Module):
    """``x · sigmoid(x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def _bn(c: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(c, eps=1e-5, momentum=0.1)


class SqueezeExcitation(nn.Module):
    """fvcore's 3D SE: ``x · sigmoid(conv(relu(conv(mean_{T,H,W} x))))`` over the whole clip."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv3d(channels, reduced, 1), nn.ReLU(), nn.Conv3d(reduced, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.block(x.mean(dim=(2, 3, 4), keepdim=True))


class Conv2plus1d(nn.Module):
    """Stem convs applied ``conv_t`` then ``conv_xy`` (pytorchvideo naming, see module doc)."""

    def __init__(self, conv_t: nn.Module, conv_xy: nn.Module):
        super().__init__()
        self.conv_t, self.conv_xy = conv_t, conv_xy

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_xy(self.conv_t(x))


class ResNetBasicStem(nn.Module):
    """Stem: ``conv`` → ``norm`` → ``activation``."""

    def __init__(self, conv: nn.Module, norm: nn.Module, activation: nn.Module):
        super().__init__()
        self.conv, self.norm, self.activation = conv, norm, activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.norm(self.conv(x)))


class BottleneckBlock(nn.Module):
    """1×1×1 → depthwise 3×3×3 (+SE in ``norm_b``) → 1×1×1, with BN after each conv."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: Tuple[int, int, int], se_reduced: int):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = _bn(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, 3, stride=stride, padding=1, bias=False, groups=dim_inner)
        se = SqueezeExcitation(dim_inner, se_reduced) if se_reduced else nn.Identity()
        self.norm_b = nn.Sequential(_bn(dim_inner), se)
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = _bn(dim_out)

    def layers(self) -> List[nn.Module]:
        """The block's modules in application order."""
        return [self.conv_a, self.norm_a, self.act_a, self.conv_b, self.norm_b, self.act_b, self.conv_c, self.norm_c]

    def forward(self, x: Tensor) -> Tensor:
        for m in self.layers():
            x = m(x)
        return x


class ResBlock(nn.Module):
    """``activation(shortcut(x) + branch2(x))``; the shortcut is a strided 1×1×1 conv + BN
    when the shape changes, else the identity."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: Tuple[int, int, int], se_reduced: int):
        super().__init__()
        needs_proj = dim_in != dim_out or math.prod(stride) > 1
        self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False) if needs_proj else None
        self.branch1_norm = nn.BatchNorm3d(dim_out) if dim_in != dim_out else None
        self.branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, stride, se_reduced)
        self.activation = nn.ReLU()

    def shortcut(self) -> List[nn.Module]:
        """The shortcut's modules in application order (empty for the identity)."""
        return [m for m in (self.branch1_conv, self.branch1_norm) if m is not None]

    def forward(self, x: Tensor) -> Tensor:
        s = x
        for m in self.shortcut():
            s = m(s)
        return self.activation(s + self.branch2(x))


class ResStage(nn.Module):
    """Residual blocks in sequence (``res_blocks``)."""

    def __init__(self, res_blocks: Sequence[nn.Module]):
        super().__init__()
        self.res_blocks = nn.ModuleList(res_blocks)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.res_blocks:
            x = b(x)
        return x


class ProjectedPool(nn.Module):
    """Head pooling: 1×1×1 conv + BN + ReLU, ``AvgPool3d``, 1×1×1 conv + ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, pool_kernel: Tuple[int, int, int]):
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.pre_norm = _bn(dim_inner)
        self.pre_act = nn.ReLU()
        self.pool = nn.AvgPool3d(pool_kernel, stride=1)
        self.post_conv = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.post_act = nn.ReLU()

    def layers(self) -> List[nn.Module]:
        """The modules in application order."""
        return [self.pre_conv, self.pre_norm, self.pre_act, self.pool, self.post_conv, self.post_act]

    def forward(self, x: Tensor) -> Tensor:
        for m in self.layers():
            x = m(x)
        return x


class ResNetBasicHead(nn.Module):
    """``pool`` → dropout → per-position linear ``proj`` → optional softmax over classes →
    global average (``output_pool``)."""

    def __init__(self, pool: ProjectedPool, dim_out: int, num_classes: int, dropout: float, softmax: bool):
        super().__init__()
        self.pool = pool
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.proj = nn.Linear(dim_out, num_classes)
        self.activation = nn.Softmax(dim=1) if softmax else None
        self.output_pool = nn.AdaptiveAvgPool3d(1)

    def per_position(self, x: Tensor) -> Tensor:
        """Class scores at every remaining position, ``[B, classes, T', H', W']``."""
        x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x if self.activation is None else self.activation(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_pool(self.per_position(x)).flatten(1)


class Net(nn.Module):
    """X3D: ``blocks`` = stem, four residual stages, head."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, clip: Tensor) -> Tensor:
        """Clip ``[B, 3, T, H, W]`` → class scores ``[B, classes]``."""
        for b in self.blocks:
            clip = b(clip)
        return clip

    def forward_frames(self, stream: Tensor) -> Tensor:
        """Offline reference for CoX3D: ``[B, 3, T, H, W]`` → ``[B, classes, T-window+1]``
        (the head pool over each window of frames, the final average over space only)."""
        for b in self.blocks[:-1]:
            stream = b(stream)
        return self.blocks[-1].per_position(stream).mean(dim=(3, 4))


def create_x3d(
    *,
    clip_length: int = 13,
    crop_size: int = 160,
    num_classes: int = 400,
    width_factor: float = 2.0,
    depth_factor: float = 2.2,
    stem_dim_in: int = 12,
    bottleneck_factor: float = 2.25,
    se_ratio: float = 0.0625,
    head_dim_out: int = 2048,
    dropout: float = 0.5,
    se_window: Optional[int] = None,
    head_softmax: bool = False,
) -> Net:
    """Builds X3D as pytorchvideo's ``create_x3d`` does (same structure and key names).

    Args:
        clip_length: Frames per clip; sets the head's temporal pool size.
        crop_size: Input height/width; sets the head's spatial pool size (``ceil(crop/32)``).
        se_window: ``None`` for clip-global SE (the published model); an integer for
            causal SE over that many frames (the form CoX3D runs, see ``operators.video.co_x3d``).
        head_softmax: Softmax over classes before the final average (pytorchvideo 0.1.5's
            default; later versions default to raw scores). It has no weights.
    """
    stem_out = round_width(stem_dim_in, width_factor)
    stem = ResNetBasicStem(
        Conv2plus1d(
            nn.Conv3d(3, stem_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(stem_out, stem_out, (5, 1, 1), padding=(2, 0, 0), bias=False, groups=stem_out),
        ),
        _bn(stem_out),
        nn.ReLU(),
    )
    blocks: List[nn.Module] = [stem]
    dims = [stem_dim_in]
    for _ in range(3):
        dims.append(round_width(dims[-1], 2.0))
    dim_in = stem_out
    for base, repeats in zip(dims, (1, 2, 5, 3)):
        dim_out = round_width(base, width_factor)
        dim_inner = int(bottleneck_factor * dim_out)
        depth = int(math.ceil(depth_factor * repeats))
        res = []
        for i in range(depth):
            se_reduced = round_width(dim_inner, se_ratio) if se_ratio > 0 and i % 2 == 0 else 0
            res.append(ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, (1, 2, 2) if i == 0 else (1, 1, 1), se_reduced))
        blocks.append(ResStage(res))
        dim_in = dim_out
    spatial = int(math.ceil(crop_size / 32))
    head_pool = ProjectedPool(dim_in, dim_inner, head_dim_out, (clip_length, spatial, spatial))
    blocks.append(ResNetBasicHead(head_pool, head_dim_out, num_classes, dropout, head_softmax))
    net = Net(blocks)
    if se_window is not None:
        make_se_causal(net, se_window)
    return net


def x3d_s(num_classes: int = 400, clip_length: int = 13, crop_size: int = 160, **kwargs) -> Net:
    """X3D-S: 13×160² clips (pytorchvideo ``x3d_s``); the sizes only set the head pool."""
    return create_x3d(clip_length=clip_length, crop_size=crop_size, num_classes=num_classes, **kwargs)


def x3d_m(num_classes: int = 400, clip_length: int = 16, crop_size: int = 224, **kwargs) -> Net:
    """X3D-M: 16×224² clips (pytorchvideo ``x3d_m``); the sizes only set the head pool."""
    return create_x3d(clip_length=clip_length, crop_size=crop_size, num_classes=num_classes, **kwargs)


def make_se_causal(net: nn.Module, window: int) -> nn.Module:
    """Replaces every clip-global SE by ``CausalSqueezeExcitation`` over ``window`` frames,
    sharing its weights (the state-dict keys do not change)."""
    for module in net.modules():
        if isinstance(module, BottleneckBlock) and isinstance(module.norm_b[1], SqueezeExcitation):
            module.norm_b[1] = CausalSqueezeExcitation(module.norm_b[1].block, window)
    return net


def set_temporal_window(net: Net, window: int) -> Net:
    """Sets the head's temporal pool to ``window`` frames (no weights change)."""
    pool = net.blocks[-1].pool
    k = pool.pool.kernel_size
    pool.pool = nn.AvgPool3d((window, k[1], k[2]), stride=1)
    return net


def load_x3d(path: str, variant: str = "s", num_classes: int = 400, **kwargs) -> Net:
    """Builds X3D-S/M and loads a local pytorchvideo checkpoint with ``weights_only=True``.

    Accepts a bare state dict or pytorchvideo's ``{"model_state": ...}`` file.
    """
    builders = {"s": x3d_s, "m": x3d_m}
    if variant not in builders:
        raise ValueError(f"variant must be one of {sorted(builders)}, got {variant!r}")
    net = builders[variant](num_classes=num_classes, **kwargs)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    net.load_state_dict(state, strict=True)
    return net.eval()


# pytorchvideo's Kinetics transform for X3D: scale to [0, 1], then normalise.
X3D_MEAN = (0.45, 0.45, 0.45)
X3D_STD = (0.225, 0.225, 0.225)
VARIANTS = ("s", "m", "tiny")


def x3d_preprocess(frame: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB → ``[3, H, W]`` float32 normalised as for X3D training."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(X3D_MEAN).view(3, 1, 1)
    std = torch.tensor(X3D_STD).view(3, 1, 1)
    return (x - mean) / std


def build_x3d(variant: str, num_classes: int = 400, weights: Optional[str] = None, seed: int = 0) -> Net:
    """X3D-S/M (or a ``tiny`` smoke-test variant): from a local checkpoint, else seeded
    random weights."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if weights is not None:
        if variant == "tiny":
            raise ValueError("the tiny variant has no published checkpoint; drop --weights")
        return load_x3d(weights, variant, num_classes)
    torch.manual_seed(seed)
    if variant == "tiny":
        net = create_x3d(clip_length=4, crop_size=32, num_classes=num_classes, width_factor=1.0, depth_factor=0.5,
                         stem_dim_in=4, bottleneck_factor=1.5, head_dim_out=16)
    else:
        net = {"s": x3d_s, "m": x3d_m}[variant](num_classes=num_classes)
    return net.eval()
