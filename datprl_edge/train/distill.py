"""Stage entry point: distil a full DATPRL-IR teacher into a compact edge student."""

from __future__ import annotations

import copy

import torch

from datprl_edge.train.config import DistillConfig
from datprl_edge.train.engine import TrainResult, train_loop
from datprl_edge.train.objectives import DistillObjective

__all__ = ["DistillConfig", "DistillResult", "distill"]

DistillResult = TrainResult


def distill(teacher, student, config: DistillConfig, data, run_dir=None, *, resume: bool = False,
            provenance: dict | None = None, cache_dir=None, step_callback=None) -> DistillResult:
    """Train a copy of `student` against the ground truth and `teacher`; inputs are not modified.

    `teacher` may be None when every distillation weight is 0 (the no-KD baseline). `data` is a
    `TrainData` or a spec string. `cache_dir` places the teacher-output cache (default: RUN/teacher_cache).
    The final checkpoint's stage is "distilled" (or "student" without distillation).
    """
    from datprl_edge.train.data import build_train_data

    if isinstance(data, str):
        data = build_train_data(data, config.crop, config.train_pairs, config.seed, config.severity)
    torch.manual_seed(config.seed)  # the feature adapters' initialisation
    objective = DistillObjective(teacher if config.uses_teacher else None, copy.deepcopy(student).train(),
                                 config, config.crop)
    if cache_dir is not None:
        objective.cache_dir = cache_dir
    stage = "distilled" if config.uses_teacher else "student"
    return train_loop(objective, config, data, run_dir, stage=stage, resume=resume,
                      provenance=provenance, step_callback=step_callback)
