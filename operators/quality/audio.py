"""Audio fidelity: PESQ (wide band), STOI and log-mel distance between a reference waveform and
its reconstruction.

PESQ (ITU-T P.862.2) comes from the ``pesq`` package and STOI (Taal et al. 2011) from
``pystoi``; both compare two mono signals at one rate. Signals of different lengths (a codec's
padding, Griffin-Lim framing) are compared over their common start.
"""

from typing import Optional, Tuple

import numpy as np

from operators.media import kaldi_fbank
from operators.tokenizers.semantic_audio import log_mel_distance

PESQ_WB_RATE = 16000
"""Wide-band PESQ is defined at 16 kHz only."""


def aligned(reference: np.ndarray, other: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The common start of two mono waveforms, as float64."""
    n = min(len(reference), len(other))
    return np.asarray(reference[:n], np.float64), np.asarray(other[:n], np.float64)


def pesq_wb(reference: np.ndarray, other: np.ndarray, sample_rate: int = PESQ_WB_RATE) -> Optional[float]:
    """Wide-band PESQ MOS-LQO (about 1.0 to 4.64; higher is better).

    Returns:
        The score, or None where PESQ is undefined for the input: no speech detected (silence,
        pure tones) or too short a signal (under about a quarter of a second).

    Raises:
        ValueError: ``sample_rate`` is not 16 kHz.
    """
    from pesq import PesqError, pesq

    if sample_rate != PESQ_WB_RATE:
        raise ValueError(f"wide-band PESQ needs 16 kHz audio, got {sample_rate} Hz")
    ref, deg = aligned(reference, other)
    if not ref.size or not np.abs(ref).max() or not np.abs(deg).max():
        return None  # silence: PESQ would divide by a zero peak
    score = pesq(sample_rate, ref, deg, "wb", on_error=PesqError.RETURN_VALUES)
    return None if score < 0 else float(score)


def stoi(reference: np.ndarray, other: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (0 to 1; higher is better); ``extended`` gives ESTOI."""
    from pystoi import stoi as pystoi_stoi

    ref, deg = aligned(reference, other)
    return float(pystoi_stoi(ref, deg, sample_rate, extended=extended))


def mel_distance_db(reference: np.ndarray, other: np.ndarray, sample_rate: int) -> Optional[float]:
    """Mean absolute difference in dB of the Kaldi log-mel spectrograms (128 bins, 25 ms / 10 ms)
    of two mono waveforms; lower is better, 0 on identity. None when shorter than one frame."""
    ref, deg = aligned(reference, other)
    mel_ref, mel_deg = kaldi_fbank.fbank(ref, sample_rate), kaldi_fbank.fbank(deg, sample_rate)
    return log_mel_distance(mel_ref, mel_deg) if len(mel_ref) else None
