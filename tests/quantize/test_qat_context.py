"""QAT of a student with a context: the INT8 program takes (image, context, context_mix) and returns
(restored, context_out) for every target; checkpoints made before the context still load as image-only."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datprl_edge.core.artifacts import psnr_db  # noqa: E402
from datprl_edge.models.context import context_layout, context_size  # noqa: E402
from datprl_edge.quantize.feed import call_with_context, context_width, run_image  # noqa: E402
from datprl_edge.quantize.qat import QATConfig, load_qat, run_qat, save_qat  # noqa: E402
from datprl_edge.quantize.scope import frozen_observers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16


def _calib(n=4, size=24):
    rng = np.random.default_rng(0)
    return [(0.2 + 0.6 * rng.random((size, size, 3))).astype(np.float32) for _ in range(n)]


def _images(seed, n=2, size=32):
    return 0.2 + 0.6 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _qat(model, target, **kw):
    cfg = QATConfig(target=target, steps=1, batch_size=2, crop=SIZE, calib_batches=1, val_images=0,
                    example_size=SIZE, **kw)
    return run_qat(model, cfg, _calib())


@pytest.fixture(scope="module")
def onnx_result(untrained_edge_xs):
    return _qat(untrained_edge_xs, "onnx")


@pytest.mark.parametrize("target", ["onnx", "openvino", "coreml"])
def test_converted_program_takes_and_follows_the_context(target, untrained_edge_xs, onnx_result):
    student = untrained_edge_xs
    result = onnx_result if target == "onnx" else _qat(student, target)
    layout = [[name, size] for name, size in context_layout(student)]
    assert result.context_layout == layout and context_width(result.prepared) == context_size(student)
    program = result.converted()
    x, other = _images(1), _images(2)
    k = context_size(student)
    zeros = torch.zeros(2, k)
    with torch.no_grad(), frozen_observers(result.prepared):
        _, c_other = student(other, context=zeros, context_mix=zeros)
        own_out, own = program(x, zeros, zeros)
        assert own_out.shape == x.shape and own.shape == (2, k)
        # mix 0 is the program's own behaviour (what QAT trained and validated)
        assert (own_out - run_image(result.prepared, x)).abs().max() < 0.05
        follow, _ = program(x, c_other, torch.ones(2, k))
        ref, _ = student(x, context=c_other, context_mix=torch.ones(2, k))
        assert (follow - own_out).abs().max() > 1e-3, "the given context must change the output"
        assert psnr_db(ref.numpy(), follow.numpy()) >= 35
        # the fake-quant module takes the context in the same convention
        fq, _ = call_with_context(result.prepared, x, c_other, torch.ones(2, k))
        assert (fq - follow).abs().max() < 0.05


def test_context_result_saves_and_loads(onnx_result, tmp_path):
    path = save_qat(onnx_result, tmp_path / "q.safetensors")
    loaded = load_qat(path)
    assert loaded.context_layout == onnx_result.context_layout and loaded.config.context
    x = _images(3)
    with torch.no_grad():
        assert torch.equal(run_image(loaded.prepared, x), run_image(onnx_result.prepared, x))


def test_context_can_be_left_out(untrained_edge_xs):
    result = _qat(untrained_edge_xs, "onnx", context=False)
    assert result.context_layout == [] and context_width(result.prepared) == 0
    x = _images(4)
    with torch.no_grad():
        assert torch.equal(run_image(result.prepared, x), result.prepared(x))
        assert result.converted()(x).shape == x.shape


@pytest.mark.parametrize("target", ["onnx", "openvino", "coreml"])
def test_checkpoints_before_the_context_load_image_only(target, untrained_edge_xs, tmp_path):
    """A checkpoint saved without the context keys (as every QAT checkpoint before it) rebuilds as an
    image-only program."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from datprl_edge.io.checkpoint import METADATA_KEY

    path = save_qat(_qat(untrained_edge_xs, target, context=False), tmp_path / "q.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta[METADATA_KEY])
    cfg["options"].pop("with_context", None)
    cfg["extra"].pop("context_layout", None)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, METADATA_KEY: json.dumps(cfg)})
    result = load_qat(old)
    assert result.context_layout == [] and not result.config.context
    x = _images(5)
    with torch.no_grad(), frozen_observers(result.prepared):
        out = result.prepared(x)
        assert out.shape == x.shape and torch.equal(run_image(result.prepared, x), out)
