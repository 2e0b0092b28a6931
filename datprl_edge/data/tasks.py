"""The task catalogue: canonical task ids, their domains and degradations, and named task sets.

Task ids are `<domain>/<name>`. The 9-task set is the three-domain benchmark of DATPRL-IR
(natural, medical, remote sensing). `natural5` is the classic five-task all-in-one natural-image
set (denoise, derain, dehaze, motion deblur, low light; as in PromptIR/AirNet-style benchmarks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from datprl_edge.core.errors import ConfigError, UnknownChoiceError
from datprl_edge.data import degrade as D
from datprl_edge.data.degrade import shifted as S
from datprl_edge.data.degrade._common import check_image, check_severity, gray3, luminance

DOMAINS = ("natural", "medical", "remote")
TRAIN_SPREAD = 0.15  # default training severity range: the default +- this, clipped to [0, 1]
SHIFT_OFFSET = 0.35  # default shifted severity: the default + this (- this where that leaves [0, 1])


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
    # Severity range (lo, hi) that training draws from; None: default +- TRAIN_SPREAD. Training code
    # reads this attribute, so the shifted evaluation set below stays outside what it saw.
    train_severity: tuple | None = None
    # The shifted evaluation set: a severity outside `train_severity` and, where given, another
    # degradation model (`shifted_fn`, same signature as `fn`), described in `shifted_model`.
    shifted_severity: float | None = None
    shifted_fn: Callable | None = field(default=None, repr=False)
    shifted_model: str = ""

    def __post_init__(self):
        d = float(self.default_severity)
        lo, hi = self.train_severity or (max(0.0, d - TRAIN_SPREAD), min(1.0, d + TRAIN_SPREAD))
        lo, hi = check_severity(lo), check_severity(hi)
        if lo > hi:
            raise ConfigError(f"task {self.id}: train_severity ({lo}, {hi}) has lo > hi")
        object.__setattr__(self, "train_severity", (round(lo, 6), round(hi, 6)))
        shifted = self.shifted_severity
        if shifted is None:
            shifted = d + SHIFT_OFFSET if d + SHIFT_OFFSET <= 1.0 else d - SHIFT_OFFSET
        shifted = check_severity(shifted)
        if lo <= shifted <= hi:
            raise ConfigError(f"task {self.id}: shifted severity {shifted} lies inside train_severity "
                              f"({lo}, {hi})")
        object.__setattr__(self, "shifted_severity", shifted)

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

    def sample_train_severity(self, rng: np.random.Generator) -> float:
        """A severity drawn uniformly from `train_severity`."""
        lo, hi = self.train_severity
        return float(rng.uniform(lo, hi)) if hi > lo else lo

    def shifted_task(self) -> Task:
        """This task under its shifted setting: degrading with the default severity gives the
        shifted set (the same id, so seeds and sample pools match the task's)."""
        what = f"severity {self.shifted_severity:g}"
        if self.shifted_model:
            what += f", {self.shifted_model}"
        return dataclasses.replace(
            self, fn=self.shifted_fn or self.fn, default_severity=self.shifted_severity,
            description=f"{self.description} [shifted: {what}]", shifted_fn=None,
            train_severity=(self.shifted_severity,) * 2, shifted_severity=self.default_severity)


def _t(id, description, fn, scale, default=0.5, **kw) -> Task:
    return Task(id, id.split("/")[0], description, default, fn, scale, **kw)


_SR = "scale factor 2..6 (linear), 0.5 = x4"
_SR_TRAIN = (0.475, 0.525)  # x3.9..x4.1: SR x4 stays an x4 task
_SR_SHIFT = dict(train_severity=_SR_TRAIN, shifted_severity=0.5625, shifted_fn=S.blur_down_up,
                 shifted_model=f"x4.25, Gaussian blur sigma {S.BD_SIGMA} px before bicubic decimation")
_TASKS = (
    _t("natural/sr_x4", "4x super-resolution: bicubic down x4 and back up", D.bicubic_down_up, _SR,
       stochastic=False, **_SR_SHIFT),
    _t("natural/derain", "rain streak removal: layered oriented streaks", D.rain_streaks,
       "drop density x0.25..x2.25, brightness x0.6..x1.2", shifted_severity=0.9,
       shifted_model="denser, brighter streaks (density x2.05)"),
    _t("natural/motion_deblur", "camera-shake deblurring: random-trajectory kernels", D.motion_blur,
       "trajectory length 4..44 px, 0.5 = 24 px", shifted_severity=0.85,
       shifted_model="longer trajectories (38 px)"),
    _t("medical/mri_sr", "MRI super-resolution: k-space truncated to 1/4 per axis, zero-filled",
       D.kspace_truncation, _SR, grayscale=True, stochastic=False, modalities=(("mr",),),
       train_severity=_SR_TRAIN, shifted_severity=0.5625, shifted_fn=S.noisy_kspace_truncation,
       shifted_model=f"1/4.25 of k-space, Rician receiver noise sigma {S.MRI_NOISE_SIGMA}"),
    _t("medical/ct_denoise", "low-dose CT denoising: sinogram Poisson noise, FBP", D.low_dose_ct,
       "incident photons 1e6..1e4 per ray and view (log), 0.5 = 1e5", grayscale=True, modalities=(("ct",),),
       shifted_severity=0.8, shifted_fn=S.noisy_detector_ct,
       shifted_model=f"lower dose (2.5e4 photons), electronic noise {S.CT_ELECTRONIC_SIGMA:g} counts (2x)"),
    _t("medical/pet_denoise", "low-count PET denoising: Poisson count thinning", D.low_count_pet,
       "dose reduction factor 2..128 (log), 0.5 = 16", grayscale=True,
       modalities=(("pet", "nm"), ("mr", "ct")), shifted_severity=0.85,
       shifted_model="lower count level (dose reduction factor 69)"),
    _t("remote/sr_x4", "4x super-resolution of aerial and satellite images", D.bicubic_down_up, _SR,
       stochastic=False, **_SR_SHIFT),
    _t("remote/cloud_removal", "thin and thick cloud removal: fBm clouds with shadows", D.clouds,
       "thick cover 5..55 %, thin-veil opacity 0.2..0.6", shifted_severity=0.85,
       shifted_model="denser clouds (47.5 % thick cover)"),
    _t("remote/dehaze", "haze removal for nadir views: non-uniform fBm haze density", D.aerial_haze,
       "scattering beta 0.3..2.1, 0.5 = 1.2", shifted_severity=0.85,
       shifted_model="denser haze (beta 1.83)"),
    _t("natural/denoise", "Gaussian denoising, sigma 25/255 at default", D.gaussian_noise,
       "sigma 0..50 (of 255), 0.5 = 25", shifted_model="sigma 42.5"),
    _t("natural/dehaze", "haze removal: scattering model, depth ramp to the horizon", D.haze,
       "scattering beta 0.3..2.1, 0.5 = 1.2", shifted_model="denser haze (beta 1.83)"),
    _t("natural/lowlight", "low-light enhancement: gamma darkening, Poisson-Gaussian noise", D.lowlight,
       "gamma 1.5..4.5, photons 10^3.5..10^1.5 at full scale", shifted_model="darker, fewer photons"),
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


def degrade(task_id: str, image, severity: float | None = None, seed=0) -> np.ndarray:
    """Apply the degradation of task `task_id` (None severity: the task's default)."""
    return get_task(task_id).degrade(image, severity, seed)


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
