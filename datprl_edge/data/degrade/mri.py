"""MRI super-resolution input: a low-resolution acquisition simulated by k-space truncation."""

from __future__ import annotations

import numpy as np

from datprl_edge.data.degrade._common import check_image, gray3, luminance
from datprl_edge.data.degrade.resample import scale_factor


def kspace_truncation(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Keep the central 1/f of k-space per axis, zero-fill to full size, return the magnitude.

    Recipe: a low-resolution MR acquisition samples only the central k-space lines; zero-filled
    reconstruction gives the blur plus Gibbs truncation ringing of real low-res scans
    (Chaudhari et al., "Super-resolution musculoskeletal MRI using deep learning", MRM 2018;
    fastMRI, Zbontar et al. 2018). f = 2..6 over severity 0..1, default 0.5 is f = 4 (1/4 per
    axis). Works on the luminance and returns equal channels. Deterministic (seed unused).
    """
    y = luminance(check_image(image))
    h, w = y.shape
    f = scale_factor(severity)
    kspace = np.fft.fftshift(np.fft.fft2(y))
    kh, kw = max(2, round(h / f)), max(2, round(w / f))
    top, left = h // 2 - kh // 2, w // 2 - kw // 2
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + kh, left:left + kw] = True
    recon = np.abs(np.fft.ifft2(np.fft.ifftshift(np.where(mask, kspace, 0))))
    return gray3(recon)
