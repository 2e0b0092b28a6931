"""Camera-shake motion blur from a random trajectory rasterised into a kernel."""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish, lerp


def blur_length(severity: float) -> float:
    """Severity 0..1 maps linearly to a trajectory length of 4..44 pixels; default 0.5 is 24."""
    return lerp(4.0, 44.0, check_severity(severity))


def shake_trajectory(rng: np.random.Generator, length: float, steps: int = 1000) -> np.ndarray:
    """Points (steps, 2) of a camera-shake path of total length `length` pixels.

    The model of Boracchi & Foi (IEEE TIP 2012): constant-speed motion whose velocity follows a
    random walk with Gaussian jitter, a centripetal pull back to the start (the hand corrects)
    and rare abrupt shakes that reverse the direction.
    """
    anxiety = rng.uniform(0.001, 0.008)
    centripetal = rng.uniform(0.0, 0.3)
    jitter = rng.uniform(2.0, 6.0)
    p_shake = rng.uniform(0.0, 0.2) * anxiety
    step = length / (steps - 1)
    v = np.exp(1j * rng.uniform(0, 2 * np.pi)) * step
    x = np.zeros(steps, dtype=complex)
    for t in range(steps - 1):
        dv = 0j
        if rng.random() < p_shake:
            dv = 2 * v * np.exp(1j * (np.pi + rng.uniform(-0.5, 0.5)))
        gauss = rng.standard_normal() + 1j * rng.standard_normal()
        dv += anxiety * (jitter * gauss - centripetal * x[t]) * step
        v = v + dv
        v = v / max(abs(v), 1e-12) * step
        x[t + 1] = x[t] + v
    return np.stack([x.imag, x.real], axis=1)


def trajectory_kernel(points: np.ndarray) -> np.ndarray:
    """Rasterise a trajectory with bilinear splatting into an odd-sized kernel centred on its mean."""
    pts = points - points.mean(axis=0)
    half = int(np.ceil(np.abs(pts).max())) + 1
    size = 2 * half + 1
    pts = pts + half
    k = np.zeros((size, size))
    i0 = np.floor(pts).astype(int)
    f = pts - i0
    for di in (0, 1):
        for dj in (0, 1):
            wgt = (f[:, 0] if di else 1 - f[:, 0]) * (f[:, 1] if dj else 1 - f[:, 1])
            np.add.at(k, (np.minimum(i0[:, 0] + di, size - 1), np.minimum(i0[:, 1] + dj, size - 1)), wgt)
    return k / k.sum()


def convolve_reflect(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    pad = kernel.shape[0] // 2
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return fftconvolve(padded, kernel[..., None], mode="valid", axes=(0, 1))


def motion_blur(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Convolve the image with a random camera-shake kernel (Boracchi & Foi 2012 trajectories,
    as used for the GoPro/DeblurGAN-style synthetic blur, Kupyn et al., CVPR 2018).

    Severity sets the path length (4..44 px, default 24 px). Borders are reflected.
    """
    img = check_image(image)
    rng = as_rng(seed)
    kernel = trajectory_kernel(shake_trajectory(rng, blur_length(severity)))
    return finish(convolve_reflect(img, kernel))
