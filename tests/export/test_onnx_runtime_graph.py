"""The ONNX target's rewrites for onnxruntime (export/onnx_runtime_graph.py): each one replaces its
pattern by ops that compute the same values, at any input size, and leaves near misses alone."""

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from datprl_edge.export.onnx_runtime_graph import optimize_for_onnxruntime  # noqa: E402


def _export(module, channels: int):
    import torch

    x = torch.rand(1, channels, 32, 48)
    dyn = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(module.eval(), (x,), None, input_names=["input"], output_names=["output"],
                                opset_version=18, dynamo=True, verbose=False,
                                dynamic_shapes=({2: dyn, 3: dyn},))
    return program.model_proto


def _run(proto, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(proto):
    return collections.Counter(n.op_type for n in proto.graph.node)


def _copy(proto):
    return onnx.ModelProto.FromString(proto.SerializeToString())


@pytest.mark.parametrize("channels,factor,features", [(3, 2, 0), (1, 4, 0), (3, 2, 5)])
def test_pixel_unshuffle_becomes_space_to_depth(channels, factor, features):
    """The image (the students' stem) or a conv's output (`features` channels; Restormer's
    down-samplers), padded to a multiple of the factor in the graph as the student does."""
    import torch
    from torch import nn

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(channels, features, 3, padding=1) if features else nn.Identity()
            self.unshuffle = nn.PixelUnshuffle(factor)
            self.conv = nn.Conv2d((features or channels) * factor * factor, 4, 3, padding=1)

        def forward(self, x):
            h, w = x.shape[-2:]
            x = nn.functional.pad(x, (0, (-w) % factor, 0, (-h) % factor))
            return self.conv(self.unshuffle(self.first(x)))

    torch.manual_seed(0)
    before = _export(Stem(), channels)
    after = _copy(before)
    counts = optimize_for_onnxruntime(after)
    onnx.checker.check_model(after)
    assert counts["pixel_unshuffle_to_space_to_depth"] == 1
    assert _ops(after)["SpaceToDepth"] == 1 and "Transpose" not in _ops(after)
    for size in ((32, 48), (37, 61)):
        x = np.random.default_rng(1).random((1, channels, *size), dtype=np.float32)
        np.testing.assert_allclose(_run(after, x), _run(before, x), atol=1e-6)


def test_float_upsampler_becomes_conv_transpose_behind_its_clip():
    import torch
    from torch import nn

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 4 * 4, 1, bias=False)
            self.shuffle = nn.PixelShuffle(2)

        def forward(self, x):
            return self.shuffle(torch.clamp(self.conv(x), -1.5, 1.5))  # the students' bounded convs

    torch.manual_seed(0)
    before = _export(Up(), 8)
    after = _copy(before)
    assert optimize_for_onnxruntime(after)["upsamplers_to_conv_transpose"] == 1
    ops = _ops(after)
    assert ops["ConvTranspose"] == 1 and ops["Clip"] == 1 and "DepthToSpace" not in ops and "Conv" not in ops
    x = np.random.default_rng(2).standard_normal((1, 8, 19, 26)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), atol=1e-5)


def _qdq_graph(conv_tail: str):
    """input -> Q -> DQ -> Conv 1x1 (per-channel int8 weight through DQ) -> `conv_tail`:
    'shuffle' (DepthToSpace CRD), 'float' (output as is), 'requantized' (Relu -> Q -> DQ)."""
    rng = np.random.default_rng(3)
    cin, cout = 8, 16
    q = rng.integers(-63, 64, (cout, cin, 1, 1)).astype(np.int8)
    inits = [numpy_helper.from_array(q, "w_q"),
             numpy_helper.from_array((rng.random(cout) * 0.01 + 0.001).astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "w_zero"),
             numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w"], ["y"])]
    if conv_tail == "shuffle":
        nodes.append(helper.make_node("DepthToSpace", ["y"], ["output"], blocksize=2, mode="CRD"))
    elif conv_tail == "requantized":
        nodes += [helper.make_node("Relu", ["y"], ["r"]),
                  helper.make_node("QuantizeLinear", ["r", "a_scale", "a_zero"], ["rq"]),
                  helper.make_node("DequantizeLinear", ["rq", "a_scale", "a_zero"], ["output"])]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["output"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         [1, cin, None, None])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _int8_initializers(proto):
    return [t.name for t in proto.graph.initializer if t.data_type == TensorProto.INT8]


def test_int8_upsampler_keeps_its_int8_weight():
    before = _qdq_graph("shuffle")
    after = _copy(before)
    counts = optimize_for_onnxruntime(after)
    assert counts["upsamplers_to_conv_transpose"] == 1 and counts["float_conv_weights_dequantized"] == 0
    assert _ops(after)["ConvTranspose"] == 1 and "w_q" in _int8_initializers(after)
    x = np.random.default_rng(4).standard_normal((1, 8, 9, 14)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), atol=1e-5)


