"""Per-task PSNR/SSIM of a model on fixed validation pairs (skimage.metrics)."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .objectives import explicit_override


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one (H, W, 3) float image in [0, 1] against its ground truth."""
    pred = np.clip(pred, 0.0, 1.0).astype(np.float64)
    gt = gt.astype(np.float64)
    psnr = peak_signal_noise_ratio(gt, pred, data_range=1.0)
    ssim = structural_similarity(gt, pred, data_range=1.0, channel_axis=2)
    return float(min(psnr, 100.0)), float(ssim)


@torch.no_grad()
def evaluate(model, val_sets: dict, device=None, prompt_ids_fn=None, batch: int = 8) -> dict:
    """{"tasks": {task: {psnr, ssim, psnr_input, ssim_input, count}}, "mean": {...}}.

    `val_sets` maps task id -> (lq, gt) tensors (N, 3, H, W); `prompt_ids_fn(task, n)` gives the
    (n, 2) [domain, task] ids of explicit-prompt models (None: automatic routing). The model runs in
    eval mode and is left in the mode it had.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out: dict = {}
    try:
        for task, (lq, gt) in val_sets.items():
            rows = []
            for i in range(0, lq.shape[0], batch):
                x = lq[i:i + batch].to(device)
                kw = {}
                if prompt_ids_fn is not None:
                    kw["override"] = explicit_override(model, prompt_ids_fn(task, x.shape[0]).to(device))
                pred = model(x, **kw).float().cpu()
                for p, g, q in zip(pred, gt[i:i + batch], lq[i:i + batch]):
                    g_np = g.permute(1, 2, 0).numpy()
                    rows.append(image_metrics(p.permute(1, 2, 0).numpy(), g_np)
                                + image_metrics(q.permute(1, 2, 0).numpy(), g_np))
            r = np.asarray(rows)
            out[task] = {"psnr": round(float(r[:, 0].mean()), 4), "ssim": round(float(r[:, 1].mean()), 5),
                         "psnr_input": round(float(r[:, 2].mean()), 4),
                         "ssim_input": round(float(r[:, 3].mean()), 5), "count": int(len(r))}
    finally:
        model.train(was_training)
    keys = ("psnr", "ssim", "psnr_input", "ssim_input")
    mean = {k: round(float(np.mean([v[k] for v in out.values()])), 5) for k in keys} if out else {}
    return {"tasks": out, "mean": mean}
