"""Kaldi-compatible log-mel filterbank (``compute-fbank-feats`` / ``torchaudio.compliance.kaldi``).

The settings are SemantiCodec's: 16 kHz, 128 mel bins, 25 ms frames every 10 ms, Hanning
window, no dither, ``htk_compat`` and no energy term (so ``htk_compat`` changes nothing).
Kaldi's other defaults apply: frames fully inside the signal only (``snip_edges``), per-frame
DC removal, pre-emphasis 0.97 (the first sample uses itself as its predecessor), FFT size
rounded up to a power of two, power spectrum, triangular filters equally spaced on Kaldi's mel
scale ``1127 ln(1 + f/700)`` from 20 Hz to Nyquist over the FFT bins below Nyquist, and
``log(max(energy, float32 eps))``.

The pure core is :func:`fbank`; :func:`mel_banks` exposes the filter matrix so a decoder can
map mel energies back to a linear spectrum.
"""

import functools

import numpy as np

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPS = float(np.finfo(np.float32).eps)


def frame_sizes(sample_rate: int = SAMPLE_RATE) -> tuple:
    """Returns ``(window_length, hop, n_fft)`` in samples for 25 ms / 10 ms frames."""
    length = int(sample_rate * FRAME_LENGTH_MS / 1000)
    hop = int(sample_rate * FRAME_SHIFT_MS / 1000)
    return length, hop, 1 << (length - 1).bit_length()


def mel_scale(freq: np.ndarray) -> np.ndarray:
    """Kaldi's mel scale."""
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(num_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters ``[num_bins, n_fft // 2 + 1]`` float32 (the Nyquist column is zero)."""
    _, _, n_fft = frame_sizes(sample_rate)
    half = n_fft // 2
    lo, hi = mel_scale(LOW_FREQ), mel_scale(sample_rate / 2)
    delta = (hi - lo) / (num_bins + 1)
    left = lo + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(half) * sample_rate / n_fft)[None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    out = np.zeros((num_bins, half + 1), np.float32)
    out[:, :half] = weights
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def hanning(length: int) -> np.ndarray:
    """Kaldi's "hanning" window: ``0.5 − 0.5 cos(2πn / (N − 1))`` (symmetric)."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))
    w.setflags(write=False)
    return w


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames Kaldi produces with ``snip_edges``: only frames that fit inside the signal."""
    length, hop, _ = frame_sizes(sample_rate)
    return 0 if num_samples < length else 1 + (num_samples - length) // hop


def fbank(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, num_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """Log-mel filterbank ``[T, num_bins]`` float32 of a mono waveform (samples in [-1, 1]).

    Computed in float64 and rounded once, so it matches Kaldi up to float32 rounding.
    """
    x = np.asarray(wave, np.float64).reshape(-1)
    length, hop, n_fft = frame_sizes(sample_rate)
    t = num_frames(x.size, sample_rate)
    if t == 0:
        return np.zeros((0, num_bins), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::hop][:t].copy()
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - PREEMPHASIS
    frames *= hanning(length)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    mel = power @ mel_banks(num_bins, sample_rate).T.astype(np.float64)
    return np.log(np.maximum(mel, EPS)).astype(np.float32)
