"""Harm (images where a model is worse than its input) and the classical baseline rows of `evaluate`.

Harm crops: for each task where a model is worse than the degraded input on some image, the
window (`CROP` px) of that task's worst image where the model adds the most squared error over
the input, saved as ground truth / input / model PNGs for the report's thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datprl_edge.core.artifacts import safe_name
from datprl_edge.core.errors import ConfigError

CROP = 96  # px, side of the harm thumbnails


def _r(v, digits: int = 4) -> float:
    return round(float(v), digits)


def harm_stats(model_psnr, input_psnr, names=None) -> dict:
    """Images where the model is worse than the degraded input: {"harm": count, "worst": index of the
    image with the lowest PSNR gain, "worst_name", "worst_gain_db"}. Equal PSNR is not harm."""
    m, i = np.asarray(model_psnr, dtype=np.float64), np.asarray(input_psnr, dtype=np.float64)
    if m.shape != i.shape or m.ndim != 1 or not m.size:
        raise ConfigError(f"harm needs two equal-length, non-empty PSNR lists, got {m.shape} and {i.shape}")
    with np.errstate(invalid="ignore"):  # inf - inf: both identical to the ground truth, no gain
        gain = np.where(np.isinf(m) & np.isinf(i), 0.0, m - i)
    worst = int(np.argmin(gain))
    return {"harm": int(np.sum(gain < 0)), "worst": worst,
            "worst_name": None if names is None else str(names[worst]), "worst_gain_db": _r(gain[worst])}


def add_harm(per_task: dict, base: dict, sets: list) -> None:
    """Add gain over the input, harm count, worst image and `below_input` to each task's entry."""
    names = {s.task: [n for n, *_ in s.pairs] for s in sets}
    for task, m in per_task.items():
        h = harm_stats(m["per_image_psnr"], base[task]["per_image_psnr"], names[task])
        m.update(gain_db=_r(m["psnr"] - base[task]["psnr"]), below_input=m["psnr"] < base[task]["psnr"],
                 harm=h["harm"], worst_image=h["worst_name"], worst_gain_db=h["worst_gain_db"])


def worst_window(gt: np.ndarray, lq: np.ndarray, out: np.ndarray, size: int = CROP) -> tuple[int, int, int]:
    """(top, left, side) of the window where the output's squared error exceeds the input's most."""
    from scipy.ndimage import uniform_filter

    h, w = gt.shape[:2]
    side = min(size, h, w)
    extra = ((out - gt) ** 2 - (lq - gt) ** 2).mean(axis=2)
    local = uniform_filter(extra, size=side, mode="constant")
    half = side // 2
    valid = local[half:h - side + half + 1, half:w - side + half + 1]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left), side


def write_harm_crops(harm_dir, model_name: str, runner, sets: list, per_task: dict) -> None:
    """For every task where the model harms an image, save crops of the worst one and record them
    in `per_task[task]["harm_visual"]` (file paths relative to the parent of `harm_dir`)."""
    from PIL import Image

    harm_dir = Path(harm_dir)
    for s in sets:
        m = per_task[s.task]
        if not m.get("harm"):
            continue
        names = [n for n, *_ in s.pairs]
        _, gt, lq = s.pairs[names.index(m["worst_image"])]
        out = np.clip(np.asarray(runner(lq), dtype=np.float32), 0.0, 1.0)
        if out.shape[2] != 3:
            out = np.repeat(out, 3, axis=2)
        top, left, side = worst_window(gt, lq, out)
        folder = harm_dir / safe_name(model_name)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for label, img in (("ground truth", gt), ("input", lq), ("model", out)):
            crop = img[top:top + side, left:left + side]
            path = folder / f"{safe_name(s.task)}_{safe_name(label)}.png"
            Image.fromarray(np.rint(np.clip(crop, 0, 1) * 255).astype(np.uint8)).save(path)
            files[label] = path.relative_to(harm_dir.parent).as_posix()
        m["harm_visual"] = {"image": m["worst_image"], "crop": [top, left, side], "files": files}


def score_baselines(sets: list, base: dict, *, progress: bool = False, select_count: int = 4,
                    select_size: int = 128) -> dict:
    """Every classical method of each known task on the eval images, and the best one chosen on
    the train split (`baselines.select_best`). Folder sets of unknown tasks get no rows."""
    from tqdm import tqdm

    from datprl_edge.core.metrics import image_metrics, mean_psnr
    from datprl_edge.data.tasks import TASKS
    from datprl_edge.evaluate.baselines import get_method, methods_for, run_baseline, select_best

    per_task = {}
    known = [s for s in sets if s.task in TASKS and methods_for(s.task)]
    total = sum(len(s.pairs) * len(methods_for(s.task)) for s in known)
    with tqdm(total=total, desc="classical", unit="img", disable=not progress, leave=False) as bar:
        for s in known:
            methods = {}
            for name in methods_for(s.task):
                scores = []
                for _, gt, lq in s.pairs:
                    scores.append(image_metrics(gt, run_baseline(name, lq), s.grayscale))
                    bar.update()
                psnr = [p for p, _ in scores]
                mean = mean_psnr(psnr)
                ssim = float(np.mean([q for _, q in scores]))
                methods[name] = {"psnr": round(mean, 4), "ssim": round(ssim, 5),
                                 "images": len(scores), "gain_db": round(mean - base[s.task]["psnr"], 4),
                                 "harm": harm_stats(psnr, base[s.task]["per_image_psnr"])["harm"],
                                 "uses": get_method(name).uses}
            sel = select_best(s.task, count=select_count, size=select_size)
            per_task[s.task] = {"methods": methods, "best": sel["best"], "selection": sel}
    return {"what": "classical methods of datprl_edge.evaluate.baselines on the same images; "
                    "'best' is chosen by mean "
                    f"PSNR on {select_count} train-split pairs of {select_size} px, never on these images",
            "per_task": per_task}
