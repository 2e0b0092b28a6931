"""Visual comparisons: GT | degraded | teacher | student FP32 | student INT8 on one validation image
per task. `compute_visuals` runs the models and stores the images (PNG) and their PSNR/SSIM in
`visuals.json`; `render_task` draws one task's row for the report from those files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from datprl_edge.core.artifacts import safe_name
from datprl_edge.core.errors import ConfigError
from datprl_edge.io.atomic import atomic_dir
from datprl_edge.report.collect import VISUALS_FILE

SCHEMA = "datprl-edge-visuals/1"


def compute_visuals(out_dir, tasks, panels, *, size: int = 128, seed: int = 0,
                    overwrite: bool = False) -> dict:
    """Restore one fixed validation pair per task with every model in `panels` ((label, model spec):
    an artifact path, a checkpoint or bundled:NAME) and write `out_dir` (PNG images + visuals.json)."""
    from PIL import Image

    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.data.tasks import resolve_tasks
    from datprl_edge.evaluate.driver import image_metrics, open_model

    if not panels:
        raise ConfigError("visual comparisons need at least one model")
    opened = [(label, str(spec), open_model(str(spec))[0]) for label, spec in panels]
    entries = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for task in resolve_tasks(list(tasks)):
            pair = fixed_pairs(task, 1, size, seed)[0]
            folder = tmp / safe_name(task.id)
            folder.mkdir(parents=True)
            images = [("ground truth", "", pair.gt), ("degraded", "", pair.lq)]
            images += [(label, spec, np.clip(runner(pair.lq), 0.0, 1.0)) for label, spec, runner in opened]
            panels_out = []
            for label, spec, img in images:
                name = f"{len(panels_out)}_{safe_name(label)}.png"
                Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / name)
                entry = {"label": label, "model": Path(spec).name if spec else "",
                         "file": f"{folder.name}/{name}"}
                if label != "ground truth":
                    psnr, ssim = image_metrics(pair.gt, img, task.grayscale)
                    entry.update(psnr=round(psnr, 3), ssim=round(ssim, 4))
                panels_out.append(entry)
            entries.append({"task": task.id, "source": pair.source, "severity": pair.severity,
                            "panels": panels_out})
        report = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": size,
                  "seed": seed,
                  "what": "first fixed validation pair of each task (data.pairs.fixed_pairs, split 'val'); "
                          "PSNR/SSIM of the float output against the ground truth (evaluate.image_metrics), "
                          "images stored as 8-bit PNG",
                  "tasks": entries}
        (tmp / VISUALS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def render_task(entry: dict, base_dir) -> bytes:
    """One row of panels for a task (PNG bytes), titles with the stored PSNR/SSIM."""
    from PIL import Image

    from datprl_edge.report.plots import _figure, png_bytes

    panels = entry["panels"]
    fig = _figure(2.6 * len(panels), 3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        img = np.asarray(Image.open(Path(base_dir) / p["file"]).convert("RGB"))
        ax.imshow(img, interpolation="nearest")
        title = p["label"] + (f"\n{p['model']}" if p.get("model") else "\n ")
        if "psnr" in p:
            title += f"\n{p['psnr']:.2f} dB / SSIM {p['ssim']:.3f}"
        else:
            title += "\nreference"
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(entry["task"], fontsize=10, x=0.01, ha="left")
    return png_bytes(fig)
