"""``IncrementalFrontEnd``: NeMo's log-mel front end over audio that arrives in pieces (no Beam).

Part of a live ASR stream's state (``operators.asr.stream_engine.LiveASR``): the pre-emphasised
samples the next mel frames still need (at most one 25 ms window plus one piece), the last raw
sample (pre-emphasis), counters, and the mel frames not yet stepped with their voice scores for
the endpointer (energy in dBFS; ``operators.asr.live_vad`` replaces them with speech
probabilities). A frame is computed as soon as its window is complete, and the end of the
stream pads the last ones as the offline front end does, so the frames equal
``operators.asr.frontend.log_mel`` of the whole audio.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from operators.asr.frontend import MelConfig, mel_filterbank

State = Dict[str, np.ndarray]


class IncrementalFrontEnd:
    """Mel frames of many streams' pieces: per-stream bookkeeping, one FFT for the batch."""

    def __init__(self, mel: MelConfig):
        self.mel = mel
        self._fbank = mel_filterbank(mel)
        self._window = torch.nn.functional.pad(
            torch.hann_window(mel.win_length, periodic=False, dtype=torch.float32),
            ((mel.n_fft - mel.win_length) // 2,) * 2,
        )
        self._half = mel.n_fft // 2
        self._window_power = float(self._window.pow(2).mean())

    def init_state(self) -> State:
        """The front-end fields of a new stream's state."""
        return dict(
            tail=np.zeros(0, np.float32),  # pre-emphasised samples from frame `frames`' window start
            prev=np.zeros(1, np.float32),  # last raw sample (pre-emphasis)
            samples=np.zeros((), np.int64),  # samples received
            frames=np.zeros((), np.int64),  # mel frames computed
            mel=np.zeros((self.mel.n_mels, 0), np.float32),  # mel frames not yet stepped
            voice=np.zeros(0, np.float32),  # their voice scores (energy, dBFS; or speech probability)
            final=np.zeros((), np.bool_),  # the stream ended
        )

    def push(self, states: Sequence[State], inputs: Sequence[np.ndarray], final: bool) -> List[State]:
        """Adds samples (and with ``final`` the end) to streams; computes the mel frames now complete.

        The frames of all the streams go through one FFT; per stream, only the sample
        bookkeeping and the filterbank product are done one by one.
        """
        hop, half = self.mel.hop_length, self._half
        pushed: List[State] = []
        frames: List[np.ndarray] = []
        spans: List[Tuple[int, int]] = []
        for state, samples in zip(states, inputs):
            if bool(state["final"]):
                raise ValueError("stream already ended")
            state = dict(state)
            samples = np.asarray(samples, np.float32)
            n_old = int(state["samples"])
            if len(samples):
                shifted = np.concatenate([state["prev"], samples[:-1]])
                emph = samples - self.mel.preemph * shifted if self.mel.preemph else samples.copy()
                if n_old == 0:
                    emph[0] = samples[0]
                state["prev"] = samples[-1:].copy()
                state["tail"] = np.concatenate([state["tail"], emph])
            total = n_old + len(samples)
            state["samples"] = np.asarray(total, np.int64)
            first = int(state["frames"])
            # Frame t's window covers samples [t*hop - win/2, t*hop + win/2): ready once they all arrived.
            if final:
                state["final"] = np.asarray(True)
                last = total // hop if total else 0
            else:
                last = max(0, (total - self.mel.win_length // 2) // hop + 1)
                last = min(last, total // hop)
            if last > first:
                frames.append(self._frame_windows(state["tail"], first, last, total))
                spans.append((len(pushed), last - first))
                state["frames"] = np.asarray(last, np.int64)
                keep_from = max(0, last * hop - half) - max(0, first * hop - half)
                state["tail"] = state["tail"][keep_from:].copy()
            pushed.append(state)
        if frames:
            analysed = self._analyse(np.concatenate(frames), [count for _, count in spans])
            for (i, _), (mel, energy) in zip(spans, analysed):
                state = pushed[i]
                state["mel"] = np.concatenate([state["mel"], mel], axis=1)
                state["voice"] = np.concatenate([state["voice"], energy])
        return pushed

    def _frame_windows(self, tail: np.ndarray, first: int, last: int, total: int) -> np.ndarray:
        """The ``n_fft`` samples of frames ``first..last-1`` (``[frames, n_fft]``, zero padded at
        the stream's start and end); ``tail`` starts at sample ``max(0, first*hop - n_fft/2)``."""
        hop, half = self.mel.hop_length, self._half
        start = first * hop - half
        lead = max(0, -start)
        need = (last - 1) * hop + half - max(0, start)
        avail = min(len(tail), max(0, total - max(0, start)))
        padded = np.zeros(lead + max(need, avail), np.float32)
        padded[lead : lead + avail] = tail[:avail]
        return np.lib.stride_tricks.sliding_window_view(padded, self.mel.n_fft)[::hop][: last - first]

    def _analyse(self, frames: np.ndarray, counts: Sequence[int]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per stream (``counts`` consecutive frames each): log-mel frames ``[n_mels, count]`` and
        their energies in dBFS (of the windowed, pre-emphasised samples) of ``[frames, n_fft]``
        sample windows. The FFT runs once for all rows, the filterbank product once per frame
        count: a matrix product's rounding depends on its width, so streams with the same number of
        frames share one batched product (each its own matrix of the batch) and a stream's result
        never depends on its batch mates."""
        windowed = torch.from_numpy(frames) * self._window
        energy = (10.0 * torch.log10(windowed.pow(2).mean(-1) / self._window_power + 1e-10)).numpy()
        spec = torch.fft.rfft(windowed, dim=-1)
        power = torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out: List[Tuple[np.ndarray, np.ndarray]] = [None] * len(counts)  # type: ignore[list-item]
        for count in sorted(set(counts)):
            streams = [i for i, c in enumerate(counts) if c == count]
            rows = torch.from_numpy((starts[streams, None] + np.arange(count)).reshape(-1))
            stacked = power.index_select(0, rows).view(len(streams), count, -1)
            mel = torch.log(torch.matmul(self._fbank, stacked.transpose(1, 2)) + self.mel.log_zero_guard).numpy()
            for k, i in enumerate(streams):
                out[i] = (mel[k], energy[starts[i] : starts[i] + count].astype(np.float32))
        return out
