"""How much more training would the issue-13 targets need? Fits the quality figures of a chain of
checkpoints (each trained further from the one before) against the training pixels seen, and solves
each fit for its target.

    python benchmarks/compute_curve.py --chain "KD=variant:kd-1,variant:kd-2,student" \
        --chain "no KD=variant:nokd-1,variant:nokd-2,variant:nokd" \
        --stages 1500x8x64,6106x8x64,9842x8x96 --last-stage-seconds 6200

ROWs are model labels of `benchmarks/results/quality.json` (add chain points with
`quality.py --add-to ... --variant NAME=CKPT`); stage k of --stages (STEPSxBATCHxCROP) made the chain's
k-th point. The first chain's teacher gap gets a power-law fit, gains over the input a log fit
(`datprl_edge.train.compute_fit`). CPU hours use the last stage's measured wall time per pixel.
Writes benchmarks/results/compute_curve.json and .png atomically.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datprl_edge.train.compute_fit import curve_points, extrapolate, stage_pixels  # noqa: E402

TARGETS = {"teacher_gap_db": ("power", 0.5), "mean_gain_db": ("log", 1.5),
           "natural/sr_x4_gain_db": ("log", 0.8), "remote/sr_x4_gain_db": ("log", 0.8),
           "medical/ct_denoise_gain_db": ("log", 2.0)}
GAIN_COLOURS = (("mean_gain_db", "C0"), ("natural/sr_x4_gain_db", "C1"), ("remote/sr_x4_gain_db", "C2"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quality", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    p.add_argument("--set", default="val", choices=("val", "shifted"))
    p.add_argument("--chain", action="append", required=True, metavar="LABEL=ROW,ROW,...")
    p.add_argument("--stages", required=True, help="STEPSxBATCHxCROP per chain point, comma-separated")
    p.add_argument("--last-stage-seconds", type=float, required=True,
                   help="measured wall time of the last stage (converts pixels to CPU hours)")
    p.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "results" / "compute_curve.json"))
    return p.parse_args(argv)


def figures(per_task: dict, row: str) -> dict:
    import numpy as np

    m = {t: v["models"][row] for t, v in per_task.items()}
    out = {"mean_psnr": float(np.mean([x["psnr"] for x in m.values()])),
           "mean_gain_db": float(np.mean([x["gain_db"] for x in m.values()])),
           "teacher_gap_db": float(np.mean([v["models"]["teacher"]["psnr"] - m[t]["psnr"]
                                            for t, v in per_task.items()]))}
    tasks = ("natural/sr_x4", "remote/sr_x4", "medical/ct_denoise")
    out.update({f"{t}_gain_db": m[t]["gain_db"] for t in tasks if t in m})
    for t, v in per_task.items():  # "beats the best classical method": the margin must pass 0
        if v.get("best_classical"):
            out[f"{t}_minus_best_classical_db"] = m[t]["psnr"] - v["best_classical_psnr"]
    return out


def plot(chains: dict, fits: dict, pixels: list, out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax_gap, ax_gain = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    first = next(iter(chains))
    for k, (label, pts) in enumerate(chains.items()):
        style = "-" if k == 0 else "--"
        ax_gap.plot(pixels, [p["teacher_gap_db"] for p in pts], "o" + style, label=label)
        for key, colour in GAIN_COLOURS:
            ax_gain.plot(pixels, [p[key] for p in pts], "o" + style, color=colour,
                         label=f"{label}: {key.replace('_gain_db', '')}")
    for key, ax, colour in [("teacher_gap_db", ax_gap, "C0")] + [(k, ax_gain, c) for k, c in GAIN_COLOURS]:
        f = fits[first][key]
        if f["params"] is None:
            continue
        hi = max(pixels[-1] * 2, min(f["compute_at_target"] or 0, pixels[-1] * 1000))
        xs, ys = curve_points(f, pixels[0], hi)
        ax.plot(xs, ys, ":", color=colour, lw=1)
        ax.axhline(f["target"], color=colour, lw=0.6, alpha=0.6)
    ax_gap.set_xscale("log")
    ax_gap.set_yscale("log")
    ax_gap.set_ylabel("teacher PSNR minus student (dB, mean of 9 tasks)")
    ax_gain.set_xscale("log")
    ax_gain.set_ylabel("PSNR gain over the input (dB)")
    for ax in (ax_gap, ax_gain):
        ax.set_xlabel("training pixels seen (steps x batch x crop^2)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax_gap.set_title("dotted: fit of the first chain, extended to its target (thin line)",
                     fontsize=8, loc="left")
    fig.tight_layout()
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out_png)


def main(argv=None) -> int:
    from datprl_edge.core.errors import ConfigError
    from datprl_edge.io.atomic import write_text_atomic

    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    report = json.loads(Path(args.quality).read_text())
    per_task = report["sets"][args.set]
    try:
        stages = [tuple(int(v) for v in s.lower().split("x")) for s in args.stages.split(",")]
        pixels = stage_pixels(stages)
    except ValueError as err:
        raise ConfigError(f"--stages takes STEPSxBATCHxCROP,...: {err}") from None
    chains, rows = {}, {}
    for spec in args.chain:
        label, _, names = spec.partition("=")
        rows[label] = names.split(",")
        if len(rows[label]) != len(stages):
            raise ConfigError(f"chain {label!r} has {len(rows[label])} points, --stages {len(stages)}")
        missing = [r for r in rows[label] if r not in next(iter(per_task.values()))["models"]]
        if missing:
            raise ConfigError(f"{args.quality} has no rows {missing}; add them with quality.py --add-to")
        chains[label] = [figures(per_task, r) for r in rows[label]]
    targets = {**TARGETS, **{k: ("log", 0.0) for k in next(iter(chains.values()))[0]
                             if k.endswith("_minus_best_classical_db")}}
    fits = {label: {k: extrapolate(pixels, [p[k] for p in pts], tgt, shape)
                    for k, (shape, tgt) in targets.items() if k in pts[0]}
            for label, pts in chains.items()}
    sec_per_px = args.last_stage_seconds / (pixels[-1] - (pixels[-2] if len(pixels) > 1 else 0))
    for per in fits.values():
        for f in per.values():
            at = f["compute_at_target"]
            more = None if at is None else max(at - pixels[-1], 0) * sec_per_px / 3600
            f["more_cpu_hours"] = None if more is None else round(more, 1)
    out = Path(args.out)
    png = out.with_suffix(".png")
    plot(chains, fits, pixels, png)
    result = {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "quality_report": {"path": _shown(Path(args.quality)), "created": report["created"],
                                 "set": args.set},
              "stages": [{"steps": s, "batch": b, "crop": c, "pixels_after": p}
                         for (s, b, c), p in zip(stages, pixels)],
              "cpu_seconds_per_megapixel": round(sec_per_px * 1e6, 4),
              "chains": {label: [{"row": r, **{k: round(v, 4) for k, v in pt.items()}}
                                 for r, pt in zip(rows[label], pts)] for label, pts in chains.items()},
              "fits": fits, "plot": png.name,
              "caveat": "three points per chain, learning-rate schedule restarted per stage, crop grown "
                        "between stages: an order of magnitude of the compute needed, not a promise"}
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    first = next(iter(fits))
    for k, f in fits[first].items():
        head = f"{first} {k}: now {chains[first][-1][k]:.3f}, target {f['target']}"
        if f["met_at_last_point"]:
            print(f"{head}, met")
        elif f.get("factor"):
            print(f"{head}, x{f['factor']:.1f} the pixels so far, +{f['more_cpu_hours']} CPU h")
        else:
            print(f"{head}, the trend does not reach it")
    print(f"wrote {out} and {png.name}")
    return 0


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    from datprl_edge.core.errors import DatprlEdgeError

    try:
        sys.exit(main())
    except DatprlEdgeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
