"""Calibration crops the float model runs only through its activation clamps (models.bounds) are
left out of the INT8 ranges, and the INT8 model is scored against the clamped FP32 model.

Found on the edge-lat student folded for CT: one 64-px calibration crop in 160 drove its unclamped
activations to 1e9 x their bounds, the mean-of-batch-maxima ranges took that in, and PTQ lost 1.52 dB
(-0.01 dB with the crop left out; QAT on it diverged)."""

import copy

import pytest

torch = pytest.importorskip("torch")

from datprl_edge.core.errors import ConfigError  # noqa: E402
from datprl_edge.models import bounds as bounds_module  # noqa: E402
from datprl_edge.models.bounds import measure_act_bounds, set_act_bounds, within_bounds  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.quantize.loop import Pair, calibration_batches  # noqa: E402
from datprl_edge.quantize.qat import run_qat  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        gt = 0.2 + 0.6 * torch.rand(3, 40, 40, generator=g)
        out.append(Pair((gt + 0.05 * torch.randn(3, 40, 40, generator=g)).clamp(0, 1), gt, "natural/denoise"))
    return out


def _all(x):
    return torch.ones(len(x), dtype=torch.bool)


def test_turned_down_crops_are_replaced_by_later_draws():
    pairs = _pairs()
    plain, none_skipped = calibration_batches(pairs, 3, 4, SIZE, 0)
    same, skipped = calibration_batches(pairs, 3, 4, SIZE, 0, keep=_all)
    assert none_skipped == skipped == 0 and all(torch.equal(a, b) for a, b in zip(plain, same))

    bad = plain[1][2]  # one crop turned down: a later draw takes its place

    def keep(x):
        return torch.tensor([not torch.equal(c, bad) for c in x])

    kept, skipped = calibration_batches(pairs, 3, 4, SIZE, 0, keep=keep)
    assert skipped == 1 and [len(b) for b in kept] == [4, 4, 4]
    assert torch.equal(kept[0], plain[0]) and torch.equal(kept[1][:2], plain[1][:2])
    assert not any(torch.equal(c, bad) for b in kept for c in b)
    with pytest.raises(ConfigError, match="every calibration crop drives the float model far outside"):
        calibration_batches(pairs, 3, 4, SIZE, 0, keep=lambda x: ~_all(x))


def test_within_bounds_flags_images_past_the_bounds_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("edge-xs").eval()
    x = 0.2 + 0.6 * torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert within_bounds(model, x).all()  # no bounds: nothing to exceed
    bounds = measure_act_bounds(model, [x])
    set_act_bounds(model, bounds)
    config = copy.deepcopy(model.datprl_config)
    with torch.no_grad():
        out = model(x)
    hot = x.clone()
    hot[1] *= 2  # outside the measured range: the untrained gates square it block by block
    hot[2, 0, 0, 0] = float("nan")
    assert within_bounds(model, hot).tolist() == [True, False, False]
    assert within_bounds(model, hot, factor=1e6).tolist() == [True, True, False]
    assert model.datprl_config == config
    with torch.no_grad():
        assert torch.equal(model(x), out) and model(hot[1:2]).abs().max() < 1e4  # clamps back in place


