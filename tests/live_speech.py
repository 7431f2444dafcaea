"""Spoken test utterances for the live tests: espeak-ng speech (deterministic) at 16 kHz.

The embedded ASR model was trained on espeak-ng digits and commands, so it transcribes these.
Tests that need speech skip, with the reason, where espeak-ng is not installed
(``make install`` installs it with apt-get where it can).
"""

import functools
import shutil
from typing import List, Sequence, Tuple

import numpy as np
import pytest

RATE = 16000
PHRASES = ["one two three", "stop", "seven eight", "four five", "open", "nine", "left right", "six zero"]

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install -y espeak-ng)")


@functools.lru_cache(maxsize=None)
def speak(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us), 16 kHz float32 mono."""
    from pipelines.tools.train_asr import synthesize

    return synthesize(text, "en-us", 160, 50, 0)


def noise(n: int, seed: int, level: float = 0.002) -> np.ndarray:
    """Quiet white noise (about -54 dBFS), the 'silence' between utterances."""
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def conversation(phrases: Sequence[str], seed: int, pause_s: float = 1.8) -> Tuple[np.ndarray, List[str]]:
    """The phrases spoken one after another, each followed by ``pause_s`` of quiet noise."""
    parts = []
    for i, text in enumerate(phrases):
        parts += [speak(text), noise(int(pause_s * RATE), seed * 100 + i)]
    return np.concatenate(parts).astype(np.float32), list(phrases)


def pcm16(x: np.ndarray) -> np.ndarray:
    """Float audio as a client sends it (s16 little-endian)."""
    return (np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2")


def write_wav(path, x: np.ndarray, rate: int = RATE) -> None:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm16(x).tobytes())
