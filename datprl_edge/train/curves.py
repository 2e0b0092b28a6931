"""Training curves: validation PSNR against steps and against wall time, from runs' `val.jsonl`.

    from datprl_edge.train.curves import plot_runs
    plot_runs({"KD": "runs/edge-xs-v3", "no KD": "runs/edge-xs-v3-nokd"}, "curves.png")

`benchmarks/plot_training.py` is the command-line front end. Records without `wall_s` (runs made
before it was logged) are placed on the time axis from the train log's seconds per step.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_curve(run_dir) -> dict:
    """{"step", "wall_s", "psnr", "psnr_input", "tasks": {task: [psnr...]}} of a run's validation log."""
    run_dir = Path(run_dir)
    recs = _jsonl(run_dir / "val.jsonl")
    if not recs:
        raise FileNotFoundError(f"{run_dir / 'val.jsonl'} holds no validation records")
    sec = _sec_per_step(run_dir)
    curve = {"step": [], "wall_s": [], "psnr": [], "psnr_input": [], "tasks": {}}
    for r in sorted(recs, key=lambda r: r["step"]):
        curve["step"].append(r["step"])
        curve["wall_s"].append(r.get("wall_s", r["step"] * sec))
        curve["psnr"].append(r["mean"]["psnr"])
        curve["psnr_input"].append(r["mean"]["psnr_input"])
        for t, m in r.get("tasks", {}).items():
            curve["tasks"].setdefault(t, []).append(m["psnr"] - m["psnr_input"])
    return curve


def plot_runs(runs: dict, out_png, title: str = "validation PSNR", per_task: bool = False) -> Path:
    """One PNG: mean validation PSNR vs steps (left) and vs wall time in minutes (right) for each run
    ({label: run folder}), the input's PSNR dashed; `per_task` adds a row of per-task gain over the input."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {label: read_curve(d) for label, d in runs.items()}
    rows = 2 if per_task else 1
    fig = Figure(figsize=(11, 4 * rows))
    FigureCanvasAgg(fig)
    ax_step, ax_time = fig.add_subplot(rows, 2, 1), fig.add_subplot(rows, 2, 2)
    for label, c in curves.items():
        ax_step.plot(c["step"], c["psnr"], marker=".", label=label)
        ax_time.plot([w / 60 for w in c["wall_s"]], c["psnr"], marker=".", label=label)
    first = next(iter(curves.values()))
    for ax, xs in ((ax_step, first["step"]), (ax_time, [w / 60 for w in first["wall_s"]])):
        ax.plot(xs, first["psnr_input"], "k--", lw=1, label="input")
        ax.set_ylabel("mean PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_step.set_xlabel("step")
    ax_time.set_xlabel("wall time (min)")
    ax_step.set_title(title, fontsize=9, loc="left")
    if per_task:
        for k, (label, c) in enumerate(list(curves.items())[:2]):
            ax = fig.add_subplot(rows, 2, 3 + k)
            for t, gains in c["tasks"].items():
                ax.plot(c["step"][:len(gains)], gains, label=t)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel("step")
            ax.set_ylabel("PSNR gain over input (dB)")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def _jsonl(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _sec_per_step(run_dir: Path) -> float:
    recs = _jsonl(run_dir / "train.jsonl")
    return float(recs[-1].get("sec_per_step", 0.0)) if recs else 0.0
