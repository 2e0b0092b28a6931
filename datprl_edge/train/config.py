"""Training and distillation settings, validated on construction (`ConfigError` says how to fix)."""

from __future__ import annotations

import dataclasses
import math

from datprl_edge.core import limits
from datprl_edge.core.errors import ConfigError
from datprl_edge.core.metrics import SSIM_MIN_SIDE
from datprl_edge.train.curriculum import CURRICULA, parse_task_weights

PROMPT_MODES = ("adaptive", "explicit")
AMP_MODES = ("auto", "bf16", "off")
DEVICES = ("auto", "cpu", "cuda")
CACHE_MODES = ("auto", "on", "off")
SEVERITY_MODES = ("fixed", "random")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. `batch_size` is the global batch (split over ranks and accumulation)."""

    steps: int = 1000
    batch_size: int = 8
    crop: int = 64
    train_pairs: int = 2048  # size of the fixed pool of training crops; 0: a new pair for every crop
    severity: str = "fixed"  # fixed: each task's default; random: uniform over Task.train_severity
    task_weights: str = "uniform"  # uniform, adaptive (from the last validation) or "task=w,..."
    workers: int = 0  # processes that make the batches ahead of the step (0: made in the step)
    pair_reuse: int = 1  # on-the-fly pairs: each made pair fills this many batch slots (dihedral poses)
    time_budget: float = 0.0  # seconds of training; > 0: the step count is fitted to it after warm-up
    lr: float = 4e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    fft_weight: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    accum_steps: int = 1
    curriculum: str = "mixed"
    prompt_mode: str = "adaptive"
    amp: str = "auto"
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    device: str = "auto"
    ckpt_every: int = 200
    val_every: int = 200
    val_count: int = 4  # validation images per task
    val_size: int = 64
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        _int(self, "steps", 1)
        _int(self, "batch_size", 1)
        _int(self, "crop", 8)
        limits.check("batch", self.batch_size, "batch_size")
        limits.check("crop", self.crop, "crop")
        _int(self, "train_pairs", 0)
        _int(self, "workers", 0)
        _int(self, "pair_reuse", 1)
        _nonneg(self, "time_budget")
        _choice(self, "severity", SEVERITY_MODES)
        if self.pair_reuse > 1 and self.train_pairs:
            raise ConfigError("pair_reuse needs on-the-fly pairs (train_pairs 0)")
        parse_task_weights(self.task_weights)
        _int(self, "warmup_steps", 0)
        _int(self, "seed", 0)
        _int(self, "accum_steps", 1)
        _int(self, "ckpt_every", 0)
        _int(self, "val_every", 0)
        _int(self, "val_count", 1)
        _int(self, "val_size", SSIM_MIN_SIDE)
        _int(self, "log_every", 1)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "fft_weight"):
            _nonneg(self, name)
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of accum_steps "
                              f"({self.accum_steps})")
        _choice(self, "curriculum", CURRICULA)
        _choice(self, "prompt_mode", PROMPT_MODES)
        _choice(self, "amp", AMP_MODES)
        _choice(self, "device", DEVICES)

    def micro_batches(self, world_size: int) -> int:
        """Number of equal micro-batches the global batch splits into (ranks x accumulation)."""
        n = world_size * self.accum_steps
        if self.batch_size % n:
            raise ConfigError(f"batch_size {self.batch_size} does not split over {world_size} process(es) x "
                              f"{self.accum_steps} accumulation step(s); use a multiple of {n}")
        return n

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Student training: ground truth plus output, feature and routing distillation.

    With every distillation weight at 0 this is plain training of the student (the no-KD baseline).
    """

    gt_weight: float = 1.0
    output_weight: float = 1.0
    feature_weight: float = 0.1
    routing_weight: float = 0.1
    routing_temperature: float = 1.0
    teacher_cache: str = "auto"  # auto: on when training on CPU

    def __post_init__(self):
        super().__post_init__()
        for name in ("gt_weight", "output_weight", "feature_weight", "routing_weight"):
            _nonneg(self, name)
        if self.routing_temperature <= 0 or not math.isfinite(self.routing_temperature):
            raise ConfigError(f"routing_temperature must be > 0, got {self.routing_temperature}")
        if self.gt_weight == 0 and not self.uses_teacher:
            raise ConfigError("all loss weights are 0: set gt_weight or a distillation weight above 0")
        _choice(self, "teacher_cache", CACHE_MODES)

        if self.teacher_cache == "on" and self.train_pairs == 0 and self.uses_teacher:
            raise ConfigError("the teacher cache needs a fixed pool of pairs; use --pairs N or "
                              "--teacher-cache off")

    @property
    def uses_teacher(self) -> bool:
        return self.output_weight > 0 or self.feature_weight > 0 or self.routing_weight > 0


def _int(cfg, name, minimum):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _nonneg(cfg, name):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")


def _choice(cfg, name, choices):
    v = getattr(cfg, name)
    if v not in choices:
        from datprl_edge.core.errors import UnknownChoiceError

        raise UnknownChoiceError(name.replace("_", " "), str(v), choices)
