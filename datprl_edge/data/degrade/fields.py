"""Smooth random fields (fractional Brownian motion) for clouds and haze depth proxies."""

from __future__ import annotations

import numpy as np


def fbm_field(shape, rng: np.random.Generator, beta: float = 3.0, cutoff: float = 1.0) -> np.ndarray:
    """Fractal noise in [0, 1] with power spectrum ~ 1/f**beta, by spectral synthesis.

    beta = 2H + 2 for 2-D fBm with Hurst exponent H (Peitgen & Saupe, "The Science of Fractal
    Images", 1988, ch. 2); beta near 3 gives cloud-like large structures. `cutoff` is the lowest
    frequency in cycles per image that keeps full weight, so the field has a few big features.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.rfftfreq(w)[None, :] * w
    f = np.sqrt(fx * fx + fy * fy)
    amp = np.maximum(f, cutoff) ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spectrum = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spectrum, s=(h, w))
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-12)
