"""Degradation models that training never uses, for the shifted evaluation set.

Each keeps the task's physics but changes the model where a real acquisition would differ from the
training generator: another downsampling kernel for SR, receiver noise for MRI, more electronic
noise for CT. Same signature as the other degradations: ``fn(image, severity, seed) -> image``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from datprl_edge.data.degrade import ct as _ct
from datprl_edge.data.degrade._common import as_rng, check_image, finish, gray3
from datprl_edge.data.degrade.mri import kspace_truncation
from datprl_edge.data.degrade.resample import bicubic_resize, scale_factor

BD_SIGMA = 1.6  # Gaussian blur before decimation: the "BD" degradation of SRMD/RDN (Zhang et al. 2018)
MRI_NOISE_SIGMA = 0.02  # complex receiver noise, of full scale: magnitude images get Rician noise
CT_ELECTRONIC_SIGMA = 20.0  # 2x the training detector read-out noise (photon counts)


def blur_down_up(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Gaussian blur (sigma 1.6 px), bicubic downscale by the factor, bicubic upscale back."""
    img = check_image(image)
    h, w = img.shape[:2]
    f = scale_factor(severity)
    blurred = gaussian_filter(img, (BD_SIGMA, BD_SIGMA, 0), mode="reflect")
    small = bicubic_resize(blurred, (max(1, round(h / f)), max(1, round(w / f))))
    return finish(bicubic_resize(small, (h, w)))


def noisy_kspace_truncation(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """`kspace_truncation` plus complex Gaussian receiver noise, so the magnitude carries Rician noise."""
    rng = as_rng(seed)
    y = kspace_truncation(image, severity)[..., 0].astype(np.float64)
    noisy = np.abs(y + MRI_NOISE_SIGMA * (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)))
    return gray3(noisy)


def noisy_detector_ct(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """`low_dose_ct` (same sinogram, dose and FBP) with 2x the electronic read-out noise."""
    return _ct.low_dose_ct(image, severity, seed, electronic_sigma=CT_ELECTRONIC_SIGMA)
