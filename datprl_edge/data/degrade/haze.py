"""Haze by the atmospheric scattering model with a smooth, spatially varying depth proxy."""

from __future__ import annotations

import numpy as np

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish, lerp
from datprl_edge.data.degrade.fields import fbm_field


def scattering_coefficient(severity: float) -> float:
    """Severity 0..1 maps linearly to beta = 0.3..2.1 (per unit of relative depth); default 1.2."""
    return lerp(0.3, 2.1, check_severity(severity))


def depth_proxy(shape, rng: np.random.Generator, layout: str) -> np.ndarray:
    """Relative depth in [0, 1] without a depth sensor.

    'ground': a camera looking at the horizon sees farther towards the top of the frame, so a
    vertical ramp (random tilt and horizon height) plus low-frequency fBm relief.
    'aerial': a nadir view has near-constant range; haze density varies instead, so fBm alone.
    """
    h, w = shape
    relief = fbm_field(shape, rng, beta=3.2, cutoff=1.5)
    if layout == "aerial":
        return 0.35 + 0.65 * relief
    rows = np.linspace(1.0, 0.0, h)[:, None]
    cols = np.linspace(-0.5, 0.5, w)[None, :]
    horizon = rng.uniform(0.55, 0.85)
    ramp = np.clip((rows + rng.uniform(-0.15, 0.15) * cols) / horizon, 0.0, 1.0)
    return np.clip(0.15 + 0.65 * ramp + 0.3 * (relief - 0.5), 0.0, 1.0)


def haze(image, severity: float = 0.5, seed=None, layout: str = "ground") -> np.ndarray:
    """I = J t + A (1 - t), t = exp(-beta d).

    Recipe: Koschmieder's law as used by Narasimhan & Nayar (IJCV 2002) and the RESIDE dataset
    (Li et al., TIP 2019: beta 0.6..1.8, A 0.7..1.0). The airlight A is a bright grey with a
    slight random tint; d comes from `depth_proxy` because no depth map is available.
    """
    img = check_image(image)
    rng = as_rng(seed)
    beta = scattering_coefficient(severity)
    d = depth_proxy(img.shape[:2], rng, layout)
    airlight = rng.uniform(0.75, 0.95) + rng.uniform(-0.03, 0.03, 3)
    t = np.exp(-beta * d)[..., None]
    return finish(img * t + airlight * (1.0 - t))


def aerial_haze(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """`haze` with the aerial (nadir view, non-uniform haze density) depth proxy."""
    return haze(image, severity, seed, layout="aerial")
