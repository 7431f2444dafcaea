"""FastConformer building blocks with NeMo's parameter names (no Beam import).

Every module keeps NVIDIA NeMo's attribute names, so a NeMo state dict loads with
``load_state_dict`` unchanged (``pre_encode.conv.{0,2,3,5,6}``, ``layers.{i}.self_attn.linear_pos``,
``layers.{i}.conv.batch_norm`` …). The modules hold weights only; streaming caches are explicit
arguments and return values, never attributes.
"""

import math
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CausalDwStridingSubsampling",
    "ConformerLayer",
    "PackedLinear",
    "relative_positions",
    "subsampled_length",
]

MASK_VALUE = -10000.0  # NeMo's INF_VAL: masked scores before the softmax.


def subsampled_length(lengths: torch.Tensor, stages: int = 3) -> torch.Tensor:
    """Frames after ``stages`` causal stride-2 convolutions (kernel 3, padding 2 + 1).

    Matches NeMo's ``calc_length`` (``floor(n / 2) + 1`` per stage), except that an empty input
    gives an empty output.
    """
    out = lengths.to(torch.long)
    for _ in range(stages):
        out = torch.div(out, 2, rounding_mode="floor") + 1
    return torch.where(lengths > 0, out, torch.zeros_like(out))


@lru_cache(maxsize=8)
def _sinusoid_table(d_model: int, max_len: int) -> torch.Tensor:
    """NeMo's relative sinusoid table for positions ``max_len-1 … -(max_len-1)`` (float32)."""
    positions = torch.arange(max_len - 1, -max_len, -1, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(positions.shape[0], d_model)
    table[:, 0::2] = torch.sin(positions * div_term)
    table[:, 1::2] = torch.cos(positions * div_term)
    return table


def relative_positions(d_model: int, num_keys: int, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoids for relative distances ``num_keys-1`` down to ``-(num_queries-1)``.

    Row ``k`` encodes distance ``num_keys - 1 - k`` (query position minus key position). Values come
    from one fixed table, so offline and streaming calls see bit-identical encodings.
    """
    max_len = 5000
    while max_len < max(num_keys, num_queries):
        max_len *= 2
    table = _sinusoid_table(d_model, max_len)
    start = max_len - num_keys
    return table[start : max_len - 1 + num_queries].to(dtype)


def _can_prepack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


_PREPACK = _can_prepack()
_PACK_MIN_WEIGHTS = 1 << 18  # 512×512: below this, the packed call's overhead outweighs it
_PACK_MIN_ROWS = 4  # fewer rows are matrix-vector products, which F.linear does without repacking


class _Prepacked:
    """Mixin for modules whose float32 CPU inference multiplies by weights pre-packed by oneDNN.

    A streaming step multiplies a few frames (14 at ``[70,13]``) by every weight matrix, so at
    batch 1 it is bound by reading the weights; ``F.linear`` repacks each matrix on every call,
    which doubles that traffic (measured: 4.1 vs 8.2 GB/s effective on one core). The packed
    copies are a memo of the weights (keyed by storage and version, so ``load_state_dict`` or an
    optimizer step invalidates them) and are never saved or pickled. The oneDNN call costs
    ~15 µs more than ``F.linear``, so small matrices (the embedded model's) and matrix-vector
    products (1–2 rows, e.g. a ``[70,0]`` step) keep ``F.linear``; so do gradients, other dtypes
    and devices. Results match ``F.linear`` to float32 rounding.
    """

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if (
            not _PREPACK or torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
            or weight.numel() < _PACK_MIN_WEIGHTS or x.numel() < _PACK_MIN_ROWS * x.shape[-1]
        ):
            return F.linear(x, weight, bias)
        key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
        memo = self.__dict__.setdefault("_packed", {})
        if key not in memo:
            if len(memo) >= 8:
                memo.clear()
            memo[key] = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        return torch.ops.mkldnn._linear_pointwise(x, memo[key], bias, "none", [], "")

    def __getstate__(self):
        state = super().__getstate__().copy()
        state.pop("_packed", None)
        return state


class PackedLinear(_Prepacked, nn.Linear):
    """``nn.Linear`` with pre-packed float32 CPU inference (see ``_Prepacked``); same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.weight, self.bias)


class CausalDwStridingSubsampling(nn.Module):
    """NeMo's causal ``dw_striding`` ×8 subsampling (``encoder.pre_encode``).

    Conv2d(1→C, 3×3, s2) → ReLU → [depthwise 3×3 s2 → pointwise 1×1 → ReLU]×2 → Linear(C·F′→d),
    every strided conv padded left 2 / right 1 in time and frequency. Time steps outside each row's
    ``[start, end)`` are zeroed before every stage, which equals the zero padding of a single
    unpadded stream: the output is independent of batch padding and of what precedes ``start``.
    """

    def __init__(self, feat_in: int, d_model: int, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
        )
        freq = feat_in
        for _ in range(3):
            freq = freq // 2 + 1
        self.out = PackedLinear(channels * freq, d_model)

    @staticmethod
    def _mask(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[2], device=x.device).unsqueeze(0)
        keep = (steps >= start.unsqueeze(1)) & (steps < end.unsqueeze(1))
        return x * keep[:, None, :, None].to(x.dtype)

    def forward(
        self, x: torch.Tensor, start: torch.Tensor, end: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Subsamples ``x [B, T, F]``; returns ``(y [B, T', d], start', end')``."""
        x = self._mask(x.unsqueeze(1), start, end)
        for first, last in ((0, 2), (2, 5), (5, 8)):
            x = F.pad(x, (2, 1, 2, 1))
            if first == 0:  # channels-last from here on: oneDNN's depthwise and 1×1 kernels run 2-3× faster
                # on it at live batch sizes (a one-channel tensor only takes the layout this way)
                x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
            for module in self.conv[first:last]:
                x = module(x)
            start = torch.div(start + 1, 2, rounding_mode="floor")
            end = torch.div(end, 2, rounding_mode="floor") + 1
            x = self._mask(x, start, end)
        batch, channels, steps, freq = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, steps, channels * freq)), start, end


class ConformerFeedForward(nn.Module):
    """Linear → Swish → Linear (``feed_forward{1,2}``)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = PackedLinear(d_model, d_ff)
        self.linear2 = PackedLinear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class ConformerConvolution(_Prepacked, nn.Module):
    """Pointwise → GLU → causal depthwise → norm → Swish → pointwise (``conv``).

    ``batch_norm`` is a LayerNorm for ``conv_norm_type: layer_norm`` (NeMo's streaming models) or a
    BatchNorm1d (eval statistics) for ``batch_norm``; NeMo keeps the key name either way.
    """

    def __init__(self, d_model: int, kernel_size: int, norm_type: str):
        super().__init__()
        self.kernel_size = kernel_size
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.norm_type = norm_type
        self.batch_norm = nn.LayerNorm(d_model) if norm_type == "layer_norm" else nn.BatchNorm1d(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor, cache: torch.Tensor, valid: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Runs the module on ``x [B, T, d]`` after the ``kernel−1`` cached frames ``cache [B, d, k−1]``.

        ``pad [B, T]`` marks frames past a stream's end (zeroed before the depthwise conv, as NeMo).
        Returns the output and the next cache: the ``k−1`` frames that precede the first of the
        ``valid [B]`` frames not yet consumed, so an idle stream keeps its cache.
        """
        h = F.glu(self._linear(x, self.pointwise_conv1.weight.squeeze(-1), self.pointwise_conv1.bias), dim=-1)
        h = h.masked_fill(pad.unsqueeze(-1), 0.0).transpose(1, 2)
        full = torch.cat([cache, h], dim=2)
        next_cache = _window(full, valid, cache.shape[2], dim=2)
        # Depthwise conv as an explicit sum over the kernel taps (faster than conv1d at these sizes).
        h = torch.einsum("bctk,ck->bct", full.unfold(2, self.kernel_size, 1), self.depthwise_conv.weight[:, 0])
        h = h + self.depthwise_conv.bias.unsqueeze(-1)
        if self.norm_type == "layer_norm":
            h = self.batch_norm(h.transpose(1, 2))
        else:
            h = self.batch_norm(h).transpose(1, 2)
        h = F.silu(h)
        return self._linear(h, self.pointwise_conv2.weight.squeeze(-1), self.pointwise_conv2.bias), next_cache


def _window(full: torch.Tensor, offset: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Per-row slice ``full[b, offset[b] : offset[b] + size]`` along ``dim`` (1 or 2).

    When every row has the same offset (streams stepping whole chunks together, the usual live
    case) this is a view; otherwise a gather, which costs several times a copy on CPU.
    """
    if size == 0:
        shape = list(full.shape)
        shape[dim] = 0
        return full.new_zeros(shape)
    if len(offset) and bool((offset == offset[0]).all()):
        return full.narrow(dim, int(offset[0]), size)
    index = offset.view(-1, 1) + torch.arange(size, device=full.device).view(1, -1)
    if dim == 1:
        index = index.unsqueeze(-1).expand(-1, -1, full.shape[2])
    else:
        index = index.unsqueeze(1).expand(-1, full.shape[1], -1)
    return torch.gather(full, dim, index)


class RelPositionMultiHeadAttention(nn.Module):
    """Transformer-XL self-attention with NeMo's u/v biases and ``rel_shift`` (``self_attn``)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.h = n_heads
        self.d_k = d_model // n_heads
        self.linear_q = PackedLinear(d_model, d_model)
        self.linear_k = PackedLinear(d_model, d_model)
        self.linear_v = PackedLinear(d_model, d_model)
        self.linear_out = PackedLinear(d_model, d_model)
        self.linear_pos = PackedLinear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))

    def _pos_projection(self, pos: torch.Tensor, steps: int) -> torch.Tensor:
        """``linear_pos(pos)`` split into heads; memoised at inference (a pure function of the weights).

        Streaming steps reuse the same relative distances every step, so the projection is computed
        once per (distances, dtype, weight version) when gradients are off.
        """
        if torch.is_grad_enabled():
            return self.linear_pos(pos).view(-1, self.h, self.d_k).transpose(0, 1)
        weight = self.linear_pos.weight
        key = (pos.shape[0], steps, pos.dtype, weight._version, weight.data_ptr(), weight.dtype)
        memo = self.__dict__.setdefault("_pos_memo", {})
        if key not in memo:
            if len(memo) > 16:
                memo.clear()
            memo[key] = self.linear_pos(pos).view(-1, self.h, self.d_k).transpose(0, 1).contiguous()
        return memo[key]

    def key_values(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[..., 2d]``: the key and value projections of normalised attention inputs ``x [..., d]``.

        With ``out`` (a contiguous ``[rows, 2d]`` tensor, ``x`` then ``[rows, d]``) both are
        written there by one matrix product, with no intermediate copies (gradients off).
        """
        if out is None:
            return torch.cat([self.linear_k(x), self.linear_v(x)], dim=-1)
        weight = torch.cat([self.linear_k.weight, self.linear_v.weight])
        bias = torch.cat([self.linear_k.bias, self.linear_v.bias])
        return torch.addmm(bias, x, weight.t(), out=out)

    def forward(
        self, query: torch.Tensor, kv_cache: Optional[torch.Tensor], visible: torch.Tensor, pos: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attends ``query [B, T, d]`` over the cached frames followed by the query frames.

        Args:
            query: Normalised attention input of the current frames (keys double as values).
            kv_cache: ``[B, L, 2d]`` key and value projections of the ``L`` cached frames, or None.
            visible: ``[B, T, L + T]`` bool, True where query ``i`` may see key ``j``.
            pos: ``[L + 2T − 1, d]`` sinusoids for distances ``L + T − 1 … −(T − 1)``; rows must
                depend only on the distance (see :func:`relative_positions`).

        Returns:
            The output ``[B, T, d]`` and the key/value projections of all ``L + T`` frames.
        """
        batch, steps, d_model = query.shape
        q = self.linear_q(query).view(batch, steps, self.h, self.d_k)
        kv = self.key_values(query)
        if kv_cache is not None:
            kv = torch.cat([kv_cache, kv], dim=1)
        num_keys = kv.shape[1]
        k = kv[..., :d_model].reshape(batch, num_keys, self.h, self.d_k).transpose(1, 2)
        v = kv[..., d_model:].reshape(batch, num_keys, self.h, self.d_k).transpose(1, 2)
        p = self._pos_projection(pos, steps)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd_full = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)).contiguous()
        # rel_shift: query i (absolute position Tk − T + i) and key j sit at distance Tk − T + i − j,
        # i.e. column T − 1 − i + j of bd_full.
        width = bd_full.shape[-1]
        s = bd_full.stride()
        bd = bd_full.as_strided(
            (batch, self.h, steps, num_keys), (s[0], s[1], width - 1, 1), bd_full.storage_offset() + steps - 1
        )
        scores = (ac + bd) / math.sqrt(self.d_k)
        hidden = ~visible.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill(hidden, MASK_VALUE), dim=-1).masked_fill(hidden, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, steps, self.h * self.d_k)
        return self.linear_out(out), kv


class ConformerLayer(nn.Module):
    """One FastConformer block: ½FFN → MHSA → conv → ½FFN → LayerNorm (``layers.{i}``)."""

    def __init__(self, d_model: int, d_ff: int, n_heads: int, kernel_size: int, conv_norm_type: str):
        super().__init__()
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = ConformerFeedForward(d_model, d_ff)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConformerConvolution(d_model, kernel_size, conv_norm_type)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiHeadAttention(d_model, n_heads)
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = ConformerFeedForward(d_model, d_ff)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        visible: torch.Tensor,
        pad: torch.Tensor,
        pos: torch.Tensor,
        valid: torch.Tensor,
        caches: Optional[Tuple[torch.Tensor, torch.Tensor]],
        conv_cache: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[Tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Runs the block on ``x [B, T, d]``; returns ``(y, next_caches, next_conv_cache)``.

        ``caches`` is None offline, else ``(att_cache [B, L, d], kv_cache [B, L, 2d])``: NeMo's
        cache of the normalised attention input of the previous ``L`` frames, and the key/value
        projections of the same frames (so they are not recomputed every step). The next caches
        hold the ``L`` frames before the first of the ``valid [B]`` new frames not consumed.
        """
        residual = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        normed = self.norm_self_att(residual)
        att_out, kv = self.self_attn(normed, None if caches is None else caches[1], visible, pos)
        residual = residual + att_out
        next_caches = None
        if caches is not None:
            cache_len = caches[0].shape[1]
            next_caches = (
                _window(torch.cat([caches[0], normed], dim=1), valid, cache_len, dim=1),
                _window(kv, valid, cache_len, dim=1),
            )
        conv_out, next_conv_cache = self.conv(self.norm_conv(residual), pad, conv_cache, valid)
        residual = residual + conv_out
        residual = residual + 0.5 * self.feed_forward2(self.norm_feed_forward2(residual))
        return self.norm_out(residual), next_caches, next_conv_cache
