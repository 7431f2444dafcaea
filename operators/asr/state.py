"""``StreamState``: what a stream carries between streaming ASR steps, and batch helpers.

Tensors are batched over independent streams along ``STATE_BATCH_AXES``; streams join or
leave a batch between steps with ``concat_states`` / ``select_streams``; ``state_to_numpy`` /
``state_from_numpy`` convert for Beam state coders.
"""

from typing import Dict, NamedTuple, Sequence

import numpy as np
import torch


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
