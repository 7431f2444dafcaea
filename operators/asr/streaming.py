"""Cache-aware streaming FastConformer ASR, NeMo-compatible (no Beam import).

The operator reproduces the cache mechanics of NVIDIA NeMo's cache-aware streaming FastConformer
(Noroozi et al., *Stateful Conformer with Cache-based Inference for Streaming ASR*): a causal
``dw_striding`` ×8 subsampling with a 9-frame pre-encode cache, relative-position self-attention
over a cache of the last ``L`` normalised attention inputs, causal depthwise convolutions over a
cache of the last ``kernel−1`` frames, and CTC / RNNT greedy heads whose decoding continues across
chunk boundaries. Module and parameter names are NeMo's, so NeMo state dicts load as they are.

The streaming core is pure: ``step(features, lengths, state) -> (output, state)``, where the state
is a :class:`StreamState` of tensors, batched over independent streams along ``STATE_BATCH_AXES``.
Streams join or leave a batch between steps with :func:`concat_states` / :func:`select_streams`;
``state_to_numpy`` / ``state_from_numpy`` convert for Beam state coders.

Chunking (frames after subsampling are 80 ms; ``C = R + 1`` for ``att_context [L, R]``): a
stream's first step takes ``8C − 7`` mel frames and every later step ``8C`` mel frames (1.12 s
of audio at ``[70, 13]``), each step yields ``C`` encoder frames. A shorter chunk ends the stream;
a zero-length chunk leaves the stream's state unchanged. The concatenated outputs equal the
offline forward with the same attention mask (``encode``) for every length.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from operators.asr.frontend import MelConfig, log_mel
from operators.asr.layers import (
    CausalDwStridingSubsampling,
    ConformerLayer,
    relative_positions,
    subsampled_length,
)

__all__ = [
    "EncoderConfig",
    "RNNTConfig",
    "ModelConfig",
    "FastConformerASR",
    "StreamState",
    "StepOutput",
    "STATE_BATCH_AXES",
    "StreamingASR",
    "CharVocabulary",
    "SentencePieceVocabulary",
    "concat_states",
    "select_streams",
    "state_to_numpy",
    "state_from_numpy",
    "chunk_sizes",
]

PRE_ENCODE_CACHE = 9  # mel frames kept between steps: subsampling factor + 1 (NeMo).
DROP_EXTRA_PRE_ENCODED = 2  # subsampled frames recomputed from the pre-encode cache, dropped.
FIRST_STEP_PAD = 16  # zero frames before a stream's first chunk, masked as "before the start".
SUBSAMPLING = 8


@dataclass(frozen=True)
class EncoderConfig:
    """FastConformer encoder hyper-parameters (NeMo ``encoder`` config names).

    Attributes:
        feat_in: Mel bands.
        n_layers: Conformer blocks.
        d_model: Model width.
        n_heads: Attention heads.
        ff_expansion_factor: FFN width / ``d_model``.
        conv_kernel_size: Depthwise kernel of the convolution module (causal).
        conv_norm_type: ``layer_norm`` or ``batch_norm``.
        subsampling_conv_channels: Channels of the subsampling convs.
        att_context_size: Supported ``[L, R]`` contexts; the first is the default.
        att_context_style: ``chunked_limited`` or ``regular``.
        xscaling: Multiply the subsampled input by ``sqrt(d_model)``.
    """

    feat_in: int = 80
    n_layers: int = 17
    d_model: int = 512
    n_heads: int = 8
    ff_expansion_factor: int = 4
    conv_kernel_size: int = 9
    conv_norm_type: str = "layer_norm"
    subsampling_conv_channels: int = 256
    att_context_size: Tuple[Tuple[int, int], ...] = ((70, 13), (70, 6), (70, 1), (70, 0))
    att_context_style: str = "chunked_limited"
    xscaling: bool = True


@dataclass(frozen=True)
class RNNTConfig:
    """RNNT prediction and joint networks of a hybrid model.

    Attributes:
        pred_hidden: LSTM width (and embedding width).
        pred_rnn_layers: LSTM layers.
        joint_hidden: Joint network width.
        joint_activation: ``relu``, ``tanh`` or ``sigmoid``.
        joint_dropout: Whether the joint has a dropout layer (shifts the final Linear's index).
        max_symbols: Greedy decoding's symbol limit per encoder frame.
    """

    pred_hidden: int = 640
    pred_rnn_layers: int = 1
    joint_hidden: int = 640
    joint_activation: str = "relu"
    joint_dropout: bool = True
    max_symbols: int = 10


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: front end, encoder, output vocabulary size and optional RNNT head.

    Attributes:
        encoder: Encoder hyper-parameters.
        vocab_size: Output tokens, blank excluded (blank is index ``vocab_size``).
        rnnt: RNNT head of a hybrid RNNT/CTC model, None for a CTC model.
        mel: Front-end settings.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    vocab_size: int = 1024
    rnnt: Optional[RNNTConfig] = None
    mel: MelConfig = field(default_factory=MelConfig)


def chunk_sizes(att_context: Sequence[int], style: str = "chunked_limited") -> Tuple[int, int, int]:
    """Returns ``(C, first_mel, later_mel)``: encoder frames per step and mel frames per step.

    ``[70,13]`` → ``(14, 105, 112)``; ``[70,0]`` → ``(1, 1, 8)``. Only chunk-aligned contexts
    stream: ``chunked_limited`` with ``R ≥ 0`` and ``L`` a multiple of ``R + 1``, or ``regular``
    with ``R = 0`` (one frame per step).
    """
    left, right = int(att_context[0]), int(att_context[1])
    if left < 0:
        raise ValueError(f"att_context {list(att_context)}: streaming needs a finite left context")
    if style == "chunked_limited":
        if right < 0 or left % (right + 1):
            raise ValueError(
                f"att_context {list(att_context)}: chunked_limited streaming needs R >= 0 and L % (R + 1) == 0"
            )
        chunk = right + 1
    elif style == "regular":
        if right != 0:
            raise ValueError(f"att_context {list(att_context)}: regular-style streaming needs R == 0")
        chunk = 1
    else:
        raise ValueError(f"att_context_style {style!r} is not supported (chunked_limited, regular)")
    return chunk, SUBSAMPLING * chunk - 7, SUBSAMPLING * chunk


def context_mask(
    query_pos: torch.Tensor, key_pos: torch.Tensor, att_context: Sequence[int], style: str
) -> torch.Tensor:
    """``[Tq, Tk]`` bool: query at position ``i`` may attend key at ``j`` under ``[L, R]``.

    ``chunked_limited``: ``0 ≤ ⌊i/C⌋ − ⌊j/C⌋ ≤ ⌊L/C⌋`` with ``C = R + 1`` (``L < 0``: unlimited);
    ``regular``: ``−L ≤ j − i ≤ R`` (a negative bound is unlimited). NeMo's ``_create_masks``.
    """
    left, right = int(att_context[0]), int(att_context[1])
    i, j = query_pos.view(-1, 1), key_pos.view(1, -1)
    visible = torch.ones(i.shape[0], j.shape[1], dtype=torch.bool)
    if style == "regular" or right < 0:
        if left >= 0:
            visible &= j - i >= -left
        if right >= 0:
            visible &= j - i <= right
        return visible
    chunk = right + 1
    left_chunks = left // chunk if left >= 0 else 10000
    diff = torch.div(i, chunk, rounding_mode="floor") - torch.div(j, chunk, rounding_mode="floor")
    return (diff >= 0) & (diff <= left_chunks)


class StreamState(NamedTuple):
    """Everything a stream carries between steps (zeros at the start).

    Attributes:
        cache_last_channel: ``(layers, B, L, d)`` normalised attention input of the last ``L`` frames.
        cache_last_time: ``(layers, B, d, kernel−1)`` depthwise-conv input of the last frames.
        cache_last_channel_len: ``(B,)`` valid frames in ``cache_last_channel`` (``min(seen, L)``).
        pre_encode_cache: ``(B, mels, 9)`` the last 9 mel frames.
        pre_encode_cache_len: ``(B,)`` real frames in ``pre_encode_cache`` (``min(seen, 9)``);
            0 marks a stream that has not started.
        cache_last_kv: ``(layers, B, L, 2d)`` key and value projections of ``cache_last_channel``
            (derived data kept so that a step projects only its new frames).
        last_token: ``(B,)`` CTC: last frame's arg-max (blank at start), for re-collapsing repeats
            across chunks; RNNT: last emitted token.
        pred_h: ``(P, B, H)`` RNNT LSTM hidden state (``H = 0`` for CTC models).
        pred_c: ``(P, B, H)`` RNNT LSTM cell state.
        pred_out: ``(B, H)`` RNNT prediction-network output for ``last_token``.
    """

    cache_last_channel: torch.Tensor
    cache_last_time: torch.Tensor
    cache_last_channel_len: torch.Tensor
    pre_encode_cache: torch.Tensor
    pre_encode_cache_len: torch.Tensor
    cache_last_kv: torch.Tensor
    last_token: torch.Tensor
    pred_h: torch.Tensor
    pred_c: torch.Tensor
    pred_out: torch.Tensor


STATE_BATCH_AXES: Dict[str, int] = {
    "cache_last_channel": 1,
    "cache_last_time": 1,
    "cache_last_channel_len": 0,
    "pre_encode_cache": 0,
    "pre_encode_cache_len": 0,
    "cache_last_kv": 1,
    "last_token": 0,
    "pred_h": 1,
    "pred_c": 1,
    "pred_out": 0,
}


def concat_states(states: Sequence[StreamState]) -> StreamState:
    """Joins the streams of several states into one batch (in order)."""
    return StreamState(
        *[torch.cat([getattr(s, name) for s in states], dim=axis) for name, axis in STATE_BATCH_AXES.items()]
    )


def select_streams(state: StreamState, indices: Sequence[int]) -> StreamState:
    """Keeps the streams at ``indices`` (in that order); the others leave the batch."""
    index = torch.as_tensor(list(indices), dtype=torch.long)
    return StreamState(
        *[getattr(state, name).index_select(axis, index) for name, axis in STATE_BATCH_AXES.items()]
    )


def state_to_numpy(state: StreamState) -> Dict[str, np.ndarray]:
    """Converts a state to a dict of numpy arrays (for Beam state coders)."""
    return {name: getattr(state, name).detach().cpu().numpy() for name in STATE_BATCH_AXES}


def state_from_numpy(arrays: Dict[str, np.ndarray]) -> StreamState:
    """Inverse of :func:`state_to_numpy`."""
    return StreamState(*[torch.from_numpy(np.asarray(arrays[name])) for name in STATE_BATCH_AXES])


class StepOutput(NamedTuple):
    """What one streaming step returns.

    Attributes:
        encoded: ``[B, C, d]`` encoder frames of this step (frames past ``encoded_len`` are padding).
        encoded_len: ``[B]`` valid encoder frames per stream.
        tokens: New token ids per stream, decoded greedily.
    """

    encoded: torch.Tensor
    encoded_len: torch.Tensor
    tokens: List[List[int]]


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


class ConvASRDecoder(nn.Module):
    """NeMo's CTC head: ``decoder_layers.0`` = Conv1d(d, V + 1, 1); blank is the last index."""

    def __init__(self, feat_in: int, num_classes: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, num_classes + 1, 1))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` → log-probabilities ``[B, T, V + 1]``."""
        conv = self.decoder_layers[0]
        return F.log_softmax(F.linear(encoded, conv.weight.squeeze(-1), conv.bias), dim=-1)


class _LSTMDropout(nn.Module):
    """Holds ``lstm`` so the keys read ``prediction.dec_rnn.lstm.*`` as in NeMo."""

    def __init__(self, size: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(size, size, layers)


class RNNTDecoder(nn.Module):
    """NeMo's RNNT prediction network: embedding (blank as zero padding) → LSTM."""

    def __init__(self, vocab_size: int, config: RNNTConfig):
        super().__init__()
        self.blank = vocab_size
        self.prediction = nn.ModuleDict(
            {
                "embed": nn.Embedding(vocab_size + 1, config.pred_hidden, padding_idx=vocab_size),
                "dec_rnn": _LSTMDropout(config.pred_hidden, config.pred_rnn_layers),
            }
        )

    def predict(
        self, tokens: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """One prediction step for ``tokens [B]`` (blank embeds as zeros, NeMo's start symbol)."""
        embedded = self.prediction["embed"](tokens).unsqueeze(0)
        out, (h, c) = self.prediction["dec_rnn"].lstm(embedded, state)
        return out[0], (h, c)


class RNNTJoint(nn.Module):
    """NeMo's RNNT joint: ``joint_net(act(enc(f) + pred(g)))`` with keys ``pred``, ``enc``, ``joint_net``."""

    def __init__(self, enc_hidden: int, vocab_size: int, config: RNNTConfig):
        super().__init__()
        activations = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}
        self.pred = nn.Linear(config.pred_hidden, config.joint_hidden)
        self.enc = nn.Linear(enc_hidden, config.joint_hidden)
        layers = [activations[config.joint_activation]]
        if config.joint_dropout:
            layers.append(nn.Dropout(0.0))
        layers.append(nn.Linear(config.joint_hidden, vocab_size + 1))
        self.joint_net = nn.Sequential(*layers)

    def forward(self, enc_frame: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V + 1]`` for one encoder frame ``[B, d]`` and prediction output ``[B, H]``."""
        return self.joint_net(self.enc(enc_frame) + self.pred(pred_out))


class FastConformerASR(nn.Module):
    """A NeMo FastConformer CTC model, or a hybrid RNNT/CTC model, with NeMo's state-dict keys.

    CTC model: ``encoder.*`` and ``decoder.decoder_layers.0.*``. Hybrid model: ``encoder.*``,
    ``decoder.prediction.*``, ``joint.*`` and ``ctc_decoder.decoder_layers.0.*``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = FastConformerEncoder(config.encoder)
        if config.rnnt is None:
            self.decoder = ConvASRDecoder(config.encoder.d_model, config.vocab_size)
        else:
            self.decoder = RNNTDecoder(config.vocab_size, config.rnnt)
            self.joint = RNNTJoint(config.encoder.d_model, config.vocab_size, config.rnnt)
            self.ctc_decoder = ConvASRDecoder(config.encoder.d_model, config.vocab_size)

    @property
    def ctc_head(self) -> ConvASRDecoder:
        """The CTC head (``decoder`` of a CTC model, ``ctc_decoder`` of a hybrid one)."""
        return self.decoder if self.config.rnnt is None else self.ctc_decoder


class CharVocabulary:
    """Character labels (NeMo ``decoder.vocabulary`` of char models)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}

    @property
    def size(self) -> int:
        return len(self.labels)

    def encode(self, text: str) -> List[int]:
        """Maps characters to ids, skipping characters outside the vocabulary."""
        return [self._index[ch] for ch in text if ch in self._index]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.labels[i] for i in ids)


class SentencePieceVocabulary:
    """A SentencePiece model (NeMo ``tokenizer.model``), loaded from bytes."""

    def __init__(self, model_proto: bytes):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> List[int]:
        return list(self.processor.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))


class StreamingASR:
    """The ASR operator: offline and cache-aware streaming transcription with explicit state.

    Args:
        model: A :class:`FastConformerASR` (weights loaded, put in eval mode here).
        vocabulary: Maps token ids to text (:class:`CharVocabulary` / :class:`SentencePieceVocabulary`).
        att_context: Default ``[L, R]`` (any of a multi-look-ahead model's contexts).
        decoder: ``"rnnt"`` or ``"ctc"``; default RNNT for hybrid models, as NeMo.
    """

    def __init__(
        self,
        model: FastConformerASR,
        vocabulary,
        att_context: Optional[Sequence[int]] = None,
        decoder: Optional[str] = None,
    ):
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.config = model.config
        self.att_context = tuple(att_context or self.config.encoder.att_context_size[0])
        self.decoder = decoder or ("ctc" if self.config.rnnt is None else "rnnt")
        if self.decoder not in ("ctc", "rnnt") or (self.decoder == "rnnt" and self.config.rnnt is None):
            raise ValueError(f"decoder {self.decoder!r} is not available for this model")
        self.blank = self.config.vocab_size

    def with_context(self, att_context: Sequence[int]) -> "StreamingASR":
        """The same operator (shared weights) at another look-ahead, e.g. ``[70, 0]``."""
        return StreamingASR(self.model, self.vocabulary, att_context, self.decoder)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chunk_sizes(self) -> Tuple[int, int, int]:
        """``(C, first_mel, later_mel)`` for this operator's context (see :func:`chunk_sizes`)."""
        return chunk_sizes(self.att_context, self.config.encoder.att_context_style)

    def features(self, audio: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features ``[B, mels, F]`` and frame counts of mono float waveforms."""
        lengths = torch.tensor([len(a) for a in audio], dtype=torch.long)
        batch = torch.zeros(len(audio), max(1, int(lengths.max())) if len(audio) else 1)
        for row, samples in enumerate(audio):
            batch[row, : len(samples)] = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        features, frames = log_mel(batch, lengths, self.config.mel)
        return features.to(self.dtype), frames

    def initial_state(self, batch: int) -> StreamState:
        """The state of ``batch`` new streams."""
        encoder_state = self.model.encoder.initial_state(batch, self.att_context, self.dtype)
        last_token = torch.full((batch,), self.blank, dtype=torch.long)
        if self.decoder == "rnnt":
            rnnt = self.config.rnnt
            zeros = torch.zeros(rnnt.pred_rnn_layers, batch, rnnt.pred_hidden, dtype=self.dtype)
            with torch.no_grad():
                pred_out, (h, c) = self.model.decoder.predict(last_token, (zeros, zeros))
        else:
            h = c = torch.zeros(1, batch, 0, dtype=self.dtype)
            pred_out = torch.zeros(batch, 0, dtype=self.dtype)
        return StreamState(*encoder_state, last_token, h, c, pred_out)

    def _check_decoder_state(self, state: StreamState) -> None:
        batch = state.last_token.shape[0]
        if self.decoder == "rnnt":
            rnnt = self.config.rnnt
            expected = (rnnt.pred_rnn_layers, batch, rnnt.pred_hidden)
        else:
            expected = (1, batch, 0)
        for name in ("pred_h", "pred_c"):
            if tuple(getattr(state, name).shape) != expected:
                raise ValueError(
                    f"state.{name} has shape {tuple(getattr(state, name).shape)}, but the {self.decoder} "
                    f"decoder needs {expected}; build it with StreamingASR.initial_state"
                )

    def _decode(
        self, encoded: torch.Tensor, valid: torch.Tensor, state: StreamState
    ) -> Tuple[List[List[int]], StreamState]:
        """Greedy decoding of ``valid`` frames per stream, continuing from the decoder state."""
        if self.decoder == "ctc":
            best = self.model.ctc_head(encoded).argmax(-1)
            tokens, last = [], state.last_token.clone()
            for row in range(best.shape[0]):
                emitted, previous = [], int(last[row])
                for token in best[row, : int(valid[row])].tolist():
                    if token != self.blank and token != previous:
                        emitted.append(token)
                    previous = token
                tokens.append(emitted)
                last[row] = previous
            return tokens, state._replace(last_token=last)
        return self._rnnt_greedy(encoded, valid, state)

    def _rnnt_greedy(self, encoded, valid, state):
        decoder, joint = self.model.decoder, self.model.joint
        h, c, pred_out, last = state.pred_h, state.pred_c, state.pred_out, state.last_token.clone()
        tokens: List[List[int]] = [[] for _ in range(encoded.shape[0])]
        for t in range(encoded.shape[1]):
            active = valid > t
            for _ in range(self.config.rnnt.max_symbols):
                if not bool(active.any()):
                    break
                best = joint(encoded[:, t], pred_out).argmax(-1)
                emit = active & (best != self.blank)
                if not bool(emit.any()):
                    break
                new_out, (new_h, new_c) = decoder.predict(torch.where(emit, best, self.blank), (h, c))
                keep = emit.view(1, -1, 1)
                h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
                pred_out = torch.where(emit.view(-1, 1), new_out, pred_out)
                last = torch.where(emit, best, last)
                for row in torch.nonzero(emit).flatten().tolist():
                    tokens[row].append(int(best[row]))
                active = emit
        return tokens, state._replace(pred_h=h, pred_c=c, pred_out=pred_out, last_token=last)

    @torch.no_grad()
    def step(
        self, features: torch.Tensor, lengths: torch.Tensor, state: StreamState
    ) -> Tuple[StepOutput, StreamState]:
        """One streaming step for a batch of streams (see the module docstring for chunk sizes).

        Args:
            features: ``[B, mels, W]`` mel chunks, left-aligned; ``lengths [B]`` valid frames.
            state: The streams' state (from :meth:`initial_state`, :func:`concat_states` …).

        Returns:
            ``(StepOutput, next_state)``.

        Raises:
            ValueError: a state whose shapes do not fit the model, context or decoder, or a chunk
                longer than the step takes.
        """
        if not isinstance(state, StreamState):
            raise ValueError(f"state must be a StreamState, got {type(state).__name__}")
        self.model.encoder.check_state(state, self.att_context)
        self._check_decoder_state(state)
        if features.shape[0] != state.last_token.shape[0] or features.shape[1] != self.config.encoder.feat_in:
            raise ValueError(
                f"features have shape {tuple(features.shape)}; expected [{state.last_token.shape[0]}, "
                f"{self.config.encoder.feat_in}, frames] to match the state's streams"
            )
        encoded, valid, caches = self.model.encoder.step(features, lengths, tuple(state[:6]), self.att_context)
        state = StreamState(*caches, *state[6:])
        tokens, state = self._decode(encoded, valid, state)
        return StepOutput(encoded, valid, tokens), state

    @torch.no_grad()
    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Offline encoder forward with this operator's attention mask."""
        return self.model.encoder(features.to(self.dtype), lengths, self.att_context)

    @torch.no_grad()
    def transcribe_features(self, features: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
        """Offline transcription to token ids (same greedy decoding as the streaming path)."""
        encoded, valid = self.encode(features, lengths)
        tokens, _ = self._decode(encoded, valid, self.initial_state(features.shape[0]))
        return tokens

    def iter_chunks(self, features: torch.Tensor, lengths: torch.Tensor) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Cuts whole utterances into the chunks that :meth:`step` takes (a stream simulator)."""
        _, first, later = self.chunk_sizes()
        offset, width = 0, first
        while True:
            remaining = (lengths - offset).clamp(min=0)
            if offset > 0 and not bool((remaining > 0).any()):
                return
            chunk = features[:, :, offset : offset + width]
            yield chunk, remaining.clamp(max=width)
            offset, width = offset + width, later

    @torch.no_grad()
    def transcribe_features_streaming(self, features: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
        """Streaming transcription of whole utterances, step by step (equals the offline result)."""
        state = self.initial_state(features.shape[0])
        tokens: List[List[int]] = [[] for _ in range(features.shape[0])]
        for chunk, chunk_lengths in self.iter_chunks(features.to(self.dtype), lengths):
            output, state = self.step(chunk, chunk_lengths, state)
            for row, new in enumerate(output.tokens):
                tokens[row].extend(new)
        return tokens

    def transcribe(self, audio: Sequence[np.ndarray], streaming: bool = False) -> List[str]:
        """Transcribes 16 kHz mono waveforms, offline or through the streaming steps."""
        if not audio:
            return []
        features, frames = self.features(audio)
        run = self.transcribe_features_streaming if streaming else self.transcribe_features
        return [self.vocabulary.decode(ids) for ids in run(features, frames)]


def random_model(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> FastConformerASR:
    """A model with random weights, including non-trivial biases and norms (tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    model = FastConformerASR(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            fan_in = parameter.shape[-1] if parameter.dim() > 1 else parameter.shape[0]
            if parameter.dim() > 2:
                fan_in = int(np.prod(parameter.shape[1:]))
            scale = 1.0 / math.sqrt(max(1, fan_in))
            values = torch.randn(parameter.shape, generator=generator) * scale
            if name.endswith("weight") and parameter.dim() == 1:
                values = 1.0 + 0.1 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(values)
        if config.rnnt is not None:
            model.decoder.prediction["embed"].weight[config.vocab_size].zero_()
    return model.to(dtype).eval()


def small_config(**encoder_overrides) -> ModelConfig:
    """A tiny model config (tests): 2 layers, d 64, 4 heads, kernel 9, 16 subsampling channels."""
    encoder = replace(
        EncoderConfig(n_layers=2, d_model=64, n_heads=4, subsampling_conv_channels=16), **encoder_overrides
    )
    return ModelConfig(encoder=encoder, vocab_size=12)
