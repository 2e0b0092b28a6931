"""Training machinery shared by `train-teacher` and `distill`: configs, losses, curricula, the DDP
training loop with EMA and atomic resumable checkpoints, the teacher-output cache and evaluation."""

from datprl_edge.train.config import DistillConfig, TrainConfig

__all__ = ["DistillConfig", "TrainConfig"]
