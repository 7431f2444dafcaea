"""``LiveSpeechDetector``: Silero VAD's speech probability per mel frame of live streams (no Beam).

The optional trained voice detector of live endpointing (``EndpointConfig(vad="silero")``): it
replaces the energy score of each mel frame (``voice`` in a live ASR stream's state) with
Silero's speech probability, so breath, hum or music that is loud but not speech lets an
utterance end. Per stream its state (``vad/*`` fields of the stream's dict of numpy arrays)
holds the network's LSTM state and 64-sample context (``operators.asr.silero_vad``), the samples
of the 512-sample window not yet complete, how many windows were stepped, and the probabilities
that mel frames not yet computed may still need. Windows are the stream's consecutive 512-sample
blocks from its start, so the probabilities never depend on how the audio was cut into pieces.

Mel frame ``t`` (its analysis window ends at sample ``t·hop + win/2``) takes the probability of
the last window complete by then: a causal decision at most 32 ms older than the frame, that
never makes a chunk wait for the detector. The last frames of an ended stream take the last
whole window's (a tail shorter than a window is not stepped); a stream shorter than one window
has none and counts as silent. The windows of all streams are stepped together, one batched
network step per window position.
"""

from typing import Dict, List, Sequence

import numpy as np
import torch

from operators.asr.silero_vad import CONTEXT, HIDDEN, WINDOW, SileroVAD, VADState, concat_states

State = Dict[str, np.ndarray]


class LiveSpeechDetector:
    """Sets live streams' per-mel-frame voice score to Silero's speech probability.

    Args:
        model: The Silero network (``operators.asr.silero_vad.load_silero_vad``).
        hop: Mel frame hop in samples (160 at 16 kHz).
        window_end: Samples from a mel frame's position to the end of its analysis window
            (``win_length // 2``).
    """

    def __init__(self, model: SileroVAD, hop: int, window_end: int):
        self.model = model
        self.hop = hop
        self.window_end = window_end

    def init_state(self) -> State:
        """The detector's fields of a new stream's state."""
        return {
            "vad/h": np.zeros((1, HIDDEN), np.float32),
            "vad/c": np.zeros((1, HIDDEN), np.float32),
            "vad/context": np.zeros((1, CONTEXT), np.float32),
            "vad/tail": np.zeros(0, np.float32),  # samples of the window not yet complete
            "vad/windows": np.zeros((), np.int64),  # windows stepped
            "vad/probs": np.zeros(0, np.float32),  # probabilities of windows vad/first, vad/first + 1, …
            "vad/first": np.zeros((), np.int64),
        }

    def push(self, states: Sequence[State], inputs: Sequence[np.ndarray], first_frames: Sequence[int]) -> List[State]:
        """Steps the windows the new samples complete and scores the new mel frames.

        Args:
            states: The streams' states after the front end took ``inputs``: their last
                ``frames - first_frames[i]`` voice scores are the new mel frames'.
            inputs: Each stream's new samples (float32, model rate).
            first_frames: Each stream's mel frame count before the front end took ``inputs``.
        """
        states = [dict(state) for state in states]
        blocks = []
        for state, samples in zip(states, inputs):
            tail = np.concatenate([state["vad/tail"], np.asarray(samples, np.float32)])
            whole = len(tail) // WINDOW * WINDOW
            blocks.append(tail[:whole].reshape(-1, WINDOW))
            state["vad/tail"] = tail[whole:].copy()
        rows = [i for i, block in enumerate(blocks) if len(block)]
        if rows:
            self._step_windows([states[i] for i in rows], [blocks[i] for i in rows])
        for state, first in zip(states, first_frames):
            self._score(state, int(first))
        return states

    def _step_windows(self, states: List[State], blocks: List[np.ndarray]) -> None:
        """Steps each stream through its windows, all streams in one batch per window position
        (a stream without a window at a position keeps its state)."""
        batch = concat_states([VADState(*(torch.from_numpy(s[f"vad/{name}"]) for name in VADState._fields))
                               for s in states])
        counts = torch.tensor([len(block) for block in blocks])
        probs = np.zeros((len(states), int(counts.max())), np.float32)
        windows = np.zeros((len(states), WINDOW), np.float32)
        for r in range(probs.shape[1]):
            for j, block in enumerate(blocks):
                windows[j] = block[r] if r < len(block) else 0.0
            prob, stepped = self.model.step(torch.from_numpy(windows), batch)
            active = (counts > r).view(-1, 1)
            batch = VADState(*(torch.where(active, new, old) for new, old in zip(stepped, batch)))
            probs[:, r] = prob.numpy()
        for j, (state, block) in enumerate(zip(states, blocks)):
            for name, field in zip(VADState._fields, batch):
                state[f"vad/{name}"] = field[j : j + 1].numpy().copy()
            state["vad/probs"] = np.concatenate([state["vad/probs"], probs[j, : len(block)]])
            state["vad/windows"] = np.asarray(int(state["vad/windows"]) + len(block), np.int64)

    def _score(self, state: State, first: int) -> None:
        """Sets the voice score of mel frames ``first…frames-1`` and drops probabilities no later
        frame needs."""
        frames, windows, base = int(state["frames"]), int(state["vad/windows"]), int(state["vad/first"])
        # The window each frame takes (-1: none complete yet); the last entry is the next frame's.
        window = np.minimum((np.arange(first, frames + 1) * self.hop + self.window_end) // WINDOW - 1, windows - 1)
        if frames > first:
            scores = np.zeros(frames - first, np.float32)
            known = window[:-1] >= 0
            scores[known] = state["vad/probs"][window[:-1][known] - base]
            state["voice"] = np.concatenate([state["voice"][: len(state["voice"]) - len(scores)], scores])
        keep = max(int(window[-1]), 0)
        if keep > base:
            state["vad/probs"] = state["vad/probs"][keep - base :].copy()
            state["vad/first"] = np.asarray(keep, np.int64)
