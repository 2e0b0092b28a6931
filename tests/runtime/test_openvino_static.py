"""OpenVINO sessions compile a dynamic IR per input size (static shapes: the CPU plugin's eltwise
fusion works), with the same numbers as the dynamic graph."""

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnx")

from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.runtime.openvino import OpenVINOSession  # noqa: E402


@pytest.fixture(scope="module")
def ir(tmp_path_factory, untrained_edge_xs):
    out = tmp_path_factory.mktemp("ov")
    config = ExportConfig(targets=("openvino",), precision="fp32", model_name="s", verify_images=1,
                          verify_size=(32, 32))
    return export_model(untrained_edge_xs, config, out)[0].path


def test_static_reshape_fuses_and_matches_the_dynamic_graph(ir):
    static, dynamic = OpenVINOSession(ir, threads=1), OpenVINOSession(ir, threads=1, static=False)
    assert static.reshapes and not dynamic.reshapes
    x = np.random.default_rng(0).random((1, 3, 40, 48), dtype=np.float32)
    np.testing.assert_allclose(static.run(x), dynamic.run(x), atol=1e-5)
    fused, plain = static.runtime_graph((1, 3, 64, 64)), dynamic.runtime_graph()
    assert fused.get("Eltwise", 0) < plain.get("Eltwise", 0)  # fused into Subgraph nodes
    assert fused.get("Subgraph", 0) > plain.get("Subgraph", 0)
    assert "ShapeOf" in plain and "ShapeOf" not in fused  # no size arithmetic at run time


def test_no_feature_map_is_split(ir):
    """The gated convs are exported in halves (split_copy): no channel Split of a feature map, which the
    CPU plugin runs as a reference kernel; only the prompt path splits (B, K) vectors."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(ir))
    model.reshape({model.inputs[0]: [1, 3, 64, 64]})
    runtime = core.compile_model(model, "CPU").get_runtime_model()
    splits = [op for op in runtime.get_ops() if op.get_rt_info()["layerType"].astype(str) == "Split"]
    assert splits  # the prompt path's
    assert all(len(op.get_output_partial_shape(0)) == 2 for op in splits)


def test_compiled_sizes_are_cached_and_bounded(ir):
    session = OpenVINOSession(ir, threads=1)
    rng = np.random.default_rng(1)
    for side in (16, 24, 32, 40, 48, 16):
        y = session.run(rng.random((1, 3, side, side), dtype=np.float32))
        assert y.shape == (1, 3, side, side)
    assert len(session._by_size) == OpenVINOSession.STATIC_CACHE
    assert list(session._by_size)[-1] == (1, 3, 16, 16)  # most recent last
