"""Bicubic down-and-up resampling: the SR x4 degradation of the released models."""

from __future__ import annotations

import numpy as np
from PIL import Image

from datprl_edge.data.degrade._common import check_image, check_severity, finish, lerp


def bicubic_resize(image: np.ndarray, size) -> np.ndarray:
    """Resize (H, W, C) float to size=(h, w) with Pillow's antialiased bicubic kernel (a = -0.5).

    Pillow widens the kernel by the scale factor when shrinking, as MATLAB's `imresize` does, and
    works in 32-bit float ('F' mode), so nothing is quantised to 8 bits.
    """
    h, w = int(size[0]), int(size[1])
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                   .resize((w, h), Image.Resampling.BICUBIC))
        for c in range(image.shape[2])
    ]
    return np.stack(chans, axis=2)


def scale_factor(severity: float) -> float:
    """Severity 0..1 maps linearly to a scale factor 2..6; the default 0.5 is exactly 4."""
    return lerp(2.0, 6.0, check_severity(severity))


def bicubic_down_up(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """Bicubic downscale by the factor, then bicubic upscale back to the input size.

    Recipe: the bicubic SR degradation of SRCNN/EDSR/SwinIR (MATLAB `imresize(.., 1/4, 'bicubic')`
    with antialiasing), fed back at input size as all-in-one restorers such as PromptIR and DATPRL-IR
    take same-size inputs. Deterministic: the seed is accepted for a uniform signature and unused.
    """
    img = check_image(image)
    h, w = img.shape[:2]
    f = scale_factor(severity)
    small = bicubic_resize(img, (max(1, round(h / f)), max(1, round(w / f))))
    return finish(bicubic_resize(small, (h, w)))
