"""Stage entry point: train a full DATPRL-IR model (any size) on restoration pairs."""

from __future__ import annotations

import copy

from datprl_edge.train.config import TrainConfig
from datprl_edge.train.engine import TrainResult, train_loop
from datprl_edge.train.objectives import RestorationObjective

__all__ = ["TrainConfig", "TrainResult", "train_teacher"]


def train_teacher(model, config: TrainConfig, data, run_dir=None, *, resume: bool = False,
                  provenance: dict | None = None, step_callback=None) -> TrainResult:
    """Train a copy of `model` with L1 + FFT loss; returns a `TrainResult` with the new model.

    `data` is a `TrainData` or a spec string (`synthetic[:TASKSET]` or a paired folder). With
    `run_dir`, checkpoints, logs and the final `model.safetensors` (stage "teacher") go there.
    """
    from datprl_edge.train.data import build_train_data

    if isinstance(data, str):
        data = build_train_data(data, config.crop, config.train_pairs, config.seed, config.severity)
    objective = RestorationObjective(copy.deepcopy(model).train(), config)
    return train_loop(objective, config, data, run_dir, stage="teacher", resume=resume,
                      provenance=provenance, step_callback=step_callback)
