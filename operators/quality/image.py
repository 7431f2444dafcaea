"""Image fidelity: PSNR and SSIM between a reference image (or video frames) and its reconstruction.

SSIM follows Wang et al. (2004) with the settings of scikit-image's ``structural_similarity``
defaults: a 7×7 uniform window, the sample covariance, K1 = 0.01, K2 = 0.03, the mean over the
windows that lie wholly inside the image, averaged over colour channels. The tests check it
against scikit-image.
"""

from typing import Optional

import numpy as np

from operators.tokenizers.dual_image import psnr as unit_psnr

SSIM_WINDOW = 7
K1, K2 = 0.01, 0.03


def psnr(reference: np.ndarray, other: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical inputs).

    Args:
        reference: Reference pixels (any shape; uint8 images use ``data_range`` 255).
        other: Reconstruction of the same shape.
        data_range: Largest possible pixel value minus the smallest.
    """
    _same_shape(reference, other)
    return unit_psnr(np.asarray(reference, np.float64) / data_range, np.asarray(other, np.float64) / data_range)


def _window_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size × size`` window lying wholly inside ``x`` (``[H, W]``), by summed-area table."""
    table = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
    table[1:, 1:] = x.cumsum(0).cumsum(1)
    total = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    return total / (size * size)


def _ssim_plane(x: np.ndarray, y: np.ndarray, data_range: float, size: int) -> float:
    ux, uy = _window_mean(x, size), _window_mean(y, size)
    uxx, uyy, uxy = _window_mean(x * x, size), _window_mean(y * y, size), _window_mean(x * y, size)
    cov_norm = size * size / (size * size - 1.0)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(reference: np.ndarray, other: np.ndarray, data_range: float = 255.0, window: int = SSIM_WINDOW) -> float:
    """Mean structural similarity of two images ``[H, W]`` or ``[H, W, C]`` (1.0 on identity).

    Raises:
        ValueError: Different shapes, or an image smaller than the window.
    """
    _same_shape(reference, other)
    x, y = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim != 3 or min(x.shape[:2]) < window:
        raise ValueError(f"SSIM needs [H, W] or [H, W, C] images of at least {window}x{window}, got {reference.shape}")
    return float(np.mean([_ssim_plane(x[..., c], y[..., c], data_range, window) for c in range(x.shape[2])]))


def frames_psnr(reference: np.ndarray, other: np.ndarray, data_range: float = 255.0) -> Optional[float]:
    """PSNR over aligned video frames ``[N, H, W, C]`` (the first min(N) of each), from their
    pooled mean squared error; None when either has no frame."""
    n = min(len(reference), len(other))
    if n == 0:
        return None
    return psnr(reference[:n], other[:n], data_range)


def frames_ssim(reference: np.ndarray, other: np.ndarray, data_range: float = 255.0) -> Optional[float]:
    """Mean per-frame SSIM over aligned video frames; None when either has no frame."""
    n = min(len(reference), len(other))
    if n == 0:
        return None
    return float(np.mean([ssim(reference[i], other[i], data_range) for i in range(n)]))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shapes differ: {np.shape(a)} vs {np.shape(b)}")
