"""Per-task PSNR/SSIM of a model on fixed validation pairs (`core.metrics`, as `datprl-edge eval`)."""

from __future__ import annotations

import numpy as np
import torch

from datprl_edge.core.metrics import batch_metrics, mean_psnr
from datprl_edge.data.tasks import TASKS
from datprl_edge.train.objectives import explicit_override


@torch.no_grad()
def evaluate(model, val_sets: dict, device=None, prompt_ids_fn=None, batch: int = 8) -> dict:
    """{"tasks": {task: {psnr, ssim, psnr_input, ssim_input, count}}, "mean": {...}}.

    `val_sets` maps task id -> (lq, gt) tensors (N, 3, H, W); `prompt_ids_fn(task, n)` gives the
    (n, 2) [domain, task] ids of explicit-prompt models (None: automatic routing). The model runs in
    eval mode and is left in the mode it had. Grayscale tasks are scored on the channel mean.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out: dict = {}
    try:
        for task, (lq, gt) in val_sets.items():
            gray = task in TASKS and TASKS[task].grayscale
            rows = []
            for i in range(0, lq.shape[0], batch):
                x = lq[i:i + batch].to(device)
                kw = {}
                if prompt_ids_fn is not None:
                    kw["override"] = explicit_override(model, prompt_ids_fn(task, x.shape[0]).to(device))
                pred = model(x, **kw).float().cpu().numpy()
                g, q = gt[i:i + batch].numpy(), lq[i:i + batch].numpy()
                rows += [a + b for a, b in zip(batch_metrics(g, pred, grayscale=gray),
                                               batch_metrics(g, q, grayscale=gray))]
            r = np.asarray(rows)
            out[task] = {"psnr": round(mean_psnr(r[:, 0]), 4), "ssim": round(float(r[:, 1].mean()), 5),
                         "psnr_input": round(mean_psnr(r[:, 2]), 4),
                         "ssim_input": round(float(r[:, 3].mean()), 5), "count": int(len(r))}
    finally:
        model.train(was_training)
    keys = ("psnr", "ssim", "psnr_input", "ssim_input")
    mean = {k: round(float(np.mean([v[k] for v in out.values()])), 5) for k in keys} if out else {}
    return {"tasks": out, "mean": mean}
