"""Training data for `train-teacher` and `distill`: indexed (lq, gt) crops.

`--data synthetic[:TASKSET]` degrades the bundled training images with the task catalogue
(`SyntheticDataset`); `--data PATH` reads a paired folder (`PairedFolderDataset`). Pair i is the
same on every rank and every run with the same seed, which makes batches reproducible and the
teacher outputs cacheable by index. Two kinds of source:

- a fixed pool of N pairs (`--pairs N`): pair i belongs to task i mod T; made in the step, pairs
  are kept in memory; made by worker processes (`--workers`), they are made again when drawn again;
- on the fly (`--pairs 0`, synthetic only): a new pair for every crop of every step, made from
  (seed, task, global crop index) by `make(tasks, items)`; no teacher cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datprl_edge.core.errors import ConfigError, InputNotFoundError

DEFAULT_TASKSET = "9task"
CUSTOM_TASK = "custom/paired"


class TrainData:
    """`num_items` pairs; `pair_fn(i)` -> (lq, gt) float32 (H, W, 3); `task_of_item[i]` indexes `tasks`."""

    def __init__(self, tasks: list[str], task_of_item, pair_fn: Callable | None, description: str,
                 val_fn: Callable | None = None, prompt_ids: dict | None = None,
                 make_fn: Callable | None = None):
        """`task_of_item` None with `make_fn(task_index, i) -> (lq, gt)`: on-the-fly pairs."""
        self.tasks = list(tasks)
        self.on_the_fly = task_of_item is None
        if self.on_the_fly and make_fn is None:
            raise ConfigError("on-the-fly training data needs a pair maker")
        self.task_of_item = np.arange(len(self.tasks)) if self.on_the_fly else \
            np.asarray(task_of_item, dtype=np.int64)
        self._pair_fn = pair_fn
        self._make_fn = make_fn
        self._val_fn = val_fn
        self._desc = description
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prompt_ids = prompt_ids or {t: _catalogue_ids(t) for t in self.tasks}

    @classmethod
    def from_arrays(cls, tasks, task_of_item, lq, gt, val=None, description="arrays") -> TrainData:
        """In-memory pairs: `lq`/`gt` (N, H, W, 3) or (N, 3, H, W); `val` {task: (lq, gt)} likewise."""
        lq, gt = np.asarray(lq, np.float32), np.asarray(gt, np.float32)
        if lq.shape != gt.shape or len(lq) != len(task_of_item):
            raise ConfigError(f"lq {lq.shape}, gt {gt.shape} and {len(task_of_item)} task labels disagree")

        def val_fn(task, count, size):
            v_lq, v_gt = val[task]
            return list(v_lq[:count]), list(v_gt[:count])

        return cls(tasks, task_of_item, lambda i: (lq[i], gt[i]), description, val_fn if val else None)

    def __len__(self) -> int:
        if self.on_the_fly:
            raise ConfigError("on-the-fly training data has no fixed size (the teacher cache needs "
                              "--pairs N)")
        return len(self.task_of_item)

    def describe(self) -> str:
        return self._desc

    def _pair(self, i: int):
        if i not in self._memo:
            lq, gt = self._pair_fn(int(i))
            self._memo[i] = (_to_chw(lq), _to_chw(gt))
        return self._memo[i]

    def load(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._pair(int(i)) for i in items]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def make(self, tasks, items, memo: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lq, gt) batch of pool items (tasks ignored) or on-the-fly (task, item) pairs.
        `memo=False` (worker processes) makes pool pairs without keeping them."""
        if not self.on_the_fly and memo:
            return self.load(items)
        if self.on_the_fly:
            raw = [self._make_fn(int(t), int(i)) for t, i in zip(tasks, items)]
        else:
            raw = [self._pair_fn(int(i)) for i in items]
        pairs = [(_to_chw(a), _to_chw(b)) for a, b in raw]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def prompt_ids(self, task: str, n: int) -> torch.Tensor:
        return torch.tensor([self._prompt_ids[task]] * n, dtype=torch.long)

    def batch(self, items, device, memory_format=torch.contiguous_format, prompt_mode="adaptive") -> dict:
        lq, gt = self.load(items)
        out = {"lq": lq.to(device, memory_format=memory_format),
               "gt": gt.to(device, memory_format=memory_format), "items": np.asarray(items),
               "tasks": self.task_of_item[np.asarray(items, dtype=np.int64)]}
        if prompt_mode == "explicit":
            ids = [self._prompt_ids[self.tasks[t]] for t in out["tasks"]]
            out["prompt_ids"] = torch.tensor(ids, dtype=torch.long, device=device)
        return out

    def validation(self, count: int, size: int) -> dict:
        """{task: (lq, gt)} fixed validation tensors (N, 3, size, size)."""
        if self._val_fn is None:
            raise ConfigError("this data source has no validation split")
        out = {}
        for task in self.tasks:
            lq, gt = self._val_fn(task, count, size)
            out[task] = (torch.stack([_to_chw(a) for a in lq]), torch.stack([_to_chw(a) for a in gt]))
            if out[task][0].shape[0] < count:
                raise ConfigError(f"validation for {task} has only {out[task][0].shape[0]} pairs, "
                                  f"fewer than val_count {count}")
        return out

    def prompt_ids_fn(self, prompt_mode: str):
        return self.prompt_ids if prompt_mode == "explicit" else None


