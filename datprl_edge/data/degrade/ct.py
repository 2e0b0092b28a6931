"""Low-dose CT: Poisson photon statistics in the sinogram, filtered back-projection."""

from __future__ import annotations

import numpy as np
from skimage.transform import iradon, radon

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, gray3, luminance

MAX_LINE_INTEGRAL = 4.0  # thickest ray: ~21 cm of water at 0.019/mm (a head or slim abdomen)
N_ANGLES = 180  # views over 180 degrees: enough for a 256 image, fast enough for tests
ELECTRONIC_SIGMA = 10.0  # detector read-out noise, in photon counts


def incident_photons(severity: float) -> float:
    """Severity 0..1 maps log-linearly to I0 = 1e6..1e4 photons per ray and view (for a 256-pixel
    image); default 1e5."""
    return 10.0 ** (6.0 - 2.0 * check_severity(severity))


def attenuation_sinogram(y: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """Sinogram of `y` read as attenuation, scaled so its thickest ray is MAX_LINE_INTEGRAL.

    Display images carry no calibrated Hounsfield units, so the absolute scale is set by the
    thickest path instead; returns (line integrals, scale from intensity to attenuation).
    """
    unit = radon(y, theta, circle=False)
    peak = float(unit.max())
    scale = MAX_LINE_INTEGRAL / peak if peak > 1e-6 else 1.0
    return unit * scale, scale


def low_dose_ct(image, severity: float = 0.5, seed=None,
                electronic_sigma: float = ELECTRONIC_SIGMA) -> np.ndarray:
    """Simulate a reduced-dose scan of a CT slice and return its reconstruction.

    Recipe (Zeng et al., "A simple low-dose x-ray CT simulation from high-dose scan", IEEE TNS
    2015; Yu et al., Med. Phys. 2012): the luminance is read as a linear-attenuation map (air 0)
    scaled so the thickest ray has line integral 4 (`attenuation_sinogram`); the parallel-beam
    sinogram p (skimage radon) gives expected transmitted counts
    I0 * exp(-p); counts are Poisson plus Gaussian electronic noise, clamped to >= 1 and logged
    back to line integrals. The noise sinogram (noisy minus clean line integrals) is
    reconstructed by filtered back-projection with the ramp filter (skimage iradon) and added to
    the input, which plays the normal-dose reconstruction; FBP is linear, so this equals
    reconstructing the noisy sinogram without the ideal scan's own discretisation error.
    Photon-starved rays through long paths produce the streaks typical of low-dose CT.
    """
    y = luminance(check_image(image))
    rng = as_rng(seed)
    h, w = y.shape
    side = max(h, w)
    square = np.zeros((side, side))
    square[:h, :w] = y
    theta = np.linspace(0.0, 180.0, N_ANGLES, endpoint=False)
    clean, scale = attenuation_sinogram(square, theta)
    # I0 is set for a 256-pixel image; scaling it with the area keeps the noise per pixel independent
    # of the crop size (the attenuation scale, and so the FBP noise gain, follows the image size).
    i0 = incident_photons(severity) * (side / 256.0) ** 2
    counts = rng.poisson(i0 * np.exp(-clean)) + rng.normal(0.0, electronic_sigma, clean.shape)
    noisy = -np.log(np.maximum(counts, 1.0) / i0)
    delta = iradon(noisy - clean, theta, output_size=side, circle=False, filter_name="ramp")
    return gray3(y + delta[:h, :w] / scale)
