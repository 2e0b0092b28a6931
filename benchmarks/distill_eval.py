"""Does distillation help? Per-task PSNR/SSIM of the teacher, the distilled student and the same
student trained for the same steps on the same data without distillation.

    python benchmarks/distill_eval.py [--teacher bundled:teacher-ref] [--student bundled:edge-xs]
        [--baseline benchmarks/results/edge-xs-nokd.safetensors] [--count 16] [--size 128]
        [--variant LABEL=CKPT ...] [-o benchmarks/results/distill_eval.json]

Validation pairs: `validation_set(task, count, size, seed)` from the bundled 'val' images (never
used for training). Metrics: `train.evaluate` (`core.metrics`, the convention `datprl-edge eval` uses)
per image, averaged per task; the summary averages the per-task means. `--variant` adds other KD
students (tried settings) to the JSON under "variants". Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = ROOT / "benchmarks" / "results" / "edge-xs-nokd.safetensors"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "distill_eval.json"


def _describe(spec, model) -> dict:
    from datprl_edge.io.checkpoint import sha256_file
    from datprl_edge.models.loading import BUNDLED_PREFIX, bundled_path

    path = bundled_path(spec[len(BUNDLED_PREFIX):]) if spec.startswith(BUNDLED_PREFIX) else Path(spec)
    cfg = getattr(model, "datprl_checkpoint", None)
    return {"spec": spec, "sha256": sha256_file(path), "arch": cfg.arch if cfg else None,
            "stage": cfg.stage if cfg else None, "params": sum(p.numel() for p in model.parameters()),
            "command": (cfg.provenance or {}).get("command") if cfg else None,
            "steps": (cfg.provenance or {}).get("steps") if cfg else None}


def run(teacher: str, student: str, baseline: str, tasks: str, count: int, size: int, seed: int,
        threads: int | None, variants: dict | None = None) -> dict:
    import torch

    from datprl_edge.core.host import isa_block
    from datprl_edge.core.metrics import METRIC_CONVENTION
    from datprl_edge.data.datasets import validation_set
    from datprl_edge.data.tasks import resolve_tasks
    from datprl_edge.sources import resolve_model
    from datprl_edge.train.evaluate import evaluate

    if threads:
        torch.set_num_threads(threads)
    task_ids = [t.id for t in resolve_tasks(tasks)]
    val = {t: validation_set(t, count=count, size=size, seed=seed).tensors() for t in task_ids}
    models = {"teacher": teacher, "kd_student": student, "nokd_student": baseline, **(variants or {})}
    results, meta = {}, {}
    for role, spec in models.items():
        model = resolve_model(spec)
        t0 = time.perf_counter()
        results[role] = evaluate(model, val)
        meta[role] = {**_describe(spec, model), "eval_seconds": round(time.perf_counter() - t0, 2)}
    mean = {r: results[r]["mean"] for r in results}
    extra = {label: {"model": meta.pop(label), "mean": {k: mean[label][k] for k in ("psnr", "ssim")},
                     "per_task": {t: {k: results[label]["tasks"][t][k] for k in ("psnr", "ssim")}
                                  for t in task_ids},
                     "kd_gain_db": round(mean[label]["psnr"] - mean["nokd_student"]["psnr"], 4)}
             for label in (variants or {})}
    for label in extra:
        results.pop(label)
    return {
        "validation": {"tasks": task_ids, "count_per_task": count, "size": size, "seed": seed,
                       "source": "datprl_edge.data.datasets.validation_set (bundled 'val' images)"},
        "metrics": METRIC_CONVENTION,
        "models": meta,
        "per_task": {t: {"input": {"psnr": results["teacher"]["tasks"][t]["psnr_input"],
                                   "ssim": results["teacher"]["tasks"][t]["ssim_input"]},
                         **{r: {k: results[r]["tasks"][t][k] for k in ("psnr", "ssim")} for r in results}}
                     for t in task_ids},
        "mean": {"input": {"psnr": mean["teacher"]["psnr_input"], "ssim": mean["teacher"]["ssim_input"]},
                 **{r: {k: mean[r][k] for k in ("psnr", "ssim")} for r in results}},
        "kd_gain_db": round(mean["kd_student"]["psnr"] - mean["nokd_student"]["psnr"], 4),
        "teacher_gap_db": round(mean["teacher"]["psnr"] - mean["kd_student"]["psnr"], 4),
        "goals": {"kd_gain_db_at_least": 0.2, "teacher_gap_db_at_most": 0.5},
        "variants": extra,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), **isa_block()},
    }


def format_table(report: dict) -> str:
    roles = ("input", "teacher", "kd_student", "nokd_student")
    head = f"{'task':24s}" + "".join(f"{r:>22s}" for r in roles)
    lines = [head, f"{'':24s}" + "".join(f"{'PSNR / SSIM':>22s}" for _ in roles)]
    rows = list(report["per_task"].items()) + [("mean", report["mean"])]
    for task, vals in rows:
        cells = (f"{vals[r]['psnr']:>13.2f} / {vals[r]['ssim']:.4f}" for r in roles)
        lines.append(f"{task:24s}" + "".join(cells))
    lines.append(f"KD gain over no-KD: {report['kd_gain_db']:+.2f} dB (goal >= +0.2); "
                 f"teacher - KD student: {report['teacher_gap_db']:.2f} dB (goal <= 0.5)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="bundled:teacher-ref")
    p.add_argument("--student", default="bundled:edge-xs")
    p.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="the no-KD student checkpoint")
    p.add_argument("--tasks", default="9task")
    p.add_argument("--count", type=int, default=16, help="validation pairs per task")
    p.add_argument("--size", type=int, default=128, help="validation crop size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=CKPT",
                   help="another KD student to evaluate alongside (repeatable)")
    p.add_argument("-o", "--output", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from datprl_edge.io.atomic import write_text_atomic

    variants = dict(v.split("=", 1) for v in args.variant)
    report = run(args.teacher, args.student, args.baseline, args.tasks, args.count, args.size, args.seed,
                 args.threads, variants)
    write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    for label, v in report["variants"].items():
        print(f"variant {label}: mean {v['mean']['psnr']:.2f} dB / {v['mean']['ssim']:.4f}, "
              f"KD gain {v['kd_gain_db']:+.2f} dB")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
