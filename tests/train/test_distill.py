"""A few real distillation steps on CPU: losses go down, inputs stay untouched, the teacher cache
matches the live teacher, and an interrupted run resumes to the same weights."""

import json

import numpy as np
import pytest
import torch
from conftest import flat, stop_at, tiny_teacher

from datprl_edge.core.errors import CheckpointError, ConfigError, OutputExistsError
from datprl_edge.models.loading import load_model
from datprl_edge.models.registry import create_model
from datprl_edge.train.config import DistillConfig
from datprl_edge.train.data import TrainData
from datprl_edge.train.distill import distill
from datprl_edge.train.distributed import setup
from datprl_edge.train.teacher_cache import TeacherCache

TASKS = ["natural/denoise", "natural/sr_x4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CROP = 32


def make_data(n=16):
    rng = np.random.default_rng(0)
    gt = rng.random((n + 4, CROP, CROP, 3)).astype(np.float32)
    gt = (gt + np.roll(gt, 1, axis=1) + np.roll(gt, 1, axis=2)) / 3  # some spatial correlation
    noisy = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
    blurry = ((gt + np.roll(gt, 2, axis=1)) / 2).astype(np.float32)
    lq = np.where((np.arange(n + 4) % 2 == 0)[:, None, None, None], noisy, blurry)
    val = {t: (lq[n + k::2][:2], gt[n + k::2][:2]) for k, t in enumerate(TASKS)}
    return TrainData.from_arrays(TASKS, np.arange(n) % 2, lq[:n], gt[:n], val, description="test-arrays")


def cfg(**kw):
    base = dict(steps=4, batch_size=4, crop=CROP, train_pairs=16, val_every=0, ckpt_every=2, val_count=2,
                val_size=CROP, progress=False, ema_decay=0.9, lr=1e-3, log_every=1)
    return DistillConfig(**{**base, **kw})


def test_distill_few_steps_trains_a_new_student_and_saves_it(tmp_path):
    teacher, student = tiny_teacher(), create_model("edge-xs")
    t0, s0 = flat(teacher).clone(), flat(student).clone()
    res = distill(teacher, student, cfg(steps=6), make_data(), tmp_path / "run")
    assert torch.equal(flat(teacher), t0) and torch.equal(flat(student), s0)  # inputs untouched
    assert res.model is not student and not torch.equal(flat(res.model), s0)
    logs = [json.loads(line) for line in (tmp_path / "run/train.jsonl").read_text().splitlines()]
    assert {"gt", "kd_out", "kd_feat", "kd_route"} <= set(logs[0])
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert set(res.metrics["tasks"]) == set(TASKS)
    loaded = load_model(tmp_path / "run/model.safetensors")
    assert loaded.datprl_checkpoint.stage == "distilled"
    x = torch.rand(1, 3, CROP, CROP)
    assert torch.allclose(loaded(x), res.model(x), atol=1e-6)


def test_no_kd_baseline_needs_no_teacher_and_explicit_prompts_work(tmp_path):
    c = cfg(output_weight=0, feature_weight=0, routing_weight=0, prompt_mode="explicit",
            curriculum="sequential")
    res = distill(None, create_model("edge-xs"), c, make_data(), tmp_path / "run")
    assert load_model(tmp_path / "run/model.safetensors").datprl_checkpoint.stage == "student"
    assert res.metrics["mean"]["psnr"] > 0
    with pytest.raises(ConfigError, match="no teacher"):
        distill(None, create_model("edge-xs"), cfg(), make_data(), tmp_path / "other")


def test_teacher_cache_matches_live_teacher_and_is_reused(tmp_path):
    teacher, data = tiny_teacher().eval(), make_data()
    env = setup("cpu")
    calls, real = [], teacher.forward_with_aux

    def counting(x):
        calls.append(x.shape[0])
        return real(x)

    teacher.forward_with_aux = counting
    cache = TeacherCache.prepare(tmp_path / "c", teacher, data, ["dec2", "latent"], env, batch=4)
    n_build = sum(calls)
    items = np.array([3, 0, 7])
    got = cache.lookup(items, "cpu")
    lq, _ = data.load(items)
    with torch.no_grad():
        out, aux = teacher.forward_with_aux(lq)
    assert torch.allclose(got["output"], out, atol=2e-3)
    assert torch.allclose(got["routing"]["domain"], aux["routing"]["domain"].logits, atol=1e-5)
    assert torch.allclose(got["features"]["dec2"], aux["features"]["dec2"], atol=2e-2, rtol=2e-3)
    calls.clear()
    TeacherCache.prepare(tmp_path / "c", teacher, data, ["dec2", "latent"], env)  # fresh: no teacher runs
    assert calls == [] and n_build > 0
    with torch.no_grad():
        teacher.output.weight.add_(0.01)  # other teacher weights -> stale cache is rebuilt
    TeacherCache.prepare(tmp_path / "c", teacher, data, ["dec2", "latent"], env)
    assert sum(calls) == n_build == len(data) + 1  # one probe for the layout, then every pair once


def test_cached_and_live_teacher_train_alike(tmp_path):
    teacher, data, student = tiny_teacher(), make_data(), create_model("edge-xs")
    a = distill(teacher, student, cfg(teacher_cache="on"), data, tmp_path / "a")
    b = distill(teacher, student, cfg(teacher_cache="off"), data, tmp_path / "b")
    assert (tmp_path / "a/teacher_cache/meta.json").exists() and not (tmp_path / "b/teacher_cache").exists()
    # float16 storage of the cache: the two runs differ far less than either moved from the start
    moved = (flat(a.raw_model) - flat(student)).norm()
    assert (flat(a.raw_model) - flat(b.raw_model)).norm() < 0.05 * moved


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    teacher, data, c, student = tiny_teacher(), make_data(), cfg(steps=6), create_model("edge-xs")
    full = distill(teacher, student, c, data, tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, student, c, data, tmp_path / "cut", step_callback=stop_at(3))
    assert '"step": 2' in (tmp_path / "cut/progress.json").read_text()
    with pytest.raises(OutputExistsError, match="--resume"):
        distill(teacher, student, c, data, tmp_path / "cut")
    with pytest.raises(CheckpointError, match="different settings"):
        distill(teacher, student, cfg(steps=6, lr=5e-4), data, tmp_path / "cut", resume=True)
    torch.manual_seed(123)  # resuming must not depend on the global RNG
    resumed = distill(teacher, create_model("edge-xs"), c, data, tmp_path / "cut", resume=True)
    assert torch.allclose(flat(resumed.model), flat(full.model), atol=1e-6)
    assert torch.allclose(flat(resumed.raw_model), flat(full.raw_model), atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut/train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_bf16_autocast_and_channels_last_path_runs_on_cpu(tmp_path):
    config = cfg(steps=2, amp="bf16", channels_last=True, teacher_cache="off")
    res = distill(tiny_teacher(), create_model("edge-xs"), config, make_data(), tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert res.model.intro.weight.is_contiguous()  # the exported model is back in the default layout


def test_non_finite_steps_are_skipped_and_a_divergence_ends_the_run(tmp_path, monkeypatch):
    """A batch with a non-finite loss changes no weight (a NaN update would poison every later checkpoint);
    too many in a row end the run with one clear error, the last checkpoint intact."""
    from datprl_edge.core.errors import TrainingDivergedError
    from datprl_edge.train import engine

    data_nan = make_data()
    lq, gt = data_nan.load(np.arange(16))
    lq[[0, 2, 4]] = float("nan")
    val = {t: data_nan.validation(2, CROP)[t] for t in TASKS}
    bad = TrainData.from_arrays(TASKS, np.arange(16) % 2, lq.permute(0, 2, 3, 1).numpy(),
                                gt.permute(0, 2, 3, 1).numpy(), val, description="nan-items")
    c = cfg(steps=6, output_weight=0, feature_weight=0, routing_weight=0)
    res = distill(None, create_model("edge-xs"), c, bad, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run/train.jsonl").read_text().splitlines()]
    assert logs[-1]["nonfinite_skipped"] >= 1
    assert torch.isfinite(flat(res.model)).all()
    assert torch.isfinite(flat(load_model(tmp_path / "run/model.safetensors"))).all()

    lq_all = lq.clone()
    lq_all[:] = float("nan")
    worse = TrainData.from_arrays(TASKS, np.arange(16) % 2, lq_all.permute(0, 2, 3, 1).numpy(),
                                  gt.permute(0, 2, 3, 1).numpy(), val, description="all-nan")
    monkeypatch.setattr(engine._NonFiniteGuard, "LIMIT", 3)
    with pytest.raises(TrainingDivergedError, match="diverged at step 3: 3 steps in a row"):
        distill(None, create_model("edge-xs"), cfg(steps=6, output_weight=0, feature_weight=0,
                                                   routing_weight=0), worse, tmp_path / "div")
    assert not (tmp_path / "div" / "model.safetensors").exists()
