"""Training throughput (crops/s) of `train-teacher` and `distill` on this machine.

Runs each command for a few steps in a fresh process, reads `sec_per_step` of the last record of
RUN/train.jsonl (the optimizer steps only: start-up, the teacher cache fill and the final
validation are excluded; the pair generation that happens inside the steps is included), and merges
the result under `--label` into benchmarks/results/train_throughput.json with the CPU's ISA flags
and the load average.

    .venv/bin/python benchmarks/train_throughput.py --label before --threads 1 2
    .venv/bin/python benchmarks/train_throughput.py --label after --threads 1 2 --extra "--workers 1"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "train_throughput.json"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")

JOBS = {
    "teacher": ["train-teacher", "--model", "restormer-ref", "--data", "synthetic", "--batch", "8",
                "--crop", "48", "--pairs", "4096", "--lr", "1e-3", "--warmup", "50"],
    "distill": ["distill", "--teacher", "bundled:teacher-ref", "--student", "edge-xs", "--data", "synthetic",
                "--batch", "8", "--crop", "64", "--pairs", "4096", "--lr", "1e-3", "--warmup", "50",
                "--teacher-cache", "off"],
}


def isa_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    model = ""
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    return {"cpu": model, "cores": os.cpu_count(), **{f: f in flags for f in ISA_FLAGS}}


def run_one(job: str, threads: int, steps: int, extra: list, workdir: Path) -> dict:
    run_dir = workdir / f"{job}-t{threads}"
    argv = [*JOBS[job], "--steps", str(steps), "--threads", str(threads), "--val-every", "0",
            "--ckpt-every", "0", "--log-every", str(steps), "--no-progress", *extra, "-o", str(run_dir)]
    cmd = [sys.executable, "-m", "datprl_edge", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{job} failed:\n{proc.stderr[-2000:]}")
    rec = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines() if x.strip()][-1]
    batch = int(argv[argv.index("--batch") + 1])
    crop = int(argv[argv.index("--crop") + 1])
    return {"job": job, "threads": threads, "steps": steps, "batch": batch, "crop": crop,
            "sec_per_step": rec["sec_per_step"], "crops_per_s": round(batch / rec["sec_per_step"], 3),
            "wall_s": round(wall, 1), "command": "datprl-edge " + shlex.join(argv)}


def components(reps: int = 6) -> dict:
    """Seconds per batch of 8 (threads 1, medians, interleaved): making the pairs, the teacher's
    forward, and the training step of student and teacher, contiguous vs channels_last."""
    import statistics

    import torch

    from datprl_edge.sources import resolve_model
    from datprl_edge.train.curriculum import Curriculum
    from datprl_edge.train.data import build_train_data
    from datprl_edge.train.loader import BatchPlan, make_batch
    from datprl_edge.train.losses import restoration_loss

    torch.set_num_threads(1)
    data = build_train_data("synthetic", 64, 0, severity="random")
    plan = BatchPlan(data, Curriculum("mixed", data.task_of_item, 10 ** 6), 8, slice(0, 8))
    teacher, student = resolve_model("bundled:teacher-ref"), resolve_model("bundled:edge-xs")
    times: dict = {}

    def clock(name, fn):
        t = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - t)

    def train_step(model, x, fmt, bf16=False):
        model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = restoration_loss(model(x), x)
        loss.backward()
        model.zero_grad(set_to_none=True)

    b = make_batch(data, plan, 0)
    x48 = b["lq"][:, :, :48, :48].contiguous()
    for r in range(reps):
        clock("make_pairs_b8_crop64", lambda r=r: make_batch(data, plan, r + 1))
        with torch.no_grad():
            clock("teacher_forward_b8_crop64", lambda: teacher.forward_with_aux(b["lq"]))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                clock("teacher_forward_b8_crop64_bf16_autocast", lambda: teacher.forward_with_aux(b["lq"]))
        for fmt, tag in ((torch.contiguous_format, "contiguous"), (torch.channels_last, "channels_last")):
            clock(f"student_step_b8_crop64_{tag}", lambda fmt=fmt: train_step(student, b["lq"], fmt))
            clock(f"teacher_step_b8_crop48_{tag}", lambda fmt=fmt: train_step(teacher, x48, fmt))
        clock("student_step_b8_crop64_bf16_autocast",
              lambda: train_step(student, b["lq"], torch.contiguous_format, True))
        clock("teacher_step_b8_crop48_bf16_autocast",
              lambda: train_step(teacher, x48, torch.contiguous_format, True))
    return {k: round(statistics.median(v[1:]), 4) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="key in the results file (before, after, ...)")
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--extra", default="", help="extra options for every command (one string)")
    p.add_argument("--note", default="")
    p.add_argument("--output", type=Path, default=RESULT)
    p.add_argument("--components", action="store_true",
                   help="instead: time the parts of a step in-process (pairs, teacher, train step layouts)")
    args = p.parse_args(argv)
    if args.components:
        sys.path.insert(0, str(ROOT))
        load = os.getloadavg()
        row = {"seconds_per_batch": components(), "load_average_start": load,
               "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(row, indent=2))
        data = json.loads(args.output.read_text()) if args.output.exists() else {}
        data[args.label] = row
        args.output.write_text(json.dumps(data, indent=2) + "\n")
        return 0
    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for job in args.jobs:
            for t in args.threads:
                row = run_one(job, t, args.steps, shlex.split(args.extra), Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    data = json.loads(args.output.read_text()) if args.output.exists() else {}
    data["machine"] = isa_flags()
    data[args.label] = {"rows": rows, "note": args.note, "load_average_start": load_start,
                        "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