def test_ct_folded_edge_lat_ptq_leaves_out_the_crop_it_clamps(monkeypatch):
    """The shipped edge-lat folded for CT, quantized as `export --task medical/ct_denoise --calibration
    medical-scanner` quantizes it (OpenVINO PTQ), scored on the held-out CT pairs the export scores."""
    pytest.importorskip("nncf")
    from datprl_edge.export.config import ExportConfig
    from datprl_edge.sources import (
        calibration_data,
        drop_pairs,
        fold_for_task,
        quantize_for_target,
        resolve_model,
    )

    task = "medical/ct_denoise"
    folded, _ = fold_for_task(resolve_model("bundled:edge-lat"), task, "medical-scanner")
    config = ExportConfig(targets=("openvino",), precision="int8", task=task, calibration="medical-scanner",
                          qat_steps=0)  # post-training quantization, where the outlier did its harm
    fixed, how = quantize_for_target(folded, None, "openvino", config)
    assert how.endswith("; 1 calibration crop(s) left out (the float model runs them only through its "
                        "activation clamps, models.bounds)")
    monkeypatch.setattr(bounds_module, "within_bounds", lambda _model, x: _all(x))
    before = run_qat(folded, fixed.config, calibration_data("medical-scanner", folded)[0],
                     val=drop_pairs((task,), folded, search=False))  # every crop sets the ranges, as before
    skipped = [r.metrics["calibration_crops_skipped"] for r in (fixed, before)]
    assert skipped == [1, 0]
    drop, drop_before = fixed.metrics["drop_db"]["worst"], before.metrics["drop_db"]["worst"]
    assert drop < 0.1 and drop_before > 1.0, (drop, drop_before)  # measured: -0.01 and 1.52 dB


def _darker_than(limit):
    def keep(x):
        return x.flatten(1).mean(1) < limit
    return keep


def test_training_batches_replace_turned_down_crops_with_aligned_pairs():
    from datprl_edge.quantize.loop import kept_batch, random_batch

    pairs = _pairs()
    lq, gt = random_batch(pairs, 4, SIZE, torch.Generator().manual_seed(0))
    same = kept_batch(pairs, 4, SIZE, torch.Generator().manual_seed(0), keep=_all)
    assert same[2] == 0 and torch.equal(same[0], lq) and torch.equal(same[1], gt)
    keep = _darker_than(lq.flatten(1).mean(1).median())  # turns down about half the crops
    kept, kept_gt, down = kept_batch(pairs, 4, SIZE, torch.Generator().manual_seed(0), keep=keep)
    assert down >= 2 and len(kept) == 4 and keep(kept).all()
    assert ((kept - kept_gt).abs().mean((1, 2, 3)) < 0.06).all()  # each lq with its own gt (noise 0.05)
    with pytest.raises(ConfigError, match="every training crop drives the float model far outside"):
        kept_batch(pairs, 4, SIZE, torch.Generator().manual_seed(0), keep=lambda x: ~_all(x))


def test_qat_training_leaves_out_the_crops_calibration_leaves_out(monkeypatch):
    """QAT distils only on crops the float model runs within its clamps, as calibration does: the
    reference never sees a turned-down crop, and the result counts them."""
    from datprl_edge.quantize import loop
    from datprl_edge.quantize.qat import QATConfig

    torch.manual_seed(0)
    model = create_model("edge-xs").eval()
    pairs = _pairs()
    set_act_bounds(model, measure_act_bounds(model, [torch.stack([p.lq[:, :SIZE, :SIZE] for p in pairs])]))
    limit = float(torch.stack([p.lq.mean() for p in pairs]).median())
    keep = _darker_than(limit)
    seen, training = [], {}
    real_run_image, real_train = loop.run_image, loop.train

    def recording(module, x):
        if module is training.get("ref"):
            seen.append(x.clone())
        return real_run_image(module, x)

    def train(prepared, ref, *args, **kw):
        training["ref"] = ref
        try:
            return real_train(prepared, ref, *args, **kw)
        finally:
            training.clear()

    monkeypatch.setattr(loop, "run_image", recording)
    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(bounds_module, "within_bounds", lambda _model, x: keep(x))
    cfg = QATConfig(target="onnx", steps=3, batch_size=4, crop=SIZE, calib_batches=2, val_images=2,
                    example_size=SIZE, lr=0.0)
    result = run_qat(model, cfg, pairs, val={"natural/denoise": (pairs[0].lq[None], pairs[0].gt[None])})
    assert result.metrics["training_crops_skipped"] > 0 and result.metrics["calibration_crops_skipped"] > 0
    assert len(seen) == 3 and all(keep(x).all() for x in seen)
