"""One GPU call: train the teacher, then distil edge-xs from it, each phase on a wall-clock budget.

Run by `scripts/gpu_train.sh` (see README, "GPU run"): on the lent device
    bash scripts/gpu_train.sh                       # ~8 min: teacher 200 s, student 230 s, into $OUT
and on CPU for 2 steps (tests/test_gpu_script.py)
    bash scripts/gpu_train.sh --device cpu --max-steps 2 --batch 4 --crop 32 --workers 2 ...

Both phases start from the shipped weights (`bundled:teacher-ref-v2`, `bundled:edge-xs`; `--scratch`
for random initialisation), use on-the-fly pairs at random severities made by worker processes,
adaptive task weights, warm-up + cosine + EMA, bf16 autocast and channels_last on CUDA. Writes to
OUT (at most 8 files, flat): teacher-ref.safetensors, edge-xs.safetensors, {teacher,student}-train.jsonl,
{teacher,student}-val.jsonl, summary.json (per-task validation, timings, MANIFEST-ready provenance);
scripts/gpu_train.sh adds log.txt. Resumable state (state.pt) stays in --work.

Imports only torch, numpy, scikit-image, scipy, safetensors, tqdm (no torchao, onnx or openvino).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

# The best shipped teacher: both phases continue from it (see datprl_edge/weights/MANIFEST.json).
TEACHER = "bundled:teacher-ref-v2"

ABSENT_ON_DEVICE = {"torchao", "openvino", "nncf", "coremltools", "pydicom"}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m datprl_edge.train.gpu_run",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for weights, logs and summary.json")
    p.add_argument("--work", type=Path, default=None,
                   help="run folders with state.pt (default OUT/../gpu-work)")
    p.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    p.add_argument("--teacher-budget", type=float, default=200.0, metavar="SEC")
    p.add_argument("--student-budget", type=float, default=230.0, metavar="SEC")
    p.add_argument("--max-steps", type=int, default=100_000, help="upper bound on the steps of each phase")
    p.add_argument("--batch", type=int, default=32, help="teacher batch (the student uses 2x)")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--workers", type=int, default=14, help="pair-making processes")
    p.add_argument("--teacher-lr", type=float, default=5e-4)
    p.add_argument("--student-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--val-every", type=int, default=400)
    p.add_argument("--val-count", type=int, default=8)
    p.add_argument("--val-size", type=int, default=96)
    p.add_argument("--pair-reuse", type=int, default=2, help="student phase: batch slots per made pair")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--scratch", action="store_true",
                   help="random initial weights instead of the shipped ones")
    p.add_argument("--skip-teacher", action="store_true", help=f"distil from {TEACHER} directly")
    p.add_argument("--teacher", default=TEACHER, help=f"teacher weights (default {TEACHER})")
    p.add_argument("--student", default="edge-xs",
                   help="student to distil: a bundled name continues from its weights, any other "
                        "registered model starts from random weights (default edge-xs)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from datprl_edge.models.loading import bundled_exists, load_model
    from datprl_edge.models.registry import create_model
    from datprl_edge.train.config import DistillConfig, TrainConfig
    from datprl_edge.train.distill import distill
    from datprl_edge.train.teacher import train_teacher

    args = parse(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or out.parent / "gpu-work"
    for d in ("teacher", "student"):
        if (work / d).exists():
            shutil.rmtree(work / d)
    if torch.cuda.is_available() and args.device != "cpu":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    command = "bash scripts/gpu_train.sh " + " ".join(sys.argv[1:] if argv is None else argv)
    common = dict(crop=args.crop, train_pairs=0, severity="random", task_weights="adaptive",
                  workers=args.workers, warmup_steps=args.warmup, ema_decay=0.999, seed=args.seed,
                  val_every=args.val_every, ckpt_every=args.val_every, val_count=args.val_count,
                  val_size=args.val_size, log_every=10, device=args.device, channels_last=None, amp="auto",
                  compile=args.compile, progress=False, steps=args.max_steps, min_lr=1e-6)
    env = _environment(torch)
    print(json.dumps({"environment": env}), flush=True)
    summary = {"command": command, "environment": env, "phases": {}}

    if args.skip_teacher:
        teacher, teacher_src = load_model(args.teacher), args.teacher
    else:
        torch.manual_seed(args.seed)
        init = create_model("restormer-ref") if args.scratch else load_model(args.teacher)
        tcfg = TrainConfig(**common, batch_size=args.batch, lr=args.teacher_lr,
                           time_budget=args.teacher_budget)
        res = train_teacher(init, tcfg, args.data, work / "teacher",
                            provenance={"command": command, "init": "scratch" if args.scratch
                                        else args.teacher})
        summary["phases"]["teacher"] = _phase(res, tcfg, work / "teacher", out, "teacher", "teacher-ref")
        teacher, teacher_src = res.model, "teacher phase of this run"
        _write(out, summary)

    torch.manual_seed(args.seed)
    from_bundle = not args.scratch and bundled_exists(args.student)
    student = load_model(f"bundled:{args.student}") if from_bundle else create_model(args.student)
    scfg = DistillConfig(**common, batch_size=2 * args.batch, lr=args.student_lr, pair_reuse=args.pair_reuse,
                         time_budget=args.student_budget, teacher_cache="off")
    res = distill(teacher, student, scfg, args.data, work / "student",
                  provenance={"command": command, "teacher": teacher_src,
                              "init": f"bundled:{args.student}" if from_bundle else "scratch"})
    summary["phases"]["student"] = _phase(res, scfg, work / "student", out, "student", args.student)
    # the device has none of these: the training path must not need them
    summary["optional_modules_imported"] = sorted({m.split(".")[0] for m in sys.modules} & ABSENT_ON_DEVICE)
    _write(out, summary)
    for name, ph in summary["phases"].items():
        for task, t in ph["metrics"]["tasks"].items():
            print(f"  {name:8s} {task:26s} {t['psnr']:6.2f} dB (input {t['psnr_input']:6.2f})")
        m = ph["metrics"]["mean"]
        print(f"{name}: {ph['steps']} steps in {ph['train_seconds']:.0f} s "
              f"({ph['crops_per_s']:.0f} crops/s), val PSNR {m['psnr']:.2f} dB "
              f"(input {m['psnr_input']:.2f})", flush=True)
    return 0


def _phase(res, cfg, run_dir: Path, out: Path, prefix: str, weights_name: str) -> dict:
    from datprl_edge.io.checkpoint import sha256_file

    dst = out / f"{weights_name}.safetensors"
    shutil.copyfile(res.checkpoint, dst)
    for log in ("train", "val"):
        src = run_dir / f"{log}.jsonl"
        if src.exists():
            shutil.copyfile(src, out / f"{prefix}-{log}.jsonl")
    return {"weights": dst.name, "sha256": sha256_file(dst), "bytes": dst.stat().st_size,
            "steps": res.steps, "train_seconds": round(res.seconds, 1),
            "sec_per_step": round(res.sec_per_step, 4),
            "crops_per_s": round(cfg.batch_size / res.sec_per_step, 1) if res.sec_per_step else 0.0,
            "config": {**cfg.to_dict(), "steps": res.steps}, "metrics": res.metrics}


def _environment(torch) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _write(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    from datprl_edge.core.errors import DatprlEdgeError

    try:
        raise SystemExit(main())
    except DatprlEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
