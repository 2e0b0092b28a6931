"""What the fold stage measures and runs on: the task images, the output comparison, MACs and latency."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.metrics import batch_psnr, mean_psnr

DYNAMIC_IMAGES_PER_TASK = 1
DYNAMIC_CROP = 128


def load_fold_images(config, tasks, channels: int, dynamic: bool = False) -> dict:
    """{task id: (N, channels, H, W) float32 tensor} of calibration inputs (the degraded images).

    `config.calibration` is a built calibration-set folder or a recipe (name or .toml path).
    `tasks` None (dynamic fold): every task of the set/recipe. Unknown task ids fail before any
    image is built, with a "did you mean".
    """
    import torch

    from datprl_edge.data.calib import calibration_images
    from datprl_edge.data.tasks import get_task

    wanted = None if tasks is None else [get_task(t).id for t in tasks]
    count = config.images or (DYNAMIC_IMAGES_PER_TASK if dynamic else None)
    # a built set is used at its own crop; a recipe built for a dynamic fold at the smaller DYNAMIC_CROP
    built = Path(str(config.calibration)).is_dir()
    crop = config.crop or (DYNAMIC_CROP if dynamic and not built else None)
    images = calibration_images(config.calibration, tasks=wanted, count=count, crop=crop)
    out = {}
    for task, calib in images.tasks.items():
        x = torch.from_numpy(np.ascontiguousarray(calib.lq, dtype=np.float32))
        if channels == 1:
            x = x[:, :1]
        elif channels != x.shape[1]:
            raise ConfigError(f"the model takes {channels}-channel images; calibration images have "
                              f"{x.shape[1]}")
        out[task] = x
    if tasks is not None:  # keep the caller's spelling of the task ids
        out = {t: out[get_task(t).id] for t in tasks}
    return out


def compare_outputs(reference, folded, x, batch_size: int) -> dict:
    """Worst-image PSNR, mean PSNR (`core.metrics`: unclipped, inf when identical, the mean capped)
    and max abs diff of folded vs reference.

    `x`: an (N, C, H, W) batch, or a dict of them (sizes may differ between entries)."""
    import torch

    groups = list(x.values()) if isinstance(x, dict) else [x]
    psnrs, worst, sizes = [], 0.0, []
    with torch.inference_mode():
        for group in groups:
            sizes.append(list(group.shape[2:]))
            for i in range(0, len(group), batch_size):
                b = group[i:i + batch_size]
                ref = reference(b).double().numpy()
                out = folded(b).double().numpy()
                worst = max(worst, float(np.abs(ref - out).max()))
                psnrs += batch_psnr(ref, out)
    unique = [list(s) for s in sorted({tuple(s) for s in sizes})]
    return {"psnr_db": min(psnrs), "psnr_mean_db": mean_psnr(psnrs), "max_abs_diff": worst,
            "images": len(psnrs), "size": unique[0] if len(unique) == 1 else unique}


def measure(model, config) -> dict:
    """MACs (counted) and torch CPU latency at `config.shape` (latency skipped when iters is 0)."""
    from datprl_edge.models.complexity import count_macs, count_params, measure_latency

    macs = count_macs(model, config.shape)
    lat = None
    if config.latency_iters:
        lat = measure_latency(model, config.shape, warmup=config.latency_warmup, iters=config.latency_iters,
                              threads=config.threads)
    return {"macs": int(macs.total), "params": int(count_params(model)),
            "latency_ms": None if lat is None else round(lat["median_ms"], 3), "latency": lat}


def json_db(v: float):
    """A dB figure for JSON: rounded, or "inf" for identical outputs."""
    return round(v, 2) if math.isfinite(v) else "inf"
