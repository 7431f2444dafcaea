"""NeMo-compatible log-mel front end for speech models (no Beam import).

Reproduces ``AudioToMelSpectrogramPreprocessor`` / ``FilterbankFeatures`` of NVIDIA NeMo at
inference, with the settings of NeMo's streaming FastConformer models: 16 kHz audio, 25 ms Hann
window (``periodic=False``) zero-padded to a 512-point FFT, 10 ms hop, centred STFT with constant
(zero) padding, pre-emphasis 0.97, power spectrum, Slaney-style mel filterbank with Slaney area
normalisation, ``log(x + 2**-24)``, no per-utterance normalisation and no dither. A signal of
``N`` samples gives ``N // hop`` valid frames, as NeMo's ``get_seq_len``.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

__all__ = ["MelConfig", "mel_filterbank", "log_mel"]


@dataclass(frozen=True)
class MelConfig:
    """Front-end settings (NeMo preprocessor names in comments).

    Attributes:
        sample_rate: Audio rate in Hz (``sample_rate``).
        n_mels: Number of mel bands (``features``).
        win_length: Window length in samples (``window_size`` × rate).
        hop_length: Hop in samples (``window_stride`` × rate).
        n_fft: FFT size (``n_fft``).
        preemph: Pre-emphasis coefficient, or 0 for none (``preemph``).
        log_zero_guard: Value added before the log (``log_zero_guard_value``).
        lowfreq: Lowest filter edge in Hz (``lowfreq``).
        highfreq: Highest filter edge in Hz, 0 for Nyquist (``highfreq``).
    """

    sample_rate: int = 16000
    n_mels: int = 80
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    preemph: float = 0.97
    log_zero_guard: float = 2.0**-24
    lowfreq: float = 0.0
    highfreq: float = 0.0


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's ``htk=False``)."""
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freqs


def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """Returns the ``[n_mels, n_fft // 2 + 1]`` triangular filterbank NeMo gets from librosa.

    Computed in float64 and rounded to float32, like ``librosa.filters.mel(norm="slaney")``.
    """
    fmax = config.highfreq or config.sample_rate / 2.0
    fft_freqs = np.linspace(0.0, config.sample_rate / 2.0, 1 + config.n_fft // 2)
    mel_edges = np.linspace(
        _hz_to_mel(np.array([config.lowfreq], dtype=np.float64))[0],
        _hz_to_mel(np.array([fmax], dtype=np.float64))[0],
        config.n_mels + 2,
    )
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(
    audio: torch.Tensor, lengths: torch.Tensor | None = None, config: MelConfig = MelConfig()
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Computes NeMo-style log-mel features of a batch of waveforms.

    Args:
        audio: Float waveforms ``[B, N]`` (or ``[N]``) in [-1, 1] at ``config.sample_rate``.
        lengths: Valid samples per row ``[B]``; defaults to ``N`` for every row.
        config: Front-end settings.

    Returns:
        ``(features [B, n_mels, F], frame_lengths [B])`` with ``F = N // hop + 1`` and
        ``frame_lengths = lengths // hop``; frames past a row's length are zero, as in NeMo.
    """
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    audio = audio.to(torch.float32)
    batch, num_samples = audio.shape
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long)
    lengths = lengths.to(torch.long)
    valid = torch.arange(num_samples).unsqueeze(0) < lengths.unsqueeze(1)
    if config.preemph:
        audio = torch.cat([audio[:, :1], audio[:, 1:] - config.preemph * audio[:, :-1]], dim=1)
    audio = audio.masked_fill(~valid, 0.0)
    window = torch.hann_window(config.win_length, periodic=False, dtype=torch.float32)
    spec = torch.stft(
        audio,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2)
    features = torch.log(torch.matmul(mel_filterbank(config), power) + config.log_zero_guard)
    frame_lengths = torch.where(lengths == 0, torch.zeros_like(lengths), lengths // config.hop_length)
    frame_mask = torch.arange(features.shape[-1]).unsqueeze(0) >= frame_lengths.unsqueeze(1)
    return features.masked_fill(frame_mask.unsqueeze(1), 0.0), frame_lengths
