"""Activation bounds of the norm-free student: no change on training-like inputs, out-of-range inputs
saturate instead of overflowing, carried by checkpoints, folds and exported graphs."""

import copy

import numpy as np
import pytest
import torch

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.bounds import BoundedConv2d, bounded_layers, measure_act_bounds, set_act_bounds
from datprl_edge.models.loading import load_model
from datprl_edge.models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _heavy_rain():
    """Shifted-set images (rain denser than any training severity) on which the unbounded shipped
    student overflowed to all-NaN outputs (benchmarks/quality.py, 2026-11-27)."""
    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.data.tasks import get_task

    return fixed_pairs(get_task("natural/derain").shifted_task(), 16, 256, 1, split="val")


def test_bounds_change_nothing_in_range_and_survive_a_checkpoint(tmp_path):
    from datprl_edge.train.checkpointing import save_final

    torch.manual_seed(0)
    model = create_model("edge-xs")
    images = [torch.rand(2, 3, 32, 32) for _ in range(2)]
    bounds = measure_act_bounds(model, images)
    assert set(bounds) == set(bounded_layers(model)) and len(bounds) > 40
    with torch.no_grad():
        ref = [model(x) for x in images]
        set_act_bounds(model, bounds)
        assert all(torch.equal(model(x), r) for x, r in zip(images, ref))
        set_act_bounds(model, {k: v / 4 for k, v in bounds.items()})  # bounds inside the range bind
        assert not torch.equal(model(images[0]), ref[0])
    set_act_bounds(model, bounds)
    path = save_final(tmp_path / "s.safetensors", model, "distilled", {}, {})
    loaded = load_model(path)
    assert {n: m.bound for n, m in bounded_layers(loaded).items()} == bounds
    assert loaded.datprl_checkpoint.options["act_bounds"] == bounds
    set_act_bounds(loaded, None)
    assert "act_bounds" not in loaded.datprl_config["options"]
    assert not any(isinstance(m, BoundedConv2d) for m in loaded.modules())


@pytest.mark.parametrize("bad, message", [({"intro.weight": 1.0}, "lacks, e.g. 'intro.weight'"),
                                          ({"intro": float("nan")}, "positive finite"),
                                          ({"intro": -2.0}, "positive finite"),
                                          ([1.0, 2.0], "map conv module paths")])
def test_bad_bounds_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        create_model("edge-xs", act_bounds=bad)


def test_shipped_student_saturates_instead_of_overflowing_on_heavy_rain():
    from datprl_edge.core.metrics import image_metrics

    model = load_model("datprl_edge/weights/edge-xs.safetensors")
    assert len(model.datprl_checkpoint.options["act_bounds"]) == len(bounded_layers(model))
    unbounded = copy.deepcopy(model)
    set_act_bounds(unbounded, None)  # what shipped before: the products overflow
    gains, overflowed = [], 0
    with torch.no_grad():
        for pair in _heavy_rain():
            x = torch.from_numpy(pair.lq).permute(2, 0, 1)[None]
            overflowed += not torch.isfinite(unbounded(x)).all()
            y = model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
            gains.append(image_metrics(pair.gt, y)[0] - image_metrics(pair.gt, pair.lq)[0])
    assert overflowed >= 5  # 6 of the 16 when it was found
    assert np.isfinite(gains).all() and np.mean(gains) > 1.0  # +1.30 dB over the input, measured


def test_folds_keep_the_bounds_and_exported_graphs_clamp(tmp_path, untrained_edge_xs):
    pytest.importorskip("onnxruntime")
    import onnx

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.fold.folding import FoldConfig, fold_static

    model = copy.deepcopy(untrained_edge_xs)  # the fixture is shared by the module
    plain = export_model(model, ExportConfig(targets=("onnx",), precision="fp32", model_name="plain"),
                         tmp_path / "plain")[0]
    bounds = measure_act_bounds(model, [torch.rand(1, 3, 32, 32)])
    set_act_bounds(model, bounds)
    (report,) = export_model(model, ExportConfig(targets=("onnx",), precision="fp32", model_name="bounded"),
                             tmp_path / "bounded")

    def clips(r):
        return sum(n.op_type == "Clip" for n in onnx.load(str(r.path)).graph.node)

    assert report.passed and clips(report) - clips(plain) >= 40
    task = "natural/derain"
    folded = fold_static(model, FoldConfig(task=task, images=1, crop=32, latency_iters=0)).models[task]
    kept = {n: m.bound for n, m in bounded_layers(folded).items() if isinstance(m, BoundedConv2d)}
    assert kept and all(bounds[n] == b for n, b in kept.items())


def test_split_copy_keeps_the_bounds_exactly(untrained_edge_xs):
    """Float exports are made from the student with its gated convs cut in halves (split_copy): each
    half keeps its conv's clamp, so the copy equals the model where the bounds bind too."""
    from datprl_edge.models.bounds import current_bounds
    from datprl_edge.models.student_blocks import split_copy

    model = copy.deepcopy(untrained_edge_xs)
    bounds = measure_act_bounds(model, [torch.rand(1, 3, 32, 32)])
    set_act_bounds(model, {k: v / 4 for k, v in bounds.items()})  # bind on in-range images
    cut = split_copy(model)
    kept = current_bounds(cut)
    assert kept["encoders.0.0.conv1.a"] == kept["encoders.0.0.conv1.b"] == bounds["encoders.0.0.conv1"] / 4
    assert "encoders.0.0.conv1" not in kept and len(kept) > len(bounds)
    assert current_bounds(model) == {k: v / 4 for k, v in bounds.items()}  # the model itself is untouched
    x = torch.rand(2, 3, 32, 32) * 3 - 1
    with torch.no_grad():
        torch.testing.assert_close(cut(x), model(x), rtol=1e-5, atol=1e-5)
    assert split_copy(cut) is cut  # nothing left to cut
