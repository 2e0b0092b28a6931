"""Additive white Gaussian noise, the classic synthetic denoising benchmark."""

from __future__ import annotations

import numpy as np

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish


def noise_sigma(severity: float) -> float:
    """Severity 0..1 maps linearly to sigma 0..50 (of 255); the default 0.5 is sigma 25."""
    return 50.0 / 255.0 * check_severity(severity)


def gaussian_noise(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Add i.i.d. N(0, sigma^2) noise per pixel and channel, then clip to [0, 1].

    Recipe: DnCNN (Zhang et al., TIP 2017) and the all-in-one benchmarks (AirNet, PromptIR) on
    BSD68/CBSD68 with sigma in {15, 25, 50}.
    """
    img = check_image(image)
    rng = as_rng(seed)
    return finish(img + rng.standard_normal(img.shape) * noise_sigma(severity))
