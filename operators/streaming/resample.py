"""Streaming sample-rate conversion for live audio (pure NumPy): ``StreamResampler``.

Clients (browsers, phones) capture at their device rate, 44.1 or 48 kHz; the ASR model takes
16 kHz. The live edge converts each stream once, as its pieces arrive, with a Kaiser-windowed
sinc interpolator (16 zero crossings, cut-off at 94 % of the lower Nyquist frequency, beta 8:
about 80 dB stop-band). Output sample ``n`` sits at input position ``n * rate_in / rate_out``;
it is computed as soon as the input it needs has arrived, so the output of a stream fed in
pieces of any size equals the output of the whole signal (tested), and the held state is the
filter's support (a few hundred samples), not the stream.
"""

import math
from typing import Optional

import numpy as np

ZERO_CROSSINGS = 16
CUTOFF = 0.94
KAISER_BETA = 8.0


class StreamResampler:
    """Converts one mono stream from ``rate_in`` to ``rate_out`` Hz, piece by piece.

    Args:
        rate_in: Sample rate of the input, Hz.
        rate_out: Sample rate of the output, Hz.
    """

    def __init__(self, rate_in: int, rate_out: int):
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        fc = 0.5 * CUTOFF * min(1.0, self.up / self.down)  # cycles per input sample
        self.half = int(math.ceil(ZERO_CROSSINGS / (2 * fc)))
        offsets = np.arange(-self.half + 1, self.half + 1)
        fracs = (np.arange(self.up) * self.down % self.up) / self.up  # fractional position per phase
        d = fracs[:, None] - offsets[None, :]
        window = np.kaiser(2 * self.half + 1, KAISER_BETA)
        self.table = (2 * fc * np.sinc(2 * fc * d) * np.interp(d, np.arange(-self.half, self.half + 1), window))
        self.table = self.table.astype(np.float32)
        self._base = -self.half  # the buffer holds inputs from this absolute index (zeros before 0)
        self._buffer = np.zeros(self.half, np.float32)
        self._received = 0
        self._next = 0  # next output sample index

    def _emit(self, limit: int) -> np.ndarray:
        """Outputs ``_next..limit-1`` (their support must be in the buffer)."""
        if limit <= self._next:
            return np.zeros(0, np.float32)
        ns = np.arange(self._next, limit, dtype=np.int64)
        starts = ns * self.down // self.up - self.half + 1 - self._base
        taps = self.table.shape[1]
        gathered = self._buffer[starts[:, None] + np.arange(taps)[None, :]]
        out = np.einsum("nk,nk->n", gathered, self.table[ns % self.up]).astype(np.float32)
        self._next = limit
        keep_from = int(self._next * self.down // self.up) - self.half + 1 - self._base
        self._buffer = self._buffer[keep_from:]
        self._base += keep_from
        return out

    def push(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Adds input samples; returns every output sample now computable (all, if ``final``)."""
        samples = np.asarray(samples, np.float32)
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += len(samples)
        if final:
            self._buffer = np.concatenate([self._buffer, np.zeros(self.half + 1, np.float32)])
            total = -(-self._received * self.up // self.down)  # ceil: resample_poly's length
            return self._emit(total)
        # Output n needs inputs up to floor(p_n) + half, all received: p_n <= received - 1 - half.
        limit = ((self._received - self.half) * self.up - 1) // self.down + 1 if self._received > self.half else 0
        return self._emit(max(limit, self._next))


def resampler_for(rate_in: int, rate_out: int) -> Optional[StreamResampler]:
    """A resampler, or ``None`` when the rates are equal (nothing to do)."""
    return None if int(rate_in) == int(rate_out) else StreamResampler(rate_in, rate_out)
