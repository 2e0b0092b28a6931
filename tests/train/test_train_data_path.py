"""The improved training data path: on-the-fly pairs, random severities, task weights, batches made
by worker processes (the same batches as in the step), the wall-clock budget, and resuming such a
run from its checkpoint to the same weights."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import flat, stop_at, tiny_teacher

from datprl_edge.core.errors import ConfigError
from datprl_edge.data.datasets import SyntheticDataset, train_severity
from datprl_edge.models.registry import create_model
from datprl_edge.train.config import DistillConfig
from datprl_edge.train.curriculum import Curriculum, adaptive_weights, parse_task_weights, step_weights
from datprl_edge.train.data import build_train_data
from datprl_edge.train.distill import distill
from datprl_edge.train.loader import BatchPlan, StepLoader, make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = "synthetic:natural/denoise,natural/sr_x4"
CROP = 24


def cfg(**kw):
    base = dict(steps=4, batch_size=4, crop=CROP, train_pairs=0, severity="random", val_every=0, ckpt_every=2,
                val_count=1, val_size=CROP, progress=False, ema_decay=0.9, lr=1e-3, log_every=1,
                teacher_cache="off")
    return DistillConfig(**{**base, **kw})


def test_random_severity_stays_in_the_task_training_range():
    ds = SyntheticDataset(tasks="natural/denoise,medical/pet_denoise", severities="train", crop=16, length=40)
    for i in range(40):
        item = ds[i]
        lo, hi = train_severity(item["task"])
        assert lo <= item["severity"] <= hi
    assert len({round(ds[i]["severity"], 6) for i in range(0, 40, 2)}) > 5
    a, b = ds.make(1, 7), ds.make(1, 7)  # item i for another task: deterministic
    assert a["task"] == "medical/pet_denoise" and torch.equal(a["lq"], b["lq"])


def test_on_the_fly_batches_are_a_function_of_the_step_and_workers_make_the_same():
    data = build_train_data(TASKS, CROP, 0, seed=3, severity="random")
    assert data.on_the_fly and "on-the-fly" in data.describe() and "severity=random" in data.describe()
    cur = Curriculum("mixed", data.task_of_item, 10, seed=3)
    plan = BatchPlan(data, cur, 4, slice(0, 4), pair_reuse=2)
    a, b = make_batch(data, plan, 5), make_batch(data, plan, 5)
    assert torch.equal(a["lq"], b["lq"]) and not torch.equal(a["lq"], make_batch(data, plan, 6)["lq"])
    assert list(a["items"]) == [20, 20, 21, 21]  # 2 pairs, each in 2 poses
    assert torch.equal(a["gt"][1], torch.rot90(a["gt"][0], 1, dims=(-2, -1)))
    in_step = list(StepLoader(data, plan, 0).iterate(2, 5))
    ahead = list(StepLoader(data, plan, 2).iterate(2, 5))
    assert [x["step"] for x in ahead] == [2, 3, 4]
    for x, y in zip(in_step, ahead):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"])
        assert np.array_equal(x["tasks"], y["tasks"])


def test_task_weights_fixed_adaptive_and_uniform():
    assert parse_task_weights("uniform") == "uniform"
    assert parse_task_weights("natural/sr_x4=3") == {"natural/sr_x4": 3.0}
    with pytest.raises(ConfigError):
        parse_task_weights("natural/sr_x4=-1")
    tasks = ["a", "b"]
    cur = Curriculum("mixed", np.arange(100) % 2, 10, seed=0)
    assert np.array_equal(cur.batch(3, 8), cur.batch(3, 8, None))
    drawn = np.concatenate([cur.tasks(s, 64, np.array([1.0, 4.0])) for s in range(10)])
    assert 0.7 < drawn.mean() < 0.9
    rec = {"tasks": {"a": {"psnr": 30.0, "psnr_input": 25.0}, "b": {"psnr": 24.0, "psnr_input": 25.0}}}
    w = adaptive_weights(rec, tasks)
    assert w[1] > 2 * w[0] and w.min() >= 0.25 and abs(w.sum() - 1) < 1e-9
    assert step_weights("adaptive", tasks, []) is None  # no validation yet: uniform
    with pytest.raises(ConfigError, match="not trained"):
        step_weights("c=2", tasks, [])


def test_on_the_fly_distillation_with_workers_resumes_to_the_same_weights(tmp_path):
    teacher, student = tiny_teacher(), create_model("edge-xs")
    c = cfg(steps=6, workers=1, task_weights="adaptive", val_every=2)
    full = distill(teacher, student, c, TASKS, tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, student, c, TASKS, tmp_path / "cut", step_callback=stop_at(5))
    assert '"step": 4' in (tmp_path / "cut/progress.json").read_text()
    resumed = distill(teacher, create_model("edge-xs"), c, TASKS, tmp_path / "cut", resume=True)
    assert torch.allclose(flat(resumed.raw_model), flat(full.raw_model), atol=1e-5)
    assert torch.allclose(flat(resumed.model), flat(full.model), atol=1e-5)
    val = [json.loads(x) for x in (tmp_path / "cut/val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [2, 4, 6] and all("wall_s" in r for r in val[:2])


def test_teacher_cache_refuses_on_the_fly_pairs():
    with pytest.raises(ConfigError, match="fixed pool"):
        cfg(teacher_cache="on")


class StepClock:
    """The engine's clock, advanced by a fixed time per training step (the step callback), so the
    budget tests do not depend on how fast this machine runs a step."""

    def __init__(self, monkeypatch, per_step: float):
        from types import SimpleNamespace

        from datprl_edge.train import engine

        self.now, self.per_step = 0.0, per_step
        monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: self.now))

    def __call__(self, step):
        self.now += self.per_step


def test_time_budget_fits_the_step_count(tmp_path, monkeypatch):
    clock = StepClock(monkeypatch, per_step=0.125)
    c = cfg(steps=10_000, time_budget=4.0, output_weight=0.0, feature_weight=0.0, routing_weight=0.0)
    res = distill(None, create_model("edge-xs"), c, TASKS, tmp_path / "b", step_callback=clock)
    # fitted at step 12 from the rate since the warm-up (step 3): 12 + (4.0 - 1.5) / 0.125
    assert res.steps == 32
    log = [json.loads(x) for x in (tmp_path / "b/train.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == res.steps and log[-1]["lr"] < 2e-4  # the cosine ran to its end
    saved = json.loads((tmp_path / "b/progress.json").read_text())
    assert saved["step"] == res.steps


def test_training_curves_plot_from_a_fake_log(tmp_path):
    from datprl_edge.train.curves import plot_runs, read_curve

    for name, offset in (("kd", 1.0), ("nokd", 0.5)):
        d = tmp_path / name
        d.mkdir()
        recs = [{"step": s, **({"wall_s": 3.0 * s} if name == "kd" else {}),
                 "mean": {"psnr": 25 + offset * s / 100, "psnr_input": 25.0},
                 "tasks": {"a": {"psnr": 26.0, "psnr_input": 25.0}}} for s in (100, 200, 300)]
        (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (d / "train.jsonl").write_text(json.dumps({"step": 300, "sec_per_step": 2.0}) + "\n")
    assert read_curve(tmp_path / "nokd")["wall_s"] == [200.0, 400.0, 600.0]  # from sec_per_step
    png = plot_runs({"KD": tmp_path / "kd", "no KD": tmp_path / "nokd"}, tmp_path / "c.png", per_task=True)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_resumed_budgeted_run_finishes_its_fitted_steps(tmp_path, monkeypatch):
    from datprl_edge.train import engine

    monkeypatch.setattr(engine._Budget, "WARM", 1)
    monkeypatch.setattr(engine._Budget, "FIRST_FIT", 2)
    c = cfg(steps=10_000, time_budget=3.0, ckpt_every=1, output_weight=0.0, feature_weight=0.0,
            routing_weight=0.0)

    clock, stop = StepClock(monkeypatch, per_step=0.25), stop_at(3)

    def step(done):
        clock(done)
        stop(done)

    with pytest.raises(KeyboardInterrupt):
        distill(None, create_model("edge-xs"), c, TASKS, tmp_path / "r", step_callback=step)
    from datprl_edge.train.checkpointing import saved_config

    fitted = saved_config(tmp_path / "r/state.pt")["steps"]
    assert fitted == 12  # fitted at step 2 from the rate since step 1: 2 + (3.0 - 0.5) / 0.25
    res = distill(None, create_model("edge-xs"), replace(c, time_budget=0.5), TASKS, tmp_path / "r",
                  resume=True, step_callback=clock)
    assert res.steps == fitted  # the step count fitted before the checkpoint; the new budget is ignored


def test_pool_batches_keep_the_plan_order():
    data = build_train_data(TASKS, CROP, 16, seed=0)
    plan = BatchPlan(data, Curriculum("mixed", data.task_of_item, 10), 6, slice(0, 6))
    b = make_batch(data, plan, 1, memo=False)
    lq, gt = data.load(b["items"])
    assert torch.equal(b["lq"], lq) and torch.equal(b["gt"], gt)
