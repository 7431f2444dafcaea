"""``StreamStepper``: one stream's continual module with numpy frames and numpy state (Beam state)."""

from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from operators.video.continual.base import CoModule
from operators.video.continual.state import State, split_states, stack_states, state_from_numpy, state_to_numpy


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
