"""Torch-free building blocks for (gt, lq) pairs: image pools per task, crops, augmentation, seeding.

Shared by the datasets, the calibration builder, `data synth` and the preview sheet.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datprl_edge.core.errors import ConfigError
from datprl_edge.data.tasks import Task, get_task


def task_pool(task, samples) -> list:
    """Samples of the task's domain; within it, the first tier of preferred modalities that has any."""
    task = get_task(task)
    same_domain = [s for s in samples if s.domain == task.domain]
    for tier in task.modalities:
        preferred = [s for s in same_domain if s.modality in tier]
        if preferred:
            return preferred
    return same_domain


def split_pool(task, split: str) -> list:
    """The bundled samples of `split` for `task`; a ConfigError if there are none."""
    from datprl_edge.data.samples import list_samples

    task = get_task(task)
    pool = task_pool(task, list_samples(domain=task.domain, split=split))
    if not pool:
        raise ConfigError(f"no bundled '{split}' samples of domain {task.domain!r} for task {task.id}")
    return pool


@lru_cache(maxsize=256)
def load_image(sample) -> np.ndarray:
    """A sample as float32 (H, W, 3), cached in memory (read-only array)."""
    from datprl_edge.data.samples import load_sample

    img = load_sample(sample)
    img.flags.writeable = False
    return img


def item_seed(seed: int, task_id: str, index: int) -> np.random.SeedSequence:
    """Independent, order-free seed for item `index` of `task_id` (same on every worker)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(task_id.encode()), int(index)])


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop; images smaller than `size` are reflect-padded first."""
    h, w = image.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "symmetric"
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
        h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top:top + size, left:left + size]


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and rotation by a multiple of 90 degrees (the 8 dihedral poses)."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.rot90(image, int(rng.integers(0, 4)))


@dataclass(frozen=True)
class Pair:
    gt: np.ndarray  # float32 (H, W, 3)
    lq: np.ndarray
    task: str
    domain: str
    severity: float
    source: str  # sample name the crop came from


def make_pair(task, image, size: int, severity: float, seed, *, flip_rotate: bool = False) -> Pair:
    """Crop (and optionally flip/rotate) `image`, then degrade the crop in its final pose."""
    task = get_task(task)
    rng = np.random.default_rng(seed)
    crop = random_crop(np.asarray(image), int(size), rng)
    if flip_rotate:
        crop = augment(crop, rng)
    gt, lq = task.make_pair(np.ascontiguousarray(crop), severity, rng)
    return Pair(gt, lq, task.id, task.domain, float(severity), "")


def fixed_pairs(task, count: int, size: int, seed: int = 0, split: str = "val", severities=None,
                samples=None) -> list[Pair]:
    """`count` deterministic pairs for `task`: pair k has severity k mod m and pool image
    (k // m + k mod m) mod n, so every severity level cycles through all n images.

    `severities` is a list (None: the task default); `samples` overrides the bundled pool.
    """
    task: Task = get_task(task)
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    pool = task_pool(task, samples) if samples is not None else split_pool(task, split)
    if not pool:
        raise ConfigError(f"no samples of domain {task.domain!r} for task {task.id}")
    sev = [task.default_severity] if severities is None else [float(s) for s in severities]
    out = []
    for k in range(count):
        sample = pool[(k // len(sev) + k % len(sev)) % len(pool)]
        p = make_pair(task, load_image(sample), size, sev[k % len(sev)], item_seed(seed, task.id, k))
        out.append(Pair(p.gt, p.lq, p.task, p.domain, p.severity, sample.name))
    return out
