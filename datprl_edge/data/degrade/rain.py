"""Synthetic rain: sparse drops smeared into oriented streaks, in layers of depth, alpha-blended."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve
from skimage.draw import line_aa

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish, lerp

# (drop density, streak length as a fraction of the image height, drop width sigma, brightness)
# for far, middle and near layers: far rain is dense, short, thin and faint.
LAYERS = ((0.01, 0.04, 0.0, 0.3), (0.003, 0.08, 0.4, 0.4), (0.0006, 0.14, 0.7, 0.5))


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Antialiased line of `length` pixels at `angle_deg` from vertical, normalised to sum 1."""
    size = length + 2 + (length % 2 == 0)
    c = size // 2
    a = np.deg2rad(angle_deg)
    dy, dx = 0.5 * (length - 1) * np.cos(a), 0.5 * (length - 1) * np.sin(a)
    k = np.zeros((size, size))
    rr, cc, val = line_aa(round(c - dy), round(c - dx), round(c + dy), round(c + dx))
    k[rr, cc] = np.maximum(k[rr, cc], val)
    return k / k.sum()


def rain_streaks(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Composite three rain layers onto the image.

    Recipe: each layer is sparse random drops, widened by a small Gaussian and motion-blurred
    along one wind direction (the Photoshop-style rain of Rain100L/H, Yang et al., CVPR 2017;
    Fu et al., CVPR 2017). A streak is the time-averaged radiance of the drop over the exposure,
    a blend towards the bright drop (Garg & Nayar, IJCV 2007): O = B (1 - S) + S.
    Severity 0..1 scales drop density (x0.25..x2.25) and brightness (x0.6..x1.2); default 0.5.
    """
    img = check_image(image)
    s = check_severity(severity)
    rng = as_rng(seed)
    h, w = img.shape[:2]
    angle = rng.uniform(-25.0, 25.0)
    density_scale, bright_scale = lerp(0.25, 2.25, s), lerp(0.6, 1.2, s)
    alpha = np.zeros((h, w))
    for density, frac_len, width, bright in LAYERS:
        drops = (rng.random((h, w)) < density * density_scale) * rng.uniform(0.5, 1.0, (h, w))
        if width > 0:
            drops = gaussian_filter(drops, width) * (2 * np.pi * width**2)
        length = max(3, round(frac_len * h * rng.uniform(0.8, 1.2)))
        kernel = line_kernel(length, angle + rng.uniform(-3.0, 3.0))
        pad = kernel.shape[0] // 2
        streaks = fftconvolve(np.pad(drops, pad, mode="wrap"), kernel, mode="valid") * length
        layer = np.clip(streaks * bright * bright_scale, 0.0, 1.0)
        alpha = 1.0 - (1.0 - alpha) * (1.0 - layer)
    a = alpha[..., None]
    return finish(img * (1.0 - a) + a)
