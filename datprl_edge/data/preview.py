"""Contact sheet of degradations: one row per task, ground truth beside the degraded image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datprl_edge.core.errors import MissingBackendError
from datprl_edge.core.metrics import psnr
from datprl_edge.data.pairs import Pair, fixed_pairs
from datprl_edge.data.tasks import resolve_tasks
from datprl_edge.io.atomic import atomic_path


def preview_pairs(tasks, size: int = 256, seed: int = 0, severity: float | None = None, index: int = 0,
                  split: str = "val") -> list[Pair]:
    """One validation-style pair per task (pool image number `index`)."""
    out = []
    for task in resolve_tasks(tasks):
        sev = None if severity is None else [severity]
        out.append(fixed_pairs(task, index + 1, size, seed, split, sev)[index])
    return out


def draw_sheet(pairs, out_path, *, zoom: bool = True, dpi: int = 100, overwrite: bool = False) -> Path:
    """Draw the sheet for `pairs` and write it atomically as a PNG; zoom adds 2x centre crops."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingBackendError("matplotlib", purpose="the preview sheet") from None

    cols = 4 if zoom else 2
    px = pairs[0].gt.shape[0]
    fig = Figure(figsize=(cols * px / dpi * 1.02, len(pairs) * (px / dpi + 0.35)), dpi=dpi)
    FigureCanvasAgg(fig)
    for r, p in enumerate(pairs):
        h, w = p.gt.shape[:2]
        c0, c1 = (h // 4, h // 4 + h // 2), (w // 4, w // 4 + w // 2)
        panels = [("ground truth", p.gt), ("degraded", p.lq)]
        if zoom:
            panels += [("gt, centre 2x", p.gt[c0[0]:c0[1], c1[0]:c1[1]]),
                       ("degraded, centre 2x", p.lq[c0[0]:c0[1], c1[0]:c1[1]])]
        for c, (label, img) in enumerate(panels):
            ax = fig.add_subplot(len(pairs), cols, r * cols + c + 1)
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{p.task}  sev {p.severity:.2f}  PSNR {psnr(p.gt, p.lq):.2f} dB" if c == 1 else label
            ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.4)
    out_path = Path(out_path)
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
