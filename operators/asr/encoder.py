"""NeMo's FastConformer encoder with cache-aware streaming steps (causal subsampling, caches)."""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from operators.asr.config import (
    DROP_EXTRA_PRE_ENCODED,
    FIRST_STEP_PAD,
    PRE_ENCODE_CACHE,
    EncoderConfig,
    chunk_sizes,
    context_mask,
)
from operators.asr.layers import (
    CausalDwStridingSubsampling,
    ConformerLayer,
    relative_positions,
    subsampled_length,
)
from operators.asr.state import StreamState


class FastConformerEncoder(nn.Module):
    """NeMo ``ConformerEncoder`` with causal ``dw_striding`` subsampling and ``rel_pos`` attention."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if config.att_context_style not in ("chunked_limited", "regular"):
            raise ValueError(f"att_context_style {config.att_context_style!r} is not supported")
        self.config = config
        channels = config.subsampling_conv_channels
        if channels == -1:
            channels = config.d_model
        self.pre_encode = CausalDwStridingSubsampling(config.feat_in, config.d_model, channels)
        self.layers = nn.ModuleList(
            ConformerLayer(
                config.d_model,
                config.d_model * config.ff_expansion_factor,
                config.n_heads,
                config.conv_kernel_size,
                config.conv_norm_type,
            )
            for _ in range(config.n_layers)
        )
        self.xscale = math.sqrt(config.d_model) if config.xscaling else 1.0

    def _att_context(self, att_context: Optional[Sequence[int]]) -> Tuple[int, int]:
        if att_context is None:
            att_context = self.config.att_context_size[0]
        return int(att_context[0]), int(att_context[1])

    def _run_layers(self, x, visible, valid, att_caches, kv_caches, conv_caches):
        steps = x.shape[1]
        num_keys = steps + (0 if att_caches is None else att_caches.shape[2])
        pos = relative_positions(self.config.d_model, num_keys, steps, x.dtype)
        pad = torch.arange(steps).unsqueeze(0) >= valid.unsqueeze(1)
        next_att, next_kv, next_conv = [], [], []
        for index, layer in enumerate(self.layers):
            caches = None if att_caches is None else (att_caches[index], kv_caches[index])
            x, caches, conv_cache = layer(x, visible, pad, pos, valid, caches, conv_caches[index])
            if caches is not None:
                next_att.append(caches[0])
                next_kv.append(caches[1])
            next_conv.append(conv_cache)
        return x, next_att, next_kv, next_conv

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, att_context: Optional[Sequence[int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Offline encoding of ``features [B, mels, N]`` (``lengths [B]`` valid frames).

        Returns ``(encoded [B, T, d], encoded_len [B])`` with ``T = N`` subsampled ×8.
        """
        context = self._att_context(att_context)
        batch = features.shape[0]
        lengths = lengths.to(torch.long)
        zeros = torch.zeros(batch, dtype=torch.long)
        x, _, _ = self.pre_encode(features.transpose(1, 2), zeros, lengths)
        valid = subsampled_length(lengths)
        positions = torch.arange(x.shape[1])
        visible = context_mask(positions, positions, context, self.config.att_context_style).unsqueeze(0)
        in_length = positions.unsqueeze(0) < valid.unsqueeze(1)
        visible = visible & in_length.unsqueeze(1) & in_length.unsqueeze(2)
        conv_caches = x.new_zeros(len(self.layers), batch, self.config.d_model, self.config.conv_kernel_size - 1)
        x, _, _, _ = self._run_layers(x * self.xscale, visible, valid, None, None, conv_caches)
        return x, valid

    def initial_state(self, batch: int, att_context: Optional[Sequence[int]] = None, dtype=torch.float32):
        """Zero caches: the six encoder fields of :class:`StreamState`, in order."""
        left, _ = self._att_context(att_context)
        c = self.config
        return (
            torch.zeros(c.n_layers, batch, left, c.d_model, dtype=dtype),
            torch.zeros(c.n_layers, batch, c.d_model, c.conv_kernel_size - 1, dtype=dtype),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, c.feat_in, PRE_ENCODE_CACHE, dtype=dtype),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(c.n_layers, batch, left, 2 * c.d_model, dtype=dtype),
        )

    @torch.no_grad()
    def kv_cache_from(self, att_cache: torch.Tensor) -> torch.Tensor:
        """The ``cache_last_kv`` field that goes with ``att_cache [layers, B, L, d]``: each
        layer's key/value projections of its cached frames (``[layers, B, L, 2d]``).

        A stream's state can be stored without its key/value cache (two thirds of its bytes)
        and the cache rebuilt from ``cache_last_channel`` before a step; frames before the
        stream's start get projections of zeros, which the attention mask hides.
        """
        layers, batch, frames, d_model = att_cache.shape
        out = att_cache.new_empty(layers, batch, frames, 2 * d_model)
        for i, layer in enumerate(self.layers):
            layer.self_attn.key_values(att_cache[i].reshape(-1, d_model), out=out[i].view(-1, 2 * d_model))
        return out

    def check_state(self, state: StreamState, att_context: Sequence[int]) -> None:
        """Raises ``ValueError`` naming the field when a state does not fit this model and context."""
        c = self.config
        batch = state.cache_last_channel_len.shape[0]
        expected = {
            "cache_last_channel": (c.n_layers, batch, int(att_context[0]), c.d_model),
            "cache_last_time": (c.n_layers, batch, c.d_model, c.conv_kernel_size - 1),
            "cache_last_channel_len": (batch,),
            "pre_encode_cache": (batch, c.feat_in, PRE_ENCODE_CACHE),
            "pre_encode_cache_len": (batch,),
            "cache_last_kv": (c.n_layers, batch, int(att_context[0]), 2 * c.d_model),
            "last_token": (batch,),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(state, name).shape)
            if actual != shape:
                raise ValueError(
                    f"state.{name} has shape {actual}, but this model at att_context {list(att_context)} "
                    f"with {batch} streams needs {shape}; build it with StreamingASR.initial_state"
                )

    def step(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        caches: Tuple[torch.Tensor, ...],
        att_context: Optional[Sequence[int]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[torch.Tensor, ...]]:
        """One cache-aware step over a batch of streams.

        Args:
            features: ``[B, mels, W]`` mel chunk per stream, left-aligned; ``lengths [B]`` valid
                frames (≤ ``8C − 7`` on a stream's first step, ≤ ``8C`` afterwards).
            caches: The six encoder fields of :class:`StreamState`, in order.
            att_context: ``[L, R]``; ``L`` must equal the cache length.

        Returns:
            ``(encoded [B, C, d], encoded_len [B], next_caches)``.
        """
        context = self._att_context(att_context)
        chunk, first_frames, later_frames = chunk_sizes(context, self.config.att_context_style)
        att_cache, conv_cache, cache_len, pre_cache, pre_len, kv_cache = caches
        lengths = lengths.to(torch.long)
        first = pre_len == 0
        limit = torch.where(first, first_frames, later_frames)
        if bool((lengths > limit).any()) or bool((lengths < 0).any()):
            raise ValueError(
                f"chunk lengths {lengths.tolist()} exceed {first_frames} mel frames (first step) / "
                f"{later_frames} (later steps) for att_context {list(context)}"
            )
        batch, mels, width = features.shape
        features = F.pad(features, (0, max(0, later_frames - width)))[:, :, :later_frames]
        features = features.to(att_cache.dtype)
        later = torch.cat([pre_cache, features], dim=2)
        first_seg = torch.cat(
            [features.new_zeros(batch, mels, FIRST_STEP_PAD), features[:, :, :first_frames]], dim=2
        )
        segment = torch.where(first.view(-1, 1, 1), first_seg, later)
        # Cached frames from before the stream's start (only while fewer than 9 frames were seen,
        # i.e. after a one-frame first chunk at R = 0) are masked, like the causal zero padding.
        start = torch.where(first, FIRST_STEP_PAD, PRE_ENCODE_CACHE - pre_len)
        end = torch.where(first, FIRST_STEP_PAD, PRE_ENCODE_CACHE) + lengths
        index = (end - PRE_ENCODE_CACHE).view(-1, 1, 1) + torch.arange(PRE_ENCODE_CACHE).view(1, 1, -1)
        next_pre = torch.gather(segment, 2, index.expand(-1, mels, -1))
        empty_first = first & (lengths == 0)
        next_pre_len = torch.clamp(pre_len + lengths, max=PRE_ENCODE_CACHE)

        x, _, sub_end = self.pre_encode(segment.transpose(1, 2), start, end)
        x = x[:, DROP_EXTRA_PRE_ENCODED:]
        valid = torch.where(empty_first, 0, (sub_end - DROP_EXTRA_PRE_ENCODED).clamp(min=0))

        left = att_cache.shape[2]
        queries = torch.arange(chunk) + left
        keys = torch.arange(left + chunk)
        visible = context_mask(queries, keys, context, self.config.att_context_style).unsqueeze(0)
        key_ok = (keys.unsqueeze(0) >= (left - cache_len).unsqueeze(1)) & (
            keys.unsqueeze(0) < (left + valid).unsqueeze(1)
        )
        query_ok = torch.arange(chunk).unsqueeze(0) < valid.unsqueeze(1)
        visible = visible & key_ok.unsqueeze(1) & query_ok.unsqueeze(2)
        x, next_att, next_kv, next_conv = self._run_layers(
            x * self.xscale, visible, valid, att_cache, kv_cache, conv_cache
        )
        next_caches = (
            torch.stack(next_att),
            torch.stack(next_conv),
            torch.clamp(cache_len + valid, max=left),
            next_pre,
            next_pre_len,
            torch.stack(next_kv),
        )
        return x, valid, next_caches
