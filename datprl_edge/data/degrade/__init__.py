"""Physically based degradations, one module per family.

Every function has the signature ``fn(image, severity, seed) -> image``: `image` is float32
(H, W, 3) in [0, 1], `severity` a float in [0, 1] whose meaning each module documents, `seed` an
int, SeedSequence or numpy Generator. Outputs are float32 (H, W, 3) in [0, 1], the same for
the same seed. Medical degradations work on the luminance and return equal channels.
"""

from __future__ import annotations

import numpy as np

from .blur import motion_blur
from .clouds import clouds
from .ct import low_dose_ct
from .haze import aerial_haze, haze
from .lowlight import lowlight
from .mri import kspace_truncation
from .noise import gaussian_noise
from .pet import low_count_pet
from .rain import rain_streaks
from .resample import bicubic_down_up

__all__ = [
    "aerial_haze", "bicubic_down_up", "clouds", "degrade", "gaussian_noise", "haze", "kspace_truncation",
    "low_count_pet", "low_dose_ct", "lowlight", "motion_blur", "rain_streaks",
]


def degrade(task_id: str, image, severity: float | None = None, seed=0) -> np.ndarray:
    """Apply the degradation of task `task_id` (None severity: the task's default)."""
    from ..tasks import get_task

    return get_task(task_id).degrade(image, severity, seed)
