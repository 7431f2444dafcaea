"""Utterance endpointing for live ASR, as a pure object: ``Endpointer`` (no Beam, no clock).

Kaldi's online endpoint rules, as sherpa-onnx and NeMo's streaming demos use them. Each rule
fires when the utterance so far has ``trailing silence >= min_trailing_silence`` and
``length >= min_utterance_length``, and (if ``must_contain_nonsilence``) holds something other
than silence. sherpa-onnx's defaults (``EndpointConfig``):

* rule 1: 2.4 s of trailing silence, even with nothing said (drops long silences);
* rule 2: 1.2 s of trailing silence after something was said (the usual end of a sentence);
* rule 3: an utterance of 20 s ends whatever it holds (bounds an utterance's state).

Silence is decided per encoder output frame (e.g. 80 ms). sherpa-onnx counts only the CTC /
transducer blank run; here a frame is silent when the CTC head's best label is blank **and**
a voice-activity detector finds no voice in it: by default an energy detector (its loudest
analysis frame is below ``vad_threshold_db`` dBFS), or with ``vad="silero"`` Silero's trained
detector (no analysis frame reaches ``speech_threshold`` speech probability;
``operators.asr.live_vad``). Quiet speech the model already labels keeps an utterance open
either way; loud breath, hum or music that the model labels blank keeps it open with the energy
detector, not with Silero's.

The endpointer sees the frames in order, in pieces of any size, and finds the same endpoints
whatever the pieces are (tested against one call on the whole sequence). After an endpoint the
next frame starts a new utterance with fresh counters.
"""

from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["EndpointRule", "EndpointConfig", "Endpointer", "DEFAULT_ENDPOINTING", "voiced_frames"]


class EndpointRule(NamedTuple):
    """One rule: fires when all its conditions hold."""

    must_contain_nonsilence: bool
    min_trailing_silence: float  # seconds
    min_utterance_length: float  # seconds


class EndpointConfig(NamedTuple):
    """Endpoint rules (any firing ends the utterance) and the voice-activity detector."""

    rule1: EndpointRule = EndpointRule(False, 2.4, 0.0)
    rule2: EndpointRule = EndpointRule(True, 1.2, 0.0)
    rule3: EndpointRule = EndpointRule(False, 0.0, 20.0)
    vad_threshold_db: float = -45.0  # energy detector: voice at or above this many dBFS
    vad: str = "energy"  # or "silero": Silero VAD's speech probability
    speech_threshold: float = 0.5  # silero: voice at or above this probability (Silero's default)
    vad_model: str = ""  # silero: silero_vad.jit or .safetensors ("": the silero-vad package's)

    @property
    def rules(self) -> Sequence[EndpointRule]:
        return (self.rule1, self.rule2, self.rule3)

    @property
    def voice_threshold(self) -> float:
        """The voice score threshold of the detector in use (dBFS or probability)."""
        return self.speech_threshold if self.vad == "silero" else self.vad_threshold_db


DEFAULT_ENDPOINTING = EndpointConfig()


def voiced_frames(scores: np.ndarray, frames: int, threshold: float) -> np.ndarray:
    """Voice per encoder frame: whether any of its analysis frames' scores reaches ``threshold``.

    Args:
        scores: Per analysis (mel) frame voice score (energy in dBFS, or speech probability),
            covering the encoder frames in order.
        frames: Encoder output frames the analysis frames map onto (each takes an equal share).
        threshold: Voice threshold, in the scores' unit.
    """
    if frames <= 0:
        return np.zeros(0, np.bool_)
    loud = np.asarray(scores) >= threshold
    starts = _shares(len(loud), frames)
    voiced = np.zeros(frames, np.bool_)
    inside = starts < len(loud)
    if inside.any():  # an empty share takes its first analysis frame, as reduceat does
        voiced[inside] = np.logical_or.reduceat(loud, starts[inside])
    return voiced


@lru_cache(maxsize=64)
def _shares(analysis_frames: int, frames: int) -> np.ndarray:
    """First analysis frame of each encoder frame's equal share (a live step repeats the same sizes)."""
    starts = np.linspace(0, analysis_frames, frames + 1).round().astype(np.int64)[:-1]
    starts.flags.writeable = False
    return starts


class Endpointer:
    """Finds utterance ends in a sequence of encoder frames flagged silent or not.

    Args:
        config: Rules (seconds) and the VAD threshold.
        frame_seconds: Audio per encoder frame (hop × subsampling, e.g. 0.08 s).
        state: A previous ``state`` dict to continue from (``None``: a new stream).
    """

    def __init__(self, config: EndpointConfig, frame_seconds: float, state: Optional[Dict[str, int]] = None):
        self.config = config
        self.frame_seconds = frame_seconds
        state = state or {}
        self.frames = int(state.get("frames", 0))  # frames seen in the stream
        self.length = int(state.get("length", 0))  # frames in the current utterance
        self.trailing = int(state.get("trailing", 0))  # trailing silent frames of the utterance

    @property
    def state(self) -> Dict[str, int]:
        """The counters as plain ints (to store between calls)."""
        return {"frames": self.frames, "length": self.length, "trailing": self.trailing}

    def feed(self, silent: Sequence[bool]) -> List[int]:
        """Takes the next frames' silence flags; returns the stream frame indices that end an
        utterance (the utterance includes that frame; the next frame starts a new one)."""
        ends: List[int] = []
        for flag in silent:
            self.length += 1
            self.trailing = self.trailing + 1 if flag else 0
            if self._fires():
                ends.append(self.frames)
                self.length = self.trailing = 0
            self.frames += 1
        return ends

    def _fires(self) -> bool:
        length = self.length * self.frame_seconds
        trailing = self.trailing * self.frame_seconds
        nonsilence = self.length > self.trailing
        return any((nonsilence or not rule.must_contain_nonsilence) and trailing >= rule.min_trailing_silence
                   and length >= rule.min_utterance_length for rule in self.config.rules)
