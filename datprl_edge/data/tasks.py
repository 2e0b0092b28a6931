"""The task catalogue: canonical task ids, their domains and degradations, and named task sets.

Task ids are `<domain>/<name>`. The 9-task set is the three-domain benchmark of DATPRL-IR
(natural, medical, remote sensing). `natural5` is the classic five-task all-in-one natural-image
set (denoise, derain, dehaze, motion deblur, low light; as in PromptIR/AirNet-style benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import UnknownChoiceError
from . import degrade as D
from .degrade._common import check_image, check_severity, gray3, luminance

DOMAINS = ("natural", "medical", "remote")


@dataclass(frozen=True)
class Task:
    id: str
    domain: str
    description: str
    default_severity: float
    fn: Callable = field(repr=False)
    severity_scale: str = ""  # what severity 0..1 means physically
    grayscale: bool = False  # medical: work on luminance, images carry equal channels
    stochastic: bool = True  # False: the seed does not change the output
    # Preferred sample modalities inside the domain, in tiers: the first tier with any sample wins;
    # with none, any image of the domain.
    modalities: tuple = ()

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]

    def degrade(self, image, severity: float | None = None, seed=0) -> np.ndarray:
        s = self.default_severity if severity is None else check_severity(severity)
        return self.fn(image, s, seed)

    def prepare_gt(self, image) -> np.ndarray:
        """The ground truth the degraded image pairs with: grey (equal channels) for medical tasks."""
        img = check_image(image)
        return gray3(luminance(img)) if self.grayscale else np.ascontiguousarray(img, dtype=np.float32)

    def make_pair(self, image, severity: float | None = None, seed=0) -> tuple[np.ndarray, np.ndarray]:
        """(gt, lq) float32 (H, W, 3) in [0, 1]."""
        gt = self.prepare_gt(image)
        return gt, self.degrade(gt, severity, seed)


def _t(id, description, fn, scale, default=0.5, **kw) -> Task:
    return Task(id, id.split("/")[0], description, default, fn, scale, **kw)


_SR = "scale factor 2..6 (linear), 0.5 = x4"
_TASKS = (
    _t("natural/sr_x4", "4x super-resolution: bicubic down x4 and back up", D.bicubic_down_up, _SR,
       stochastic=False),
    _t("natural/derain", "rain streak removal: layered oriented streaks", D.rain_streaks,
       "drop density x0.25..x2.25, brightness x0.6..x1.2"),
    _t("natural/motion_deblur", "camera-shake deblurring: random-trajectory kernels", D.motion_blur,
       "trajectory length 4..44 px, 0.5 = 24 px"),
    _t("medical/mri_sr", "MRI super-resolution: k-space truncated to 1/4 per axis, zero-filled",
       D.kspace_truncation, _SR, grayscale=True, stochastic=False, modalities=(("mr",),)),
    _t("medical/ct_denoise", "low-dose CT denoising: sinogram Poisson noise, FBP", D.low_dose_ct,
       "incident photons 1e6..1e4 per ray and view (log), 0.5 = 1e5", grayscale=True, modalities=(("ct",),)),
    _t("medical/pet_denoise", "low-count PET denoising: Poisson count thinning", D.low_count_pet,
       "dose reduction factor 2..128 (log), 0.5 = 16", grayscale=True,
       modalities=(("pet", "nm"), ("mr", "ct"))),
    _t("remote/sr_x4", "4x super-resolution of aerial and satellite images", D.bicubic_down_up, _SR,
       stochastic=False),
    _t("remote/cloud_removal", "thin and thick cloud removal: fBm clouds with shadows", D.clouds,
       "thick cover 5..55 %, thin-veil opacity 0.2..0.6"),
    _t("remote/dehaze", "haze removal for nadir views: non-uniform fBm haze density", D.aerial_haze,
       "scattering beta 0.3..2.1, 0.5 = 1.2"),
    _t("natural/denoise", "Gaussian denoising, sigma 25/255 at default", D.gaussian_noise,
       "sigma 0..50 (of 255), 0.5 = 25"),
    _t("natural/dehaze", "haze removal: scattering model, depth ramp to the horizon", D.haze,
       "scattering beta 0.3..2.1, 0.5 = 1.2"),
    _t("natural/lowlight", "low-light enhancement: gamma darkening, Poisson-Gaussian noise", D.lowlight,
       "gamma 1.5..4.5, photons 10^3.5..10^1.5 at full scale"),
)
TASKS: dict[str, Task] = {t.id: t for t in _TASKS}

TASK_SETS: dict[str, tuple[str, ...]] = {
    "9task": tuple(t.id for t in _TASKS[:9]),
    "natural5": ("natural/denoise", "natural/derain", "natural/dehaze", "natural/motion_deblur",
                 "natural/lowlight"),
    "all": tuple(TASKS),
}


def get_task(task_id: str) -> Task:
    if isinstance(task_id, Task):
        return task_id
    try:
        return TASKS[task_id]
    except KeyError:
        raise UnknownChoiceError("task", str(task_id), TASKS) from None


def task_set(name: str) -> tuple[str, ...]:
    try:
        return TASK_SETS[name]
    except KeyError:
        raise UnknownChoiceError("task set", str(name), TASK_SETS) from None


def resolve_tasks(names) -> list[Task]:
    """Task ids and/or set names (a list, or one comma-separated string) -> unique Tasks, in order."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: dict[str, Task] = {}
    for raw in names:
        name = raw.id if isinstance(raw, Task) else str(raw).strip()
        if name not in TASK_SETS and name not in TASKS:
            raise UnknownChoiceError("task or task set", name, [*TASKS, *TASK_SETS])
        ids = TASK_SETS.get(name, (name,))
        out.update((i, TASKS[i]) for i in ids)
    return list(out.values())


def list_tasks(set_name: str | None = None) -> list[Task]:
    return [TASKS[i] for i in (task_set(set_name) if set_name else TASKS)]
