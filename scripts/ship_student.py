"""Ship a trained student as bundled:NAME (default edge-xs): the run's EMA checkpoint with its task
routing table (`fold.routing`, so `restore --task` on the bundled model needs no calibration images),
written to datprl_edge/weights/NAME.safetensors with its MANIFEST entry.

    python scripts/ship_student.py RUN_DIR --command "datprl-edge distill ..." [--name edge-lat]
        [--teacher bundled:teacher-ref-v2] [--hardware TEXT] [--note TEXT]

RUN_DIR is a `distill` run folder (model.safetensors, progress.json, train.jsonl, val.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WEIGHTS = ROOT / "datprl_edge" / "weights"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--command", required=True, help="the exact training command(s), as run")
    ap.add_argument("--teacher", default="bundled:teacher-ref-v2")
    ap.add_argument("--hardware", default="CPU, 1 torch thread, 2-core AMD EPYC VM shared with other jobs")
    ap.add_argument("--note", default="")
    ap.add_argument("--name", default="edge-xs", help="bundled name (a registered student)")
    args = ap.parse_args(argv)

    from datprl_edge.fold.routing import routing_table
    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.io.checkpoint import read_checkpoint, save_checkpoint, sha256_file
    from datprl_edge.sources import resolve_model

    state, cfg = read_checkpoint(args.run / "model.safetensors")
    model = resolve_model(str(args.run / "model.safetensors"))
    table = routing_table(model)
    extra = {**cfg.extra, "routing_table": json.dumps(table, separators=(",", ":"))}
    cfg = dataclasses.replace(cfg, extra=extra)
    name = f"{args.name}.safetensors"
    dest = save_checkpoint(WEIGHTS / name, state, cfg)

    progress = json.loads((args.run / "progress.json").read_text())
    train = [json.loads(line) for line in (args.run / "train.jsonl").read_text().splitlines() if line.strip()]
    val = [json.loads(line) for line in (args.run / "val.jsonl").read_text().splitlines() if line.strip()]
    teacher = resolve_teacher_sha(args.teacher)
    manifest_path = WEIGHTS / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    entry = {
        "arch": cfg.arch, "stage": cfg.stage, "bytes": dest.stat().st_size, "sha256": sha256_file(dest),
        "params": int(sum(v.numel() for v in state.values())), "dtype": "float32", "weights": "EMA",
        "command": args.command, "steps": int(progress["step"]),
        "data": str((cfg.provenance or {}).get("data", "")), "teacher": args.teacher,
        "teacher_sha256": teacher,
        "sec_per_step": round(float(train[-1].get("sec_per_step", 0.0)), 3),
        "train_seconds": round(float(val[-1]["wall_s"])), "hardware": args.hardware,
        "val_mean_at_end": val[-1]["mean"], "val_setting": "training validation (fixed val pairs of the run)",
        "routing_table": "extra.routing_table: each task's pool weights (fold.routing), for restore --task",
    }
    if args.note:
        entry["note"] = args.note
    manifest["files"][name] = entry
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    print(f"shipped {dest} ({entry['steps']} steps, sha256 {entry['sha256'][:12]})")
    return 0


def resolve_teacher_sha(name: str) -> str:
    from datprl_edge.io.checkpoint import sha256_file

    if name.startswith("bundled:"):
        return sha256_file(WEIGHTS / f"{name.split(':', 1)[1]}.safetensors")
    return sha256_file(name)


if __name__ == "__main__":
    raise SystemExit(main())
