"""Which training pairs make up each step's global batch: mixed or sequential task curricula.

The batch of a step is a pure function of (seed, step), so a run resumed from a checkpoint, a
2-process DDP run and a single-process run with the same global batch all see the same pairs.

- mixed: every step draws tasks uniformly from the whole task list;
- sequential (MiO-IR's sequential learning): the steps split into one stage per task; stage k
  trains on the first k+1 tasks, so tasks are added one by one and earlier ones keep training.

Task weights (`task_weights`) make some tasks drawn more often: fixed ("natural/sr_x4=2,...") or
adaptive, from the last validation record (`adaptive_weights`): tasks whose gain over the input is
smallest get more steps. The batch is still a pure function of (seed, step, weights), and the
weights of a step are a function of the validation log up to it, so resuming stays exact.
"""

from __future__ import annotations

import numpy as np

from datprl_edge.core.errors import ConfigError, UnknownChoiceError

CURRICULA = ("mixed", "sequential")


class Curriculum:
    def __init__(self, kind: str, task_of_item, steps: int, seed: int = 0, task_order=None):
        """`task_of_item[i]` is the task index (0..T-1) of training pair i; `task_order` the order
        in which the sequential curriculum adds tasks (default 0..T-1)."""
        if kind not in CURRICULA:
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

    def batch(self, step: int, size: int, weights=None) -> np.ndarray:
        """Indices of the `size` training pairs of the global batch at `step`.

        `weights` (one per task, None: uniform) makes tasks drawn in proportion to them.
        """
        rng = np.random.default_rng([self.seed, step, 0xC0FFEE])
        tasks = self._draw_tasks(rng, step, size, weights)
        return np.array([self.items[t][rng.integers(0, len(self.items[t]))] for t in tasks], dtype=np.int64)

    def tasks(self, step: int, size: int, weights=None) -> np.ndarray:
        """Task indices of the global batch at `step` (on-the-fly pairs: the batch's tasks only)."""
        return self._draw_tasks(np.random.default_rng([self.seed, step, 0xC0FFEE]), step, size, weights)

    def _draw_tasks(self, rng, step, size, weights):
        active = np.asarray(self.active_tasks(step))
        if weights is None:
            return active[rng.integers(0, len(active), size)]
        w = np.asarray(weights, dtype=np.float64)[active]
        return active[rng.choice(len(active), size=size, p=w / w.sum())]


def parse_task_weights(spec: str) -> dict | str:
    """"uniform", "adaptive", or "task=w,task=w" (unnamed tasks weigh 1) -> the mode or {task: w}."""
    spec = str(spec).strip()
    if spec in ("uniform", "adaptive"):
        return spec
    out = {}
    for part in spec.split(","):
        name, eq, val = part.partition("=")
        try:
            w = float(val)
        except ValueError:
            w = -1.0
        if not eq or not name.strip() or not np.isfinite(w) or w <= 0:
            raise ConfigError(f"task weights must be uniform, adaptive or TASK=W,... with W > 0; "
                              f"got {spec!r}")
        out[name.strip()] = w
    return out


def fixed_weights(spec: dict, tasks: list) -> np.ndarray:
    unknown = sorted(set(spec) - set(tasks))
    if unknown:
        raise ConfigError(f"task weights name tasks that are not trained: {', '.join(unknown)}")
    return np.array([spec.get(t, 1.0) for t in tasks], dtype=np.float64)


def adaptive_weights(record: dict | None, tasks: list, temperature: float = 1.0) -> np.ndarray | None:
    """Half uniform, half softmax(-gain / temperature) over the tasks' PSNR gain over the input (dB)
    in a validation record, so a task at or below its input gets up to several times the steps of
    an easy one and no task drops below half its uniform share. None (uniform) without a record."""
    if not record or "tasks" not in record or any(t not in record["tasks"] for t in tasks):
        return None
    gain = np.array([record["tasks"][t]["psnr"] - record["tasks"][t]["psnr_input"] for t in tasks])
    z = np.exp(-(gain - gain.min()) / temperature)
    return 0.5 / len(tasks) + 0.5 * z / z.sum()


def step_weights(spec: str, tasks: list, history: list):
    """The task weights for the next steps: None (uniform), fixed, or from the last validation."""
    mode = parse_task_weights(spec)
    if mode == "uniform":
        return None
    if mode == "adaptive":
        return adaptive_weights(history[-1] if history else None, tasks)
    return fixed_weights(mode, tasks)
