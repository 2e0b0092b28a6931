"""What the fold stage measures and runs on: the task images, the output comparison, MACs and latency."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError

DYNAMIC_IMAGES_PER_TASK = 1
DYNAMIC_CROP = 128
DEFAULT_COUNT, DEFAULT_CROP = 16, 256  # a task the recipe does not list gets the recipes' usual counts


def load_fold_images(config, tasks, channels: int, dynamic: bool = False) -> dict:
    """{task id: (N, channels, H, W) float32 tensor} of calibration inputs (the degraded images).

    `config.calibration` is a built calibration-set folder or a recipe (name or .toml path).
    `tasks` None (dynamic fold): every task of the set/recipe. Unknown task ids fail before any
    image is built, with a "did you mean".
    """
    import torch

    from .data.tasks import get_task

    wanted = None if tasks is None else [get_task(t).id for t in tasks]
    count = config.images or (DYNAMIC_IMAGES_PER_TASK if dynamic else None)
    if Path(str(config.calibration)).is_dir():
        arrays = _from_set(Path(str(config.calibration)), wanted, count, config.crop)
    else:
        crop = config.crop or (DYNAMIC_CROP if dynamic else None)
        arrays = _from_recipe(config.calibration, wanted, count, crop)
    out = {}
    for task, arr in arrays.items():
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if channels == 1:
            x = x[:, :1]
        elif channels != x.shape[1]:
            raise ConfigError(f"the model takes {channels}-channel images; calibration images have "
                              f"{x.shape[1]}")
        out[task] = x
    if tasks is not None:  # keep the caller's spelling of the task ids
        out = {t: out[get_task(t).id] for t in tasks}
    return out


def _from_set(folder: Path, wanted, count, crop) -> dict:
    from .data.calib import load_calibration_set
    from .errors import UnknownChoiceError

    tasks = load_calibration_set(folder)
    for t in wanted or ():
        if t not in tasks:
            raise UnknownChoiceError(f"task in calibration set {folder.name}", t, tasks)
    return {t: _center_crop(tasks[t].lq[:count], crop) for t in (wanted or tasks)}


def _from_recipe(spec, wanted, count, crop) -> dict:
    from .data.calib import RecipeTask, build_calibration_set, load_calibration_set, load_recipe
    from .data.tasks import get_task

    recipe = load_recipe(spec)
    listed = {rt.id: rt for rt in recipe.tasks}
    chosen = []
    for t in wanted or listed:
        rt = listed.get(t) or RecipeTask(t, DEFAULT_COUNT, (get_task(t).default_severity,), DEFAULT_CROP,
                                         "train", 0)
        chosen.append(dataclasses.replace(rt, count=count or rt.count, crop=crop or rt.crop))
    one = dataclasses.replace(recipe, tasks=tuple(chosen), path=None)
    with tempfile.TemporaryDirectory(prefix="datprl-fold-") as tmp:
        build_calibration_set(one, Path(tmp) / "set", progress=False)
        tasks = load_calibration_set(Path(tmp) / "set")
    return {t: tasks[t].lq for t in tasks}


def _center_crop(arr: np.ndarray, crop) -> np.ndarray:
    if crop is None or (arr.shape[2] <= crop and arr.shape[3] <= crop):
        return arr
    h, w = min(crop, arr.shape[2]), min(crop, arr.shape[3])
    top, left = (arr.shape[2] - h) // 2, (arr.shape[3] - w) // 2
    return arr[:, :, top:top + h, left:left + w]


def compare_outputs(reference, folded, x, batch_size: int) -> dict:
    """Worst-image and mean PSNR (skimage, data range 1) and max abs diff of folded vs reference.

    `x`: an (N, C, H, W) batch, or a dict of them (sizes may differ between entries)."""
    import torch
    from skimage.metrics import peak_signal_noise_ratio

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
                for r, o in zip(ref, out):
                    with np.errstate(divide="ignore"):
                        psnrs.append(float(peak_signal_noise_ratio(r, o, data_range=1.0)))
    unique = [list(s) for s in sorted({tuple(s) for s in sizes})]
    return {"psnr_db": min(psnrs), "psnr_mean_db": float(np.mean(psnrs)), "max_abs_diff": worst,
            "images": len(psnrs), "size": unique[0] if len(unique) == 1 else unique}


def measure(model, config) -> dict:
    """MACs (counted) and torch CPU latency at `config.shape` (latency skipped when iters is 0)."""
    from .models.complexity import count_macs, count_params, measure_latency

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