def build_train_data(spec: str, crop: int, num_pairs: int, seed: int = 0,
                     severity: str = "fixed") -> TrainData:
    """`synthetic`, `synthetic:TASKSET_OR_IDS` (e.g. `synthetic:natural5`), or a paired folder path.

    `num_pairs` 0: on-the-fly pairs (synthetic only); `severity` "random": each pair's severity is
    drawn from its task's `train_severity` range (synthetic only).
    """
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        names = spec.partition(":")[2] or DEFAULT_TASKSET
        return _synthetic(names, crop, num_pairs, seed, severity)
    path = Path(spec)
    if not path.exists():
        raise InputNotFoundError(f"--data {spec}: no such folder (use synthetic[:TASKSET] or a paired "
                                 "folder)")
    if num_pairs == 0 or severity != "fixed":
        raise ConfigError("a paired folder has fixed pairs: --pairs 0 and --severity random need "
                          "--data synthetic")
    return _paired_folder(path, crop, num_pairs, seed)


def _synthetic(names: str, crop: int, num_pairs: int, seed: int, severity: str = "fixed") -> TrainData:
    from datprl_edge.data.datasets import SyntheticDataset, validation_set
    from datprl_edge.data.tasks import resolve_tasks

    tasks = [t.id for t in resolve_tasks(names)]
    if 0 < num_pairs < len(tasks):
        raise ConfigError(f"train_pairs ({num_pairs}) must be at least the number of tasks ({len(tasks)})")
    sev = "train" if severity == "random" else None
    # tasks cycle with the index in the pool; on the fly the curriculum picks each crop's task
    ds = SyntheticDataset(tasks=tasks, crop=crop, length=max(num_pairs, 1), seed=seed, severities=sev)

    def pair(i):
        item = ds[i]
        return item["lq"], item["gt"]

    def make(task_index, i):
        item = ds.make(task_index, i)
        return item["lq"], item["gt"]

    def val(task, count, size):
        return validation_set(task, count=count, size=size, seed=seed).tensors()

    pool = f"pairs={num_pairs}" if num_pairs else "pairs=on-the-fly"
    desc = f"synthetic:{','.join(tasks)} crop={crop} {pool} seed={seed}"
    if severity != "fixed":
        desc += f" severity={severity}"
    if not num_pairs:
        return TrainData(tasks, None, None, desc, val, make_fn=make)
    return TrainData(tasks, np.arange(num_pairs) % len(tasks), pair, desc, val)


def _paired_folder(path: Path, crop: int, num_pairs: int, seed: int) -> TrainData:
    """Random crops of a BasicSR paired folder; the first tenth of the pairs is kept for validation."""
    from datprl_edge.data.datasets import PairedFolderDataset
    from datprl_edge.data.pairs import random_crop

    ds = PairedFolderDataset(path)
    n = len(ds)
    if n < 2:
        raise ConfigError(f"{path} holds {n} pair(s); need at least 2 (one is kept for validation)")
    n_val = max(1, n // 10)

    def crop_pair(index, size, rng):
        item = ds[int(index)]
        both = torch.cat([item["lq"], item["gt"]]).permute(1, 2, 0).numpy()
        c = np.ascontiguousarray(random_crop(both, size, rng))
        return c[..., :3], c[..., 3:]

    def pair(i):
        rng = np.random.default_rng([seed, i])
        return crop_pair(n_val + int(rng.integers(n - n_val)), crop, rng)

    def val(task, count, size):
        rng = np.random.default_rng([seed, 1 << 30])
        pairs = [crop_pair(k % n_val, size, rng) for k in range(count)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    desc = f"folder:{path.resolve()} crop={crop} pairs={num_pairs} seed={seed}"
    return TrainData([CUSTOM_TASK], np.zeros(num_pairs), pair, desc, val, prompt_ids={CUSTOM_TASK: (0, 0)})


def _catalogue_ids(task_id: str) -> tuple[int, int]:
    """(domain index, task index in the catalogue): the explicit prompt of a task."""
    from datprl_edge.data.tasks import DOMAINS, TASKS

    if task_id not in TASKS:
        return 0, 0
    return DOMAINS.index(TASKS[task_id].domain), list(TASKS).index(task_id)


def _to_chw(a) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    if t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
        t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()
