"""scripts/gpu_train.sh (the prepared GPU run) for 2 steps per phase on CPU, so it cannot rot."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from datprl_edge.io.checkpoint import read_checkpoint_config
from datprl_edge.models.loading import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_runs_two_steps_per_phase_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    argv = ["bash", "scripts/gpu_train.sh", "--device", "cpu", "--max-steps", "2", "--batch", "2",
            "--crop", "32", "--workers", "2", "--val-every", "1", "--val-count", "1", "--val-size", "32",
            "--warmup", "1", "--teacher-budget", "60", "--student-budget", "60"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert {"teacher-ref.safetensors", "edge-xs.safetensors", "summary.json", "log.txt"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optional_modules_imported"] == []
    for phase in ("teacher", "student"):
        ph = summary["phases"][phase]
        assert ph["steps"] == 2 and len(ph["metrics"]["tasks"]) == 9 and ph["crops_per_s"] > 0
    assert summary["phases"]["student"]["config"]["pair_reuse"] == 2
    student = load_model(str(out / "edge-xs.safetensors"))
    assert student.datprl_config["arch"] == "EdgeDATPRL"
    assert "student:" in (out / "log.txt").read_text()


def test_gpu_script_distils_another_student(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    argv = ["bash", "scripts/gpu_train.sh", "--device", "cpu", "--max-steps", "2", "--batch", "2",
            "--crop", "32", "--workers", "2", "--val-every", "1", "--val-count", "1", "--val-size", "32",
            "--warmup", "1", "--student-budget", "60", "--skip-teacher", "--student", "edge-lat", "--scratch"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["phases"]) == ["student"] and summary["phases"]["student"]["steps"] == 2
    student = load_model(str(out / "edge-lat.safetensors"))
    assert student.datprl_config["options"]["stem"] == 2 and student.pad_multiple == 16
    provenance = read_checkpoint_config(out / "edge-lat.safetensors").provenance
    assert provenance["init"] == "scratch" and provenance["teacher"] == "bundled:teacher-ref-v2"
