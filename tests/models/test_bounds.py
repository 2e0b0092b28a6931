"""Activation bounds of the norm-free student: no change on training-like inputs, finite outputs on an
input far outside the training range, carried by checkpoints and exported graphs."""

import pytest
import torch

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.bounds import edge_blocks, measure_block_bounds, set_block_bounds
from datprl_edge.models.loading import load_model
from datprl_edge.models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _heavy_rain():
    """The shifted-set image (rain denser than any training severity) on which the unbounded shipped
    student overflowed to an all-NaN output (benchmarks/quality.py, 2026-11-27)."""
    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.data.tasks import get_task

    pair = fixed_pairs(get_task("natural/derain").shifted_task(), 1, 256, 1, split="val")[0]
    return torch.from_numpy(pair.lq).permute(2, 0, 1)[None].float()


def test_bounds_change_nothing_in_range_and_survive_a_checkpoint(tmp_path):
    from datprl_edge.train.checkpointing import save_final

    torch.manual_seed(0)
    model = create_model("edge-xs")
    images = [torch.rand(2, 3, 32, 32) for _ in range(2)]
    bounds = measure_block_bounds(model, images)
    assert len(bounds) == len(edge_blocks(model)) == 7
    with torch.no_grad():
        ref = [model(x) for x in images]
        set_block_bounds(model, bounds)
        assert all(torch.equal(model(x), r) for x, r in zip(images, ref))
        tight = [b / 8 for b in bounds]  # bounds well inside the range do bind
        set_block_bounds(model, tight)
        assert not torch.equal(model(images[0]), ref[0])
    set_block_bounds(model, bounds)
    path = save_final(tmp_path / "s.safetensors", model, "distilled", {}, {})
    loaded = load_model(path)
    assert [b.bound for _, b in edge_blocks(loaded)] == bounds
    assert loaded.datprl_checkpoint.options["block_bounds"] == bounds
    set_block_bounds(loaded, None)
    assert "block_bounds" not in loaded.datprl_config["options"]
    assert all(b.bound is None for _, b in edge_blocks(loaded))


@pytest.mark.parametrize("bad, message", [([1.0] * 6, "one bound per block"),
                                          ([1.0] * 6 + [float("nan")], "positive finite"),
                                          ([1.0] * 6 + [-2.0], "positive finite"),
                                          ("2.0", "one bound per block")])
def test_bad_bounds_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        create_model("edge-xs", block_bounds=bad)


def test_shipped_student_stays_finite_on_heavy_rain():
    model = load_model("datprl_edge/weights/edge-xs.safetensors")
    assert all(b.bound is not None for _, b in edge_blocks(model))
    x = _heavy_rain()
    with torch.no_grad():
        y = model(x)
        assert torch.isfinite(y).all()
        set_block_bounds(model, None)  # what shipped before: the products overflow
        assert not torch.isfinite(model(x)).all()


def test_exported_graph_clamps_each_block(tmp_path, untrained_edge_xs):
    pytest.importorskip("onnxruntime")
    import copy

    import onnx

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model

    model = copy.deepcopy(untrained_edge_xs)  # the fixture is shared by the module
    plain = export_model(model, ExportConfig(targets=("onnx",), precision="fp32", model_name="plain"),
                         tmp_path / "plain")[0]
    set_block_bounds(model, measure_block_bounds(model, [torch.rand(1, 3, 32, 32)]))
    (report,) = export_model(model, ExportConfig(targets=("onnx",), precision="fp32", model_name="bounded"),
                             tmp_path / "bounded")

    def clips(r):
        return sum(n.op_type == "Clip" for n in onnx.load(str(r.path)).graph.node)

    assert report.passed and clips(report) == clips(plain) + 7
