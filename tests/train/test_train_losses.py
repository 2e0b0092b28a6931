"""Each training loss against a direct computation, plus config and curriculum validation."""

import numpy as np
import pytest
import torch

from datprl_edge.core.errors import ConfigError, UnknownChoiceError
from datprl_edge.train import losses as L
from datprl_edge.train.config import DistillConfig, TrainConfig
from datprl_edge.train.curriculum import Curriculum


def test_fft_loss_matches_direct_formula_and_is_zero_on_equal():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    fa, fb = np.fft.rfft2(a.numpy()), np.fft.rfft2(b.numpy())
    want = np.mean(np.abs(np.stack([fa.real - fb.real, fa.imag - fb.imag])))
    assert float(L.fft_loss(a, b)) == pytest.approx(want, rel=1e-5)
    assert float(L.fft_loss(a, a)) == 0.0


def test_restoration_loss_is_l1_plus_weighted_fft():
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    l1 = float((a - b).abs().mean())
    assert float(L.restoration_loss(a, b, 0.0)) == pytest.approx(l1)
    assert float(L.restoration_loss(a, b, 0.1)) == pytest.approx(l1 + 0.1 * float(L.fft_loss(a, b)), rel=1e-6)


def test_restoration_loss_gradient_flows():
    a = torch.rand(1, 3, 8, 8, requires_grad=True)
    L.restoration_loss(a, torch.zeros(1, 3, 8, 8)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_output_distill_is_the_restoration_loss_towards_the_teacher():
    s, t = torch.rand(2, 3, 4, 4, requires_grad=True), torch.rand(2, 3, 4, 4, requires_grad=True)
    l1 = float((s - t).abs().mean().detach())
    assert float(L.output_distill_loss(s, t, 0.0).detach()) == pytest.approx(l1)
    loss = L.output_distill_loss(s, t, 0.1)
    assert float(loss.detach()) == pytest.approx(float(L.restoration_loss(s, t, 0.1).detach()))
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_routing_distill_is_kl_teacher_to_student():
    s = {"domain": torch.randn(3, 5), "degradation": torch.randn(3, 5)}
    t = {"domain": torch.randn(3, 5), "degradation": torch.randn(3, 5)}
    want = 0.0
    for p in ("domain", "degradation"):
        pt = torch.softmax(t[p] / 2, 1)
        want += float((pt * (pt.log() - torch.log_softmax(s[p] / 2, 1))).sum(1).mean()) * 4
    assert float(L.routing_distill_loss(s, t, temperature=2.0)) == pytest.approx(want / 2, rel=1e-5)
    assert float(L.routing_distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_routing_distill_rejects_pools_of_different_size():
    s = {"domain": torch.randn(2, 5), "degradation": torch.randn(2, 5)}
    t = {"domain": torch.randn(2, 7), "degradation": torch.randn(2, 5)}
    with pytest.raises(ConfigError, match="same size"):
        L.routing_distill_loss(s, t)


def test_feature_matching_by_scale_and_name():
    student = {"latent": (64, 4, 4), "dec2": (16, 16, 16), "dec1": (8, 32, 32)}
    teacher = {"enc1": (8, 32, 32), "latent": (128, 4, 4), "dec2": (32, 16, 16), "dec1": (16, 32, 32),
               "refine": (16, 32, 32)}
    assert L.match_features(student, teacher) == [("latent", "latent"), ("dec2", "dec2"), ("dec1", "dec1")]
    assert L.match_features({"x": (8, 32, 32)}, teacher) == [("x", "refine")]
    assert L.match_features({"x": (8, 3, 3)}, teacher) == []


def test_feature_distill_loss_zero_on_match_and_relative_otherwise():
    pairs = [("a", "A")]
    ad = L.FeatureAdapters(pairs, {"a": (4, 8, 8)}, {"A": (6, 8, 8)})
    feats = {"a": torch.rand(2, 4, 8, 8)}
    adapted = ad(feats)
    assert adapted["a"].shape == (2, 6, 8, 8)
    assert float(L.feature_distill_loss(adapted, {"A": adapted["a"].detach()}, pairs).detach()) == 0.0
    t = torch.rand(2, 6, 8, 8)
    want = float(((adapted["a"].detach() - t) ** 2).mean() / ((t ** 2).mean() + 1e-6))
    loss = L.feature_distill_loss(adapted, {"A": t}, pairs)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert ad.convs["a"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(batch_size=6, accum_steps=4), "multiple of accum_steps"),
    (dict(lr=1e-3, min_lr=1e-2), "min_lr"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(crop=4), "crop"),
])
def test_train_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_config_choices_suggest_the_right_word():
    with pytest.raises(UnknownChoiceError, match="sequential"):
        TrainConfig(curriculum="sequentail")
    with pytest.raises(ConfigError, match="does not split"):
        TrainConfig(batch_size=4).micro_batches(3)


def test_distill_config_needs_some_loss():
    with pytest.raises(ConfigError, match="all loss weights"):
        DistillConfig(gt_weight=0, output_weight=0, feature_weight=0, routing_weight=0)
    assert not DistillConfig(output_weight=0, feature_weight=0, routing_weight=0).uses_teacher


def test_sequential_curriculum_adds_tasks_one_by_one():
    task_of_item = np.arange(30) % 3
    cur = Curriculum("sequential", task_of_item, steps=9, seed=1)
    stages = [cur.active_tasks(s) for s in (0, 2, 3, 5, 6, 8)]
    assert stages == [[0], [0], [0, 1], [0, 1], [0, 1, 2], [0, 1, 2]]
    assert set(task_of_item[cur.batch(0, 16)]) == {0}
    assert set(task_of_item[cur.batch(4, 64)]) == {0, 1}
    mixed = Curriculum("mixed", task_of_item, steps=9, seed=1)
    assert set(task_of_item[mixed.batch(0, 64)]) == {0, 1, 2}


def test_batches_are_a_function_of_seed_and_step():
    cur = Curriculum("mixed", np.arange(40) % 4, steps=10, seed=3)
    assert np.array_equal(cur.batch(5, 8), Curriculum("mixed", np.arange(40) % 4, 10, seed=3).batch(5, 8))
    assert not np.array_equal(cur.batch(5, 8), cur.batch(6, 8))
