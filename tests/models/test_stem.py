"""The pixel-unshuffle stem (option `stem`) and the latency-first student edge-lat built on it: the net
runs at half resolution, pads to 16, folds, tiles with a context, saves, reloads and exports like
edge-xs."""

import numpy as np
import pytest
import torch
from conftest import routed_student

from datprl_edge import create_model
from datprl_edge.core.errors import ConfigError
from datprl_edge.fold.folding import FoldConfig, fold_static
from datprl_edge.models.complexity import count_macs
from datprl_edge.models.student import EdgeDATPRL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lat():
    model = routed_student("edge-lat")
    with torch.no_grad():
        model.ending.weight.normal_(std=0.05)
    return model.eval()


def test_half_resolution_net_on_odd_sizes(lat):
    assert lat.pad_multiple == 16
    x = torch.rand(2, 3, 37, 50)
    with torch.inference_mode():
        y, aux = lat.forward_with_aux(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert aux["features"]["dec1"].shape == (2, 16, 24, 32)  # padded 48x64, then unshuffled by 2
    assert aux["features"]["latent"].shape == (2, 128, 3, 4)


def test_residual_identity_and_same_blocks_as_edge_xs(lat):
    xs = create_model("edge-xs")
    lat_shapes = {k: v.shape for k, v in lat.state_dict().items()}
    xs_shapes = {k: v.shape for k, v in xs.state_dict().items()}
    differ = sorted(k for k in lat_shapes if lat_shapes[k] != xs_shapes.get(k))
    assert differ == ["ending.bias", "ending.weight", "intro.weight"]  # 12 unshuffled channels
    assert count_macs(lat, (1, 3, 256, 256)).total < 0.35 * count_macs(xs, (1, 3, 256, 256)).total
    fresh = create_model("edge-lat")
    with torch.no_grad():
        fresh.ending.weight.zero_()
        fresh.ending.bias.zero_()
    x = torch.rand(1, 3, 19, 23)
    with torch.inference_mode():
        assert torch.equal(fresh(x), x)


def test_stem_option_is_checked():
    with pytest.raises(ConfigError, match="stem must be 1 .* 2 or 4"):
        EdgeDATPRL(stem=3)
    with pytest.raises(ConfigError, match="stem must be"):
        create_model("edge-xs", stem="2")


def test_static_fold_keeps_the_stem(lat):
    x = torch.rand(2, 3, 32, 48)
    result = fold_static(lat, FoldConfig(task="natural/derain", shape=(1, 3, 32, 32), latency_iters=0),
                         images=x)
    static = result.model
    assert static.pad_multiple == 16 and type(static.unshuffle).__name__ == "PixelUnshuffle"
    assert result.verification["natural/derain"]["psnr_db"] >= 60


def test_tiles_with_a_context_reproduce_the_whole_image(lat):
    from datprl_edge.export.driver import with_context_inputs

    program = with_context_inputs(lat)
    x = torch.rand(1, 3, 64, 96)
    k = sum(n for _, n in lat.context_layout())
    with torch.inference_mode():
        whole = lat(x)
        _, ctx = program(x, torch.zeros(1, k), torch.zeros(1, k))
        left, _ = program(x[..., :48], ctx, torch.ones(1, k))
    assert (left[..., :8] - whole[..., :8]).abs().max() <= 1e-4  # far from the seam: the image-wide context


def test_checkpoint_round_trip_and_export(lat, tmp_path):
    pytest.importorskip("onnxruntime")
    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.loading import load_model

    cfg = CheckpointConfig(arch="EdgeDATPRL", options=dict(lat.datprl_config["options"]))
    path = save_checkpoint(tmp_path / "lat.safetensors", lat.state_dict(), cfg)
    again = load_model(path)
    x = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        assert torch.equal(again(x), lat(x))
    reports = export_model(again, ExportConfig(targets=("onnx",), precision="fp32", verify_images=1,
                                               verify_size=(48, 80)), tmp_path / "out")
    assert reports[0].passed and str(reports[0].metadata["pad_multiple"]) == "16"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(reports[0].path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 48, 80), dtype=np.float32)
    k = sum(n for _, n in lat.context_layout())
    inputs = sess.get_inputs()
    feed = {inputs[0].name: x, **{i.name: np.zeros((1, k), np.float32) for i in inputs[1:]}}
    got = sess.run(None, feed)[0]
    with torch.inference_mode():
        want = lat(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_with_stem_starts_from_the_full_resolution_student(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import torch.nn.functional as F

    from datprl_edge.models.loading import load_model
    from datprl_edge.models.student import with_stem

    torch.manual_seed(1)
    xs = create_model("edge-xs").eval()
    with torch.no_grad():
        xs.ending.weight.normal_(std=0.05)
    lat = with_stem(xs, 2)
    assert lat.datprl_config["options"]["stem"] == 2 and lat.pad_multiple == 16
    x = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        a = F.avg_pool2d(x, 2)
        want = x + F.interpolate(xs(a) - a, scale_factor=2, mode="nearest")
        assert (lat(x) - want).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="full-resolution student"):
        with_stem(lat, 2)
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "init.safetensors"
    run = [sys.executable, str(root / "scripts" / "stem_init.py"), "bundled:edge-xs", str(out)]
    assert subprocess.run(run, capture_output=True, text=True, timeout=120).returncode == 0
    assert load_model(out).pad_multiple == 16
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr
