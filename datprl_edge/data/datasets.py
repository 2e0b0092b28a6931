"""Torch datasets: paired folders (BasicSR layout), on-the-fly synthetic pairs, fixed validation sets.

Items are dicts: ``lq`` and ``gt`` float32 tensors (3, H, W) in [0, 1], plus ``task``, ``domain``,
``severity`` (synthetic and validation sets) or ``name`` (paired folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datprl_edge.core.errors import ConfigError, InputNotFoundError
from datprl_edge.data.pairs import fixed_pairs, item_seed, load_image, make_pair, task_pool
from datprl_edge.data.tasks import get_task, resolve_tasks

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float array -> contiguous float32 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)))


class PairedFolderDataset(Dataset):
    """`root/gt/*` and `root/lq/*` matched by file stem (BasicSR paired layout).

    Every file must have a partner; a ConfigError names the unmatched ones. `task`, if given, is
    reported in every item (the folder itself does not say which task it holds).
    """

    def __init__(self, root, task: str | None = None):
        root = Path(root)
        dirs = {k: root / k for k in ("gt", "lq")}
        for d in dirs.values():
            if not d.is_dir():
                raise InputNotFoundError(f"{d} not found: a paired folder needs gt/ and lq/ subfolders")
        files = {k: {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
                 for k, d in dirs.items()}
        only_gt = sorted(set(files["gt"]) - set(files["lq"]))
        only_lq = sorted(set(files["lq"]) - set(files["gt"]))
        if only_gt or only_lq:
            parts = [f"{len(v)} in {k}/ only ({_few([files[k][s].name for s in v])})"
                     for k, v in (("gt", only_gt), ("lq", only_lq)) if v]
            raise ConfigError(f"unmatched files in {root}: " + "; ".join(parts))
        if not files["gt"]:
            raise InputNotFoundError(f"no images in {dirs['gt']} (suffixes {', '.join(IMAGE_SUFFIXES)})")
        self.root = root
        self.task = get_task(task) if task is not None else None
        self.pairs = [(files["gt"][s], files["lq"][s]) for s in sorted(files["gt"])]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        from datprl_edge.io.images import read_image

        gt_path, lq_path = self.pairs[index]
        gt, lq = (_rgb(read_image(p)[0]) for p in (gt_path, lq_path))
        if gt.shape != lq.shape:
            raise ConfigError(f"{gt_path.stem}: gt is {gt.shape[1]}x{gt.shape[0]} but lq is "
                              f"{lq.shape[1]}x{lq.shape[0]}; pairs must have the same size")
        item = {"lq": to_tensor(lq), "gt": to_tensor(gt), "name": gt_path.stem}
        if self.task is not None:
            item.update(task=self.task.id, domain=self.task.domain)
        return item


class SyntheticDataset(Dataset):
    """On-the-fly pairs: image pool x task x severity, with random crops, flips and 90-degree turns.

    samples: `Sample`s (None: all bundled 'train' samples); each task draws only images of its
    domain (preferring its modalities, see `Task.modalities`). tasks: ids or set names.
    severities: None (each task's default), one float, a list to draw from uniformly, or "train"
    (uniform over each task's `train_severity` range).
    Item i depends only on (seed, i), so it is the same in any worker and epoch; pass a new seed
    per epoch for fresh pairs. Tasks cycle with the index, so every task gets length/len(tasks);
    `make(task_index, i)` makes item i for another task (on-the-fly training picks tasks itself).
    """

    def __init__(self, samples=None, tasks="9task", severities=None, crop: int = 128, length: int = 1000,
                 seed: int = 0):
        if samples is None:
            from datprl_edge.data.samples import list_samples

            samples = list_samples(split="train")
        self.tasks = resolve_tasks(tasks)
        if not self.tasks:
            raise ConfigError("no tasks given")
        self.pools = {}
        for t in self.tasks:
            pool = task_pool(t, samples)
            if not pool:
                raise ConfigError(f"no samples of domain {t.domain!r} for task {t.id}")
            self.pools[t.id] = pool
        if severities is None or severities == "train":
            self.severities = severities
        else:
            sev = [severities] if np.isscalar(severities) else list(severities)
            self.severities = [float(s) for s in sev]
            if not self.severities or any(not 0.0 <= s <= 1.0 for s in self.severities):
                raise ConfigError(f"severities must be values in [0, 1], got {severities!r}")
        if int(crop) < 8 or int(length) < 1:
            raise ConfigError(f"crop must be >= 8 and length >= 1, got crop={crop}, length={length}")
        self.crop, self.length, self.seed = int(crop), int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.make(index % len(self.tasks), index)

    def make(self, task_index: int, index: int) -> dict:
        """Item `index` made for task `task_index` (any index >= 0; depends only on seed, task, index)."""
        task = self.tasks[task_index]
        rng = np.random.default_rng(item_seed(self.seed, task.id, index))
        pool = self.pools[task.id]
        sample = pool[int(rng.integers(len(pool)))]
        if self.severities is None:
            severity = task.default_severity
        elif self.severities == "train":
            lo, hi = train_severity(task)
            severity = float(rng.uniform(lo, hi))
        else:
            severity = self.severities[int(rng.integers(len(self.severities)))]
        pair = make_pair(task, load_image(sample), self.crop, severity, rng, flip_rotate=True)
        return {"lq": to_tensor(pair.lq), "gt": to_tensor(pair.gt), "task": task.id, "domain": task.domain,
                "severity": float(severity), "task_index": task_index}


def train_severity(task) -> tuple[float, float]:
    """The (lo, hi) severity range training draws from (the default +- 0.15 where the task has none)."""
    task = get_task(task)
    d = task.default_severity
    rng = getattr(task, "train_severity", None) or (max(0.0, d - 0.15), min(1.0, d + 0.15))
    return float(rng[0]), float(rng[1])


@dataclass(frozen=True, eq=False)
class ValidationSet(Dataset):
    """A fixed set of pairs for one task; arrays are float32 (N, 3, H, W), read-only."""

    task: str
    domain: str
    lq: np.ndarray
    gt: np.ndarray
    severity: np.ndarray  # (N,)
    sources: tuple  # sample name of each pair

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, index: int) -> dict:
        return {"lq": torch.from_numpy(self.lq[index].copy()), "gt": torch.from_numpy(self.gt[index].copy()),
                "task": self.task, "domain": self.domain, "severity": float(self.severity[index])}

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lq, gt) as batched float32 tensors (copies)."""
        return torch.from_numpy(self.lq.copy()), torch.from_numpy(self.gt.copy())


def validation_set(task: str, count: int = 8, size: int = 256, seed: int = 0,
                   severity: float | None = None) -> ValidationSet:
    """A fixed, seeded validation set for `task` from the bundled 'val' samples, cached in memory.

    Pair k is a crop of a val image (cycling through the task's pool, see `fixed_pairs`) degraded at
    `severity` (None: the task default). The same arguments always give identical arrays.
    """
    sev = None if severity is None else float(severity)
    return _validation_set(get_task(task).id, int(count), int(size), int(seed), sev)


@lru_cache(maxsize=64)
def _validation_set(task_id, count, size, seed, severity) -> ValidationSet:
    pairs = fixed_pairs(task_id, count, size, seed, "val", None if severity is None else [severity])
    lq = np.stack([p.lq.transpose(2, 0, 1) for p in pairs]).astype(np.float32)
    gt = np.stack([p.gt.transpose(2, 0, 1) for p in pairs]).astype(np.float32)
    sev = np.array([p.severity for p in pairs], dtype=np.float32)
    for a in (lq, gt, sev):
        a.flags.writeable = False
    return ValidationSet(task_id, pairs[0].domain, lq, gt, sev, tuple(p.source for p in pairs))


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _few(names, n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