def test_float_conv_weight_is_stored_dequantized():
    before = _qdq_graph("float")
    after = _copy(before)
    assert optimize_for_onnxruntime(after)["float_conv_weights_dequantized"] == 1
    conv = next(n for n in after.graph.node if n.op_type == "Conv")
    stored = numpy_helper.to_array(next(t for t in after.graph.initializer if t.name == conv.input[1]))
    inits = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    expected = inits["w_q"].astype(np.float32) * inits["w_scale"].reshape(-1, 1, 1, 1)
    assert stored.dtype == np.float32 and np.array_equal(stored, expected)  # DequantizeLinear's values
    assert "w_q" not in _int8_initializers(after)
    x = np.random.default_rng(5).standard_normal((1, 8, 9, 14)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), atol=1e-5)


def test_conv_in_an_integer_kernel_keeps_its_dequantize():
    """DQ -> Conv -> Relu -> Q becomes a QLinearConv: handed a float weight, onnxruntime would
    quantize it again with its own scales, so that weight stays as the QAT program wrote it."""
    before = _qdq_graph("requantized")
    after = _copy(before)
    assert not any(optimize_for_onnxruntime(after).values())
    assert after.SerializeToString() == before.SerializeToString()


def _near_miss(kind: str):
    rng = np.random.default_rng(6)
    kernel = 3 if kind == "3x3" else 1
    inits = [numpy_helper.from_array(rng.random((16, 8, kernel, kernel), dtype=np.float32), "w")]
    conv_inputs = ["input", "w"]
    if kind == "bias":
        inits.append(numpy_helper.from_array(rng.random(16, dtype=np.float32), "b"))
        conv_inputs.append("b")
    conv = helper.make_node("Conv", conv_inputs, ["y"], pads=[1, 1, 1, 1] if kernel == 3 else [0, 0, 0, 0])
    shuffle = helper.make_node("DepthToSpace", ["y"], ["output"], blocksize=2,
                               mode="DCR" if kind == "dcr" else "CRD")
    graph = helper.make_graph([conv, shuffle], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, None, None])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("kind", ["dcr", "bias", "3x3"])
def test_near_misses_are_left_alone(kind):
    before = _near_miss(kind)
    after = _copy(before)
    assert not any(optimize_for_onnxruntime(after).values())
    assert after.SerializeToString() == before.SerializeToString()


def test_stem_student_export_runs_without_six_dimensional_transposes(tmp_path):
    """A stem-2 student (pixel-unshuffled input) exported to ONNX: the stem is a SpaceToDepth, the
    up-samplers ConvTransposes, the file passes the export's check against torch and computes what the
    file written as traced (`--plain-onnx`) computes; each file's metadata says which graph it holds."""
    import torch

    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.export.onnx_runtime_graph import REWRITES
    from datprl_edge.models.registry import create_model
    from datprl_edge.runtime.onnx import read_metadata

    torch.manual_seed(0)
    model = create_model("edge-lat")
    files, notes = {}, {}
    for rewrites in (True, False):
        out = tmp_path / str(rewrites)
        (report,) = export_model(model, ExportConfig(targets="onnx", precision="fp32", model_name="edge-lat",
                                                     verify_images=1, verify_size=(60, 68),
                                                     onnx_rewrites=rewrites), out)
        assert report.passed
        notes[rewrites] = report.notes["onnxruntime_rewrites"]
        files[rewrites] = onnx.load(str(out / "edge-lat_onnx_fp32.onnx"))
        meta = read_metadata(out / "edge-lat_onnx_fp32.onnx")
        assert meta["onnx_graph"] == (REWRITES if rewrites else "as traced")
    assert "pixel unshuffle to space to depth: 1" in notes[True] and notes[False] == "off (--plain-onnx)"
    ops, plain = _ops(files[True]), _ops(files[False])
    assert ops["SpaceToDepth"] == 1 and ops["ConvTranspose"] == 3 and "Transpose" not in ops
    assert ops["DepthToSpace"] == 1  # the ending's shuffle back to full resolution (after a 3x3 conv)
    assert plain["DepthToSpace"] == 4 and plain["Transpose"] == 1 and "ConvTranspose" not in plain
    x = np.random.default_rng(7).random((1, 3, 52, 76), dtype=np.float32)
    np.testing.assert_allclose(_run(files[True], x), _run(files[False], x), atol=1e-5)
