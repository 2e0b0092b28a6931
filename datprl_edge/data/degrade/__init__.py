"""Physically based degradations, one module per family.

Every function has the signature ``fn(image, severity, seed) -> image``: `image` is float32
(H, W, 3) in [0, 1], `severity` a float in [0, 1] whose meaning each module documents, `seed` an
int, SeedSequence or numpy Generator. Outputs are float32 (H, W, 3) in [0, 1], the same for
the same seed. Medical degradations work on the luminance and return equal channels.

This package knows nothing of tasks: `data.tasks` maps each task id to its function here (and
`data.tasks.degrade(task_id, ...)` applies a task's degradation by id).
"""

from __future__ import annotations

from datprl_edge.data.degrade.blur import motion_blur
from datprl_edge.data.degrade.clouds import clouds
from datprl_edge.data.degrade.ct import low_dose_ct
from datprl_edge.data.degrade.haze import aerial_haze, haze
from datprl_edge.data.degrade.lowlight import lowlight
from datprl_edge.data.degrade.mri import kspace_truncation
from datprl_edge.data.degrade.noise import gaussian_noise
from datprl_edge.data.degrade.pet import low_count_pet
from datprl_edge.data.degrade.rain import rain_streaks
from datprl_edge.data.degrade.resample import bicubic_down_up

__all__ = [
    "aerial_haze", "bicubic_down_up", "clouds", "gaussian_noise", "haze", "kspace_truncation",
    "low_count_pet", "low_dose_ct", "lowlight", "motion_blur", "rain_streaks",
]
