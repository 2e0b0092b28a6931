"""Classical baselines on tiny images, the shifted evaluation settings, harm counting and the
report's below-input flag and harm thumbnails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as psnr

from datprl_edge.core.errors import ChannelCountError, ConfigError, NonFiniteInputError, UnknownChoiceError
from datprl_edge.data.tasks import TASK_SETS, TASKS, Task
from datprl_edge.evaluate import baselines as B
from datprl_edge.evaluate.driver import EvalSet
from datprl_edge.evaluate.harm import add_harm, harm_stats, worst_window


def _smooth(size=32, seed=0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(0.3, 1.2, (3, 2))
    img = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (xx * a + yy * b)) for a, b in freqs], axis=2)
    return img.astype(np.float32)


def _noisy(img, sigma=0.1, seed=1):
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", sorted(B.METHODS))
def test_every_method_shape_range_dtype(name):
    if name == "bm3d":
        pytest.importorskip("bm3d")
    lq = _noisy(_smooth())
    out = B.run_baseline(name, lq)
    assert out.shape == lq.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    grey = np.repeat(lq[..., :1], 3, axis=2)
    g = B.run_baseline(name, grey)
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 0], g[..., 2])


@pytest.mark.parametrize("name", ["nlm", "wavelet", "tv", "bm3d"])
def test_denoisers_improve_psnr(name):
    if name == "bm3d":
        pytest.importorskip("bm3d")
    gt = _smooth(48)
    lq = _noisy(gt, 0.1)
    assert psnr(gt, B.run_baseline(name, lq), data_range=1) > psnr(gt, lq, data_range=1) + 2.0


def test_median_removes_sparse_streaks_and_dcp_dehazes():
    gt = _smooth(48)
    lq = gt.copy()
    lq[::7, :, :] = 1.0  # thin bright horizontal lines, one pixel wide
    assert psnr(gt, B.run_baseline("median", lq), data_range=1) > psnr(gt, lq, data_range=1) + 3.0
    hazy = (gt * 0.4 + 0.9 * 0.6).astype(np.float32)  # uniform transmission 0.4, airlight 0.9
    assert psnr(gt, B.run_baseline("dcp", hazy), data_range=1) > psnr(gt, hazy, data_range=1)


def test_registry_and_bad_inputs():
    for task in TASK_SETS["9task"]:
        assert B.methods_for(task), task
    assert all(n in B.METHODS for names in B.BASELINES.values() for n in names)
    assert set(B.BASELINES) <= set(TASKS)
    assert "bm3d" in B.methods_for("medical/ct_denoise") and "lanczos" in B.methods_for("remote/sr_x4")
    with pytest.raises(ChannelCountError):
        B.run_baseline("tv", np.zeros((32, 32), np.float32))
    with pytest.raises(ChannelCountError):
        B.run_baseline("tv", np.zeros((4, 4, 3), np.float32))
    bad = np.zeros((16, 16, 3), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError):
        B.run_baseline("nlm", bad)
    with pytest.raises(UnknownChoiceError, match="did you mean 'wavelet'"):
        B.run_baseline("wavelt", bad)


def test_select_best_uses_the_train_split():
    sel = B.select_best("remote/dehaze", count=1, size=48)
    assert sel["split"] == "train" and sel["best"] == "dcp" and set(sel["psnr"]) == {"dcp"}
    assert B.select_best("natural/lowlight", count=1, size=32, methods=[])["best"] is None
    with pytest.raises(ConfigError):
        B.select_best("remote/dehaze", count=0)


def test_shifted_severities_lie_outside_train_ranges():
    for t in TASKS.values():
        lo, hi = t.train_severity
        assert 0.0 <= lo <= t.default_severity <= hi <= 1.0
        assert not lo <= t.shifted_severity <= hi, t.id
        if not t.stochastic:  # the SR tasks: a narrow range, still an x4 task
            assert hi - lo <= 0.1
        shifted = t.shifted_task()
        assert shifted.id == t.id and shifted.default_severity == t.shifted_severity
    rng = np.random.default_rng(0)
    ct = TASKS["medical/ct_denoise"]
    lo, hi = ct.train_severity
    assert all(lo <= ct.sample_train_severity(rng) <= hi for _ in range(20))
    with pytest.raises(ConfigError, match="inside train_severity"):
        Task("x/y", "x", "d", 0.5, lambda im, s, seed: im, shifted_severity=0.55)


@pytest.mark.parametrize("task_id", ["natural/sr_x4", "medical/mri_sr"])
def test_shifted_models_differ_from_training(task_id):
    t = TASKS[task_id]
    gt = t.prepare_gt(_smooth(64))
    a, b = t.degrade(gt, seed=0), t.shifted_task().degrade(gt, seed=0)
    assert b.shape == gt.shape and b.dtype == np.float32 and not np.allclose(a, b, atol=1e-3)
    assert np.array_equal(b, t.shifted_task().degrade(gt, seed=0))


def test_harm_count_logic():
    h = harm_stats([30.0, 25.0, 31.0], [28.0, 26.0, 31.0], ["a", "b", "c"])
    assert h == {"harm": 1, "worst": 1, "worst_name": "b", "worst_gain_db": -1.0}
    assert harm_stats([float("inf")], [float("inf")])["harm"] == 0
    with pytest.raises(ConfigError):
        harm_stats([1.0, 2.0], [1.0])
    sets = [EvalSet("t", False, [("a", None, None), ("b", None, None)])]
    base = {"t": {"psnr": 20.0, "per_image_psnr": [20.0, 20.0]}}
    per = {"t": {"psnr": 19.5, "per_image_psnr": [21.0, 18.0], "images": 2}}
    add_harm(per, base, sets)
    assert per["t"]["harm"] == 1 and per["t"]["below_input"] and per["t"]["worst_image"] == "b"
    assert per["t"]["gain_db"] == -0.5


def test_worst_window_finds_the_added_error():
    gt = np.zeros((64, 64, 3), np.float32)
    out = gt.copy()
    out[40:50, 10:20] = 1.0
    top, left, side = worst_window(gt, gt, out, size=16)
    assert side == 16 and top <= 40 and top + 16 >= 50 and left <= 10 and left + 16 >= 20


def test_report_flags_a_task_below_the_input(tmp_path):
    from PIL import Image

    from datprl_edge.report import build_report

    run = tmp_path / "run"
    (run / "eval" / "harm" / "s").mkdir(parents=True)
    files = {}
    for label in ("ground truth", "input", "model"):
        name = f"harm/s/t_{label.replace(' ', '_')}.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run / "eval" / name)
        files[label] = name
    tasks = ["natural/derain", "medical/ct_denoise"]
    good = {"psnr": 30.0, "ssim": 0.9, "images": 2, "harm": 0, "below_input": False}
    bad = {"psnr": 27.0, "ssim": 0.8, "images": 2, "harm": 2, "below_input": True, "worst_image": "x#1",
           "worst_gain_db": -1.5, "harm_visual": {"image": "x#1", "crop": [0, 0, 8], "files": files}}
    report = {"schema": "datprl-edge-eval/1", "created": "2026", "tasks": tasks,
              "data": {"source": "val", "count_per_task": 2, "size": 64, "seed": 0},
              "metrics": {"psnr": "skimage psnr"},
              "input": {"per_task": {t: {"psnr": 28.0, "ssim": 0.85, "images": 2} for t in tasks},
                        "mean": {"psnr": 28.0}},
              "reference": None,
              "models": [{"model": "s.safetensors", "kind": "torch", "folded_tasks": None,
                          "per_task": {tasks[0]: good, tasks[1]: bad}, "mean": {"psnr": 28.5}}]}
    (run / "eval" / "eval.json").write_text(json.dumps(report))
    res = build_report(run, tmp_path / "r.html")
    html, md = Path(res.html).read_text(), Path(res.markdown).read_text()
    assert html.count('class="num bad"') == 1 and "27.00 (harm 2/2)" in html
    assert "Below the input: s.safetensors (torch) on medical/ct_denoise" in html
    assert "Harm: images worse than the input" in html and html.count('<figure><img alt="') == 3
    assert "**below input**" in md


def test_eval_baseline_rows_and_harm_crops(tmp_path):
    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.evaluate.driver import score
    from datprl_edge.evaluate.harm import score_baselines, write_harm_crops

    pairs = fixed_pairs("remote/dehaze", 2, 32)
    sets = [EvalSet("remote/dehaze", False, [(f"{p.source}#{k}", p.gt, p.lq) for k, p in enumerate(pairs)])]
    base = score(None, sets)
    rows = score_baselines(sets, base, select_count=1, select_size=32)["per_task"]["remote/dehaze"]
    assert rows["best"] == "dcp" and rows["selection"]["split"] == "train"
    assert rows["methods"]["dcp"]["images"] == 2 and "uses" in rows["methods"]["dcp"]
    def invert(x):
        return 1.0 - x

    bad = score(invert, sets)
    add_harm(bad, base, sets)
    write_harm_crops(tmp_path / "harm", "m", invert, sets, bad)
    vis = bad["remote/dehaze"]["harm_visual"]
    assert bad["remote/dehaze"]["harm"] >= 1 and vis["crop"][2] == 32
    assert all((tmp_path / f).is_file() for f in vis["files"].values())


def test_quality_targets_logic():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality", path)
    q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(q)

    def task(student, teacher, best, gain):
        return {"best_classical": "tv" if best else None, "best_classical_psnr": best,
                "models": {"student": {"psnr": student, "gain_db": gain}, "teacher": {"psnr": teacher}}}

    per_task = {"natural/sr_x4": task(27.0, 27.2, 26.5, 0.9),
                "medical/ct_denoise": task(33.0, 33.1, 34.0, 2.5),
                "remote/dehaze": task(14.0, 14.0, None, -0.1)}
    t = q.targets(per_task, has_nokd=False)
    assert t["above_input_all_tasks"] == {"met": False, "below_input": ["remote/dehaze"]}
    assert t["beats_best_classical"] == {"met": False, "not_beaten": ["medical/ct_denoise"]}
    assert t["mean_gain_ge_1.5_db"]["met"] is False and t["ct_ge_2_db"]["met"] is True
    assert t["sr_ge_0.8_db_over_bicubic"]["met"] is True and t["within_0.5_db_of_teacher"]["met"] is True
    assert "ge_0.2_db_over_nokd" not in t


def test_quality_add_to_reproduces_rows(tmp_path):
    """Rows added to an earlier report are scored on the same re-made sets: the bundled student added as
    a variant gets exactly the student's row."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_add", path)
    q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(q)
    out = tmp_path / "q.json"
    small = ["--tasks", "natural/derain", "--count", "2", "--size", "48", "--no-shifted",
             "--select-count", "1", "--select-size", "32", "--teacher", "bundled:edge-xs"]
    assert q.main([*small, "-o", str(out)]) == 0
    student = Path(__file__).resolve().parents[2] / "datprl_edge" / "weights" / "edge-xs.safetensors"
    assert q.main(["--add-to", str(out), "--variant", f"nokd={student}"]) == 0
    rep = json.loads(out.read_text())
    row = rep["sets"]["val"]["natural/derain"]["models"]
    assert row["variant:nokd"]["per_image_psnr"] == row["student"]["per_image_psnr"]
    assert rep["targets"]["val"]["ge_0.2_db_over_nokd"] == {"met": False, "student_minus_nokd_db": 0.0}
    assert len(rep["added"]) == 1
    from datprl_edge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="give at least one"):
        q.main(["--add-to", str(out)])
