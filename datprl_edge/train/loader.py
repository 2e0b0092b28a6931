"""The batches of a run, step by step: which pairs (`BatchPlan`) and who makes them (`StepLoader`).

A step's batch is a pure function of (seed, step, task weights), so it can be made ahead of time in
worker processes (a `torch.utils.data.DataLoader` over step numbers, `workers` > 0) while the
model trains on the previous one; the pair generators (radon/iradon for CT, blur kernels, ...)
then never run inside the step. With 0 workers the batch is made in the step, as before.

The loader covers one segment of steps at a time (between validations): adaptive task weights
change after a validation, and a new segment starts with the new weights.
"""

from __future__ import annotations

import numpy as np
import torch

from datprl_edge.train.data import TrainData


class BatchPlan:
    """(tasks, items, poses) of this rank's share (all its micro-batches) of the global batch at a step.

    Fixed pool: items are pool indices. On the fly: item ids are step * batch + slot // pair_reuse,
    unique over the run, and a reused pair fills `pair_reuse` slots in different dihedral poses.
    """

    def __init__(self, data: TrainData, curriculum, batch_size: int, share: slice, pair_reuse: int = 1,
                 targets_fn=None):
        self.data, self.curriculum = data, curriculum
        self.batch_size, self.share, self.reuse = int(batch_size), share, int(pair_reuse)
        self.targets_fn = targets_fn  # lq -> per-sample teacher targets, made with the batch

    def __call__(self, step: int, weights=None):
        b = self.batch_size
        if not self.data.on_the_fly:
            items = self.curriculum.batch(step, b, weights)
            tasks = self.data.task_of_item[items]
            poses = np.zeros(b, dtype=np.int64)
        else:
            n = -(-b // self.reuse)
            slot = np.arange(b)
            tasks = self.curriculum.tasks(step, n, weights)[slot // self.reuse]
            items = step * b + slot // self.reuse
            poses = slot % self.reuse
        s = self.share
        return tasks[s], np.asarray(items[s], dtype=np.int64), poses[s]


def make_batch(data: TrainData, plan: BatchPlan, step: int, weights=None, memo: bool = True) -> dict:
    tasks, items, poses = plan(step, weights)
    uniq, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    lq, gt = data.make(tasks[first], uniq, memo=memo)
    lq, gt = lq[inverse], gt[inverse]  # back to the plan's order (the teacher cache looks up by item)
    if poses.any():
        lq = torch.stack([_pose(x, int(p)) for x, p in zip(lq, poses)])
        gt = torch.stack([_pose(x, int(p)) for x, p in zip(gt, poses)])
    out = {"step": step, "lq": lq, "gt": gt, "items": items, "tasks": tasks}
    if plan.targets_fn is not None:
        out["teacher"] = plan.targets_fn(lq)
    return out


def take(tree, sl, device, non_blocking=False):
    """Slice every tensor of a nested dict along the batch and move it to `device` (float32)."""
    if isinstance(tree, dict):
        return {k: take(v, sl, device, non_blocking) for k, v in tree.items()}
    return tree[sl].to(device, torch.float32, non_blocking=non_blocking)


def _pose(x: torch.Tensor, k: int) -> torch.Tensor:
    """Dihedral pose k (0..7) of a (C, H, W) crop: k mod 4 quarter turns, mirrored for k >= 4."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1)).contiguous() if k % 4 else x


class _Steps(torch.utils.data.Dataset):
    def __init__(self, data, plan, first, stop, weights):
        self.data, self.plan, self.first, self.stop, self.weights = data, plan, first, stop, weights

    def __len__(self):
        return self.stop - self.first

    def __getitem__(self, k):
        return make_batch(self.data, self.plan, self.first + k, self.weights, memo=False)


class StepLoader:
    """Yields the batches of steps [first, stop) in order, made by `workers` processes when > 0."""

    def __init__(self, data: TrainData, plan: BatchPlan, workers: int = 0, prefetch: int = 4,
                 pin_memory: bool = False):
        self.data, self.plan, self.workers = data, plan, int(workers)
        self.prefetch, self.pin_memory = max(2, int(prefetch)), pin_memory

    def iterate(self, first: int, stop: int, weights=None):
        if stop <= first:
            return
        if self.workers == 0:
            for step in range(first, stop):
                yield make_batch(self.data, self.plan, step, weights)
            return
        import multiprocessing as mp

        # fork: the pair makers are closures (not picklable); the workers never touch CUDA
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        loader = torch.utils.data.DataLoader(
            _Steps(self.data, self.plan, first, stop, weights), batch_size=None, shuffle=False,
            num_workers=min(self.workers, stop - first), prefetch_factor=self.prefetch,
            multiprocessing_context=ctx, pin_memory=self.pin_memory)
        for b in loader:
            b["items"] = np.asarray(b["items"], dtype=np.int64)
            b["tasks"] = np.asarray(b["tasks"], dtype=np.int64)
            yield b
