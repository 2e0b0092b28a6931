"""benchmarks/quality.py's INT8 target: each `*-int8` variant's drop against the student per task, with
the paired standard error over the same images, computed from the per-image PSNRs in the report."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
quality = pytest.importorskip("quality")


def _row(per_image):
    return {"spec": "x", "psnr": float(np.mean(per_image)), "gain_db": 1.0, "per_image_psnr": per_image}


def _per_task():
    return {
        "a": {"best_classical": None, "models": {
            "student": _row([30.0, 31.0, 32.0, 33.0]), "variant:q-int8": _row([29.9, 31.0, 31.9, 33.0]),
            "variant:other": _row([10.0, 10.0, 10.0, 10.0])}},
        "b": {"best_classical": None, "models": {
            "student": _row([20.0, 20.0, 20.0, 20.0]), "variant:q-int8": _row([19.5, 20.1, 19.9, 19.7]),
            "variant:other": _row([10.0, 10.0, 10.0, 10.0])}},
    }


def test_int8_drop_per_task_with_paired_standard_error():
    drops = quality.int8_drops(_per_task())
    assert list(drops) == ["variant:q-int8"]  # only variants named *-int8
    d = drops["variant:q-int8"]
    assert d["tasks"]["a"]["drop_db"] == pytest.approx(0.05)
    diff_b = np.array([0.5, -0.1, 0.1, 0.3])
    assert d["tasks"]["b"]["drop_db"] == pytest.approx(diff_b.mean())
    assert d["tasks"]["b"]["se_db"] == pytest.approx(diff_b.std(ddof=1) / 2, abs=1e-4)
    assert d["tasks"]["b"]["worst_image_drop_db"] == pytest.approx(0.5)
    assert d["worst_task"] == "b" and d["worst_drop_db"] == pytest.approx(0.2)


def test_int8_target_names_the_variants_over_it():
    per_task = _per_task()
    tgt = quality.targets(per_task, has_nokd=False)["int8_within_0.1_db"]
    assert not tgt["met"] and tgt["over"] == ["variant:q-int8"]
    per_task["b"]["models"]["variant:q-int8"] = _row([20.0, 19.95, 20.0, 20.0])
    assert quality.targets(per_task, has_nokd=False)["int8_within_0.1_db"]["met"]
