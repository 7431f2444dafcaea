"""Model configuration of the streaming FastConformer and the chunking it implies.

NeMo's config names; ``chunk_sizes`` gives the mel frames each streaming step takes for an
``att_context [L, R]`` and ``context_mask`` the attention visibility that both the offline and
the streaming paths use.
"""

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from operators.asr.frontend import MelConfig

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
