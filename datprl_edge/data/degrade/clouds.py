"""Thin and thick clouds over aerial and satellite images from fractal (fBm) noise."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import shift as nd_shift

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish, lerp
from datprl_edge.data.degrade.fields import fbm_field


def cloud_cover(severity: float) -> float:
    """Severity 0..1 maps linearly to a thick-cloud cover of 5..55 % of the frame; default 30 %."""
    return lerp(0.05, 0.55, check_severity(severity))


def clouds(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Blend a cloud layer over the scene: I = J (1 - a) + C a, with faint cloud shadows on J.

    Recipe: clouds as thresholded fBm/Perlin noise with soft edges (thick, opaque cores) plus a
    semi-transparent fBm veil (thin cirrus), the synthetic-cloud approach of Enomoto et al.
    (CVPRW 2017) and the RICE thin/thick cloud sets (Lin et al., arXiv 2019). Cloud brightness
    follows the field (thicker is brighter); shadows are the thick mask shifted along a random
    sun azimuth. Severity sets thick cover (5..55 %) and thin-veil opacity (0.2..0.6).
    """
    img = check_image(image)
    s = check_severity(severity)
    rng = as_rng(seed)
    h, w = img.shape[:2]
    field = fbm_field((h, w), rng, beta=3.6, cutoff=1.0)
    thr = np.quantile(field, 1.0 - cloud_cover(s))
    depth = np.clip((field - thr) / (0.25 * (field.max() - thr) + 1e-9), 0.0, 1.0)
    thick = depth * depth * (3.0 - 2.0 * depth)  # smoothstep: translucent fringes, opaque cores
    veil = fbm_field((h, w), rng, beta=3.0, cutoff=1.0)
    thin = lerp(0.2, 0.6, s) * np.clip(1.6 * veil - 0.3, 0.0, 1.0)
    alpha = 1.0 - (1.0 - thick) * (1.0 - thin)
    brightness = 0.88 + 0.1 * np.clip((field - thr) / (field.max() - thr + 1e-9), 0.0, 1.0)
    color = brightness[..., None] + rng.uniform(-0.02, 0.02, 3)
    az = rng.uniform(0, 2 * np.pi)
    offset = 0.05 * h * np.array([np.sin(az), np.cos(az)])
    shadow = nd_shift(thick, offset, order=1, mode="constant")
    ground = img * (1.0 - 0.4 * shadow)[..., None]
    a = alpha[..., None]
    return finish(ground * (1.0 - a) + color * a)
