"""State trees of continual modules: map, copy, numpy round trip, batch stacking and splitting.

A state is a tree of dicts/lists holding torch tensors (frame buffers) and numpy ``int64``
phase counters (key ``"t"``), every leaf with the stream (batch) as its first dimension, so
states of separate streams stack into one batch and split again.
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

State = Any


def first_counter(state: State) -> Optional[np.ndarray]:
    """The first per-stream phase counter in a state tree (its length is the batch size)."""
    if isinstance(state, dict):
        if "t" in state:
            return state["t"]
        state = list(state.values())
    if isinstance(state, list):
        for item in state:
            found = first_counter(item)
            if found is not None:
                return found
    return None


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
    counter = first_counter(tree)
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
