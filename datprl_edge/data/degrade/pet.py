"""Low-count PET: binomial thinning of a count image to a fraction of the dose."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, gray3, luminance

FULL_DOSE_PEAK_COUNTS = 400.0  # expected counts in the brightest pixel at full dose
POSTFILTER_SIGMA = 1.0  # pixels: the Gaussian post-reconstruction filter of clinical PET


def dose_reduction_factor(severity: float) -> float:
    """Severity 0..1 maps log-linearly to a dose reduction factor 2..128; default 0.5 is 16."""
    return 2.0 ** (1.0 + 6.0 * check_severity(severity))


def low_count_pet(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Scale the luminance to expected counts, draw a full-dose Poisson count image, keep each
    count with probability 1/DRF (binomial thinning) and rescale to the input's intensity scale.

    Recipe: count thinning as used to make low-dose PET from full-dose data (the Ultra-low Dose
    PET Imaging Challenge, dose reduction factors 4..100; Xu et al., "200x low-dose PET
    reconstruction using deep learning", arXiv 2017). Thinning a Poisson(l) count by p gives
    Poisson(l p): the statistics of a scan at 1/DRF of the dose. The input plays the
    post-filtered full-dose image, so the noise gets the same Gaussian post-filter (linear), which
    gives the mottled texture of low-count PET rather than pixel grain.
    """
    y = luminance(check_image(image))
    rng = as_rng(seed)
    keep = 1.0 / dose_reduction_factor(severity)
    full = rng.poisson(y * FULL_DOSE_PEAK_COUNTS)
    low = rng.binomial(full, keep) / (FULL_DOSE_PEAK_COUNTS * keep)
    return gray3(y + gaussian_filter(low - y, POSTFILTER_SIGMA, mode="reflect"))
