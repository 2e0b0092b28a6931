"""Which training pairs make up each step's global batch: mixed or sequential task curricula.

The batch of a step is a pure function of (seed, step), so a run resumed from a checkpoint, a
2-process DDP run and a single-process run with the same global batch all see the same pairs.

- mixed: every step draws tasks uniformly from the whole task list;
- sequential (MiO-IR's sequential learning): the steps split into one stage per task; stage k
  trains on the first k+1 tasks, so tasks are added one by one and earlier ones keep training.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .config import CURRICULA


class Curriculum:
    def __init__(self, kind: str, task_of_item, steps: int, seed: int = 0, task_order=None):
        """`task_of_item[i]` is the task index (0..T-1) of training pair i; `task_order` the order
        in which the sequential curriculum adds tasks (default 0..T-1)."""
        if kind not in CURRICULA:
            from ..errors import UnknownChoiceError

            raise UnknownChoiceError("curriculum", kind, CURRICULA)
        self.kind, self.steps, self.seed = kind, int(steps), int(seed)
        task_of_item = np.asarray(task_of_item, dtype=np.int64)
        n_tasks = int(task_of_item.max()) + 1 if task_of_item.size else 0
        self.items = [np.flatnonzero(task_of_item == t) for t in range(n_tasks)]
        if not self.items or any(len(ix) == 0 for ix in self.items):
            raise ConfigError("every task needs at least one training pair; raise train_pairs")
        self.order = list(range(n_tasks)) if task_order is None else [int(t) for t in task_order]
        if sorted(self.order) != list(range(n_tasks)):
            raise ConfigError(f"task_order must be a permutation of 0..{n_tasks - 1}, got {self.order}")

    @property
    def num_tasks(self) -> int:
        return len(self.items)

    def stage(self, step: int) -> int:
        """0-based stage of a step (always 0 for mixed)."""
        if self.kind == "mixed":
            return 0
        return min(self.num_tasks - 1, step * self.num_tasks // max(self.steps, 1))

    def active_tasks(self, step: int) -> list[int]:
        if self.kind == "mixed":
            return list(range(self.num_tasks))
        return self.order[: self.stage(step) + 1]

    def batch(self, step: int, size: int) -> np.ndarray:
        """Indices of the `size` training pairs of the global batch at `step`."""
        rng = np.random.default_rng([self.seed, step, 0xC0FFEE])
        active = self.active_tasks(step)
        tasks = np.asarray(active)[rng.integers(0, len(active), size)]
        return np.array([self.items[t][rng.integers(0, len(self.items[t]))] for t in tasks], dtype=np.int64)
