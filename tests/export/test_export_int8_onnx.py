"""INT8 from a QAT checkpoint: QDQ ONNX (int8 initializers) and OpenVINO from that QDQ ONNX."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("torchao")

from datprl_edge.core.errors import ConfigError  # noqa: E402
from datprl_edge.export.driver import ExportConfig, export_model, reference_output  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact, open_artifact, read_artifact_metadata  # noqa: E402

SMALL = dict(verify_images=1, verify_size=(60, 68))


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory):
    import torch

    from datprl_edge.quantize.qat import QATConfig, run_qat, save_qat
    from datprl_edge.sources import _synthetic

    torch.manual_seed(0)
    model = create_model("edge-xs")
    calib = [_synthetic(64, 64, 3, s)[0] for s in range(4)]
    config = QATConfig(target="onnx", steps=0, calib_batches=2, batch_size=2, val_images=0)
    result = run_qat(model, config, calib)
    path = save_qat(result, tmp_path_factory.mktemp("qat") / "edge-xs-int8-onnx.safetensors")
    return model, path


@pytest.fixture(scope="module")
def exported(qat_checkpoint, tmp_path_factory):
    from datprl_edge.quantize.qat import load_qat

    _, path = qat_checkpoint
    out = tmp_path_factory.mktemp("int8")
    qat = load_qat(path)
    reports = export_model(qat, ExportConfig(targets=("onnx", "openvino"), precision="int8",
                                             model_name="edge-xs", **SMALL), out)
    return out, qat, {r.target: r for r in reports}


def test_qdq_onnx_holds_int8_weights(exported, qat_checkpoint):
    out, _, reports = exported
    info = inspect_artifact(out / "edge-xs_onnx_int8.onnx")
    assert info["checker"] == "passed" and info["opset"] >= 17
    assert info["ops"]["QuantizeLinear"] > 0 and info["ops"]["DequantizeLinear"] > 0
    from torch import nn

    model = qat_checkpoint[0]
    integer, floats, ups = _onnx_conv_kinds(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # every Linear (prompt path included), every conv in an integer kernel and the up-samplers' convs;
    # the other float convs keep their QAT weights dequantized (onnxruntime's NCHWc kernels need them)
    layers = linears + list(integer.values()) + list(ups.values())
    weights = sum(m.weight.numel() for m in layers)
    zero_points = sum(m.weight.shape[0] for m in layers)  # int8 zeros per output channel, some shared
    assert ups and weights <= info["weight_bytes"]["int8"] <= weights + zero_points
    assert info["weight_bytes"]["float32"] >= 4 * sum(m.weight.numel() for m in floats.values())
    total_params = sum(p.numel() for p in model.parameters())
    # the float channel-attention convs (9 % of the weights) keep it above a quarter of the fp32 size
    assert info["weight_bytes"]["int8"] + info["weight_bytes"]["float32"] < 0.4 * 4 * total_params


def test_prompt_path_is_weight_only_int8(exported, qat_checkpoint):
    """Prompt-path linears (query-mapper proj, pool value aggregation, FiLM prompt projections) read
    int8 weights through DequantizeLinear but float activations, so top-k routing sees float queries."""
    import onnx
    from torch import nn

    linears = sum(isinstance(m, nn.Linear) for m in qat_checkpoint[0].modules())
    graph = onnx.load(exported[0] / "edge-xs_onnx_int8.onnx").graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    producer = {out: node for node in graph.node for out in node.output}

    def int8_weight(name):  # DequantizeLinear of int8, maybe reordered for a ConvTranspose
        node = producer.get(name)
        while node is not None and node.op_type in ("Reshape", "Transpose"):
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in int8

    _, floats, ups = _onnx_conv_kinds(qat_checkpoint[0])
    weighted = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    float_weights = [n for n in weighted if not int8_weight(n.input[1])]
    # float weights: the convs onnxruntime runs in float (image, routing, narrow, channel-attention on
    # the context), stored dequantized; the up-samplers (ConvTranspose) read int8 through DequantizeLinear
    assert weighted and len(float_weights) == len(floats) and all(n.op_type == "Conv" for n in float_weights)
    assert any(n.input[1] == "intro.weight" for n in float_weights)
    transposed = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(transposed) == len(ups) and all(int8_weight(n.input[1]) for n in transposed)
    gemms = [n for n in graph.node if n.op_type == "Gemm"]  # edge-xs: every Linear is on the prompt path
    assert len(gemms) == linears and all(int8_weight(n.input[1]) for n in gemms)
    assert not any(producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"
                   for n in gemms)


def test_parity_against_fake_quant_and_report(exported):
    out, qat, reports = exported
    for target in ("onnx", "openvino"):
        data = json.loads((out / f"edge-xs_{target}_int8.json").read_text())
        v = data["verification"]
        assert v["passed"] and v["psnr_db"] >= 40 and v["reference"].startswith("fake-quant")
        assert data["notes"]["int8_source"] == "the given QAT result edge-xs-int8-onnx.safetensors (PTQ)"
    x = np.random.default_rng(1).random((1, 3, 40, 48), dtype=np.float32)
    ref = reference_output(qat.prepared, x, 8)
    y = open_artifact(out / "edge-xs_onnx_int8.onnx").run(x)
    assert np.abs(y - ref).max() < 0.1 and np.mean((y - ref) ** 2) < 1e-4  # > 40 dB


def test_openvino_from_qdq_has_fake_quantize_and_int8_weights(exported):
    out, _, reports = exported
    info = inspect_artifact(out / "edge-xs_openvino_int8.xml")
    assert info["ops"]["FakeQuantize"] > 0 and info["weight_bytes"]["i8"] > 0
    assert "from the QDQ ONNX" in reports["openvino"].notes["int8_format"]
    meta = read_artifact_metadata(out / "edge-xs_openvino_int8.xml")
    assert meta["precision"] == "int8" and meta["int8_scheme"].startswith("torchao PT2E")


def test_qat_checkpoint_only_exports_int8(exported, tmp_path):
    _, qat, _ = exported
    with pytest.raises(ConfigError, match="exports at int8 only"):
        export_model(qat, ExportConfig(targets="onnx", precision="fp32"), tmp_path)
    with pytest.raises(ConfigError, match="trained for onnx"):
        export_model(qat, ExportConfig(targets="coreml", precision="int8"), tmp_path)
    with pytest.raises(ConfigError, match="fold first"):
        export_model(qat, ExportConfig(targets="onnx", precision="int8", task="medical/ct_denoise"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_reads_a_qat_checkpoint(qat_checkpoint, exported, capsys, tmp_path, monkeypatch):
    from conftest import run_cli

    import datprl_edge.cli.export_cmd as cmd

    loaded = exported[1]
    monkeypatch.setattr("datprl_edge.quantize.qat.load_qat", lambda path: loaded)  # checked by the fixture
    seen = {}
    def fake_export(model, config, out, progress=None):
        seen.update(model=model, config=config)
        return []

    monkeypatch.setattr("datprl_edge.export.driver.export_model", fake_export)
    _, path = qat_checkpoint
    code, out, err = run_cli(capsys, "export", path, "--target", "onnx", "--precision", "int8",
                             "-o", tmp_path)
    assert code == 0, err
    assert seen["model"] is loaded and seen["config"].source_sha256 != "random-init"
    assert "QAT checkpoint" in out and cmd.DEFAULT_MODEL == "bundled:edge-xs"


def _onnx_conv_kinds(model):
    """({name: conv} the scheme quantizes, {name: conv} onnxruntime runs in float but the up-samplers,
    {name: conv} of the up-samplers, which the export turns into ConvTranspose) of edge-xs as the ONNX
    scheme rewrites it."""
    import copy

    from torch import nn

    from datprl_edge.models.student_blocks import fold_layer_scales, split_gates
    from datprl_edge.quantize.onnx import IMAGE_LAYERS, OUTPUT_LAYERS
    from datprl_edge.quantize.scope import prompt_path_modules

    m = copy.deepcopy(model)
    fold_layer_scales(m)
    split_gates(m)
    routing = tuple(prompt_path_modules(m))
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    # query mappers read feature maps but feed the top-k routing; `sca` convs see pooled (B, C, 1, 1)
    # vectors; `ending` (3 outputs: the residual image) is float by the scheme's narrow-conv rule,
    # `intro` (the image conv) by IMAGE_LAYERS, the up-samplers' convs (their output is pixel-shuffled
    # into a skip sum) by OUTPUT_LAYERS: int8 weights but a float output, so onnxruntime runs them in float
    narrow = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and mod.out_channels < 8}
    shuffled = {n for n in convs if any(n == s or n.startswith(s + ".") for s in OUTPUT_LAYERS)}
    floats = [n for n in convs if n.startswith(routing) or n.endswith(".sca") or n in narrow
              or n in IMAGE_LAYERS or n in shuffled]
    kinds = ({n: m.get_submodule(n) for n in convs if n not in floats},
             {n: m.get_submodule(n) for n in floats if not n.startswith("ups.")},
             {n: m.get_submodule(n) for n in floats if n.startswith("ups.")})
    return kinds


def test_onnxruntime_runs_every_pixel_conv_in_integer_kernels(exported, qat_checkpoint):
    """From onnxruntime's optimized graph: every feature-map conv but the image and up-sampler ones is a
    QLinearConv; float convs are the routing, channel-attention, up-sampler and image ones only; the
    channel split and the layer-scale multiplies are gone."""
    from datprl_edge.runtime.onnx import runtime_kernels

    out, _, reports = exported
    kernels = runtime_kernels(out / "edge-xs_onnx_int8.onnx")
    integer, floats, ups = _onnx_conv_kinds(qat_checkpoint[0])
    assert kernels["integer_convs"] == len(integer) >= 40
    assert kernels["float_convs"] <= len(floats) + len(ups)
    # the up-samplers run as ConvTranspose, no pixel shuffle is left (edge-xs has no stem shuffle)
    assert kernels["ops"].get("ConvTranspose") == len(ups) and "DepthToSpace" not in kernels["ops"]
    from datprl_edge.quantize.scope import film_modules

    # the only splits left are the FiLM projections' (B, 2C) -> 2 x (B, C) on the prompt path and the
    # two (B, K) context inputs cut into their entries
    assert kernels["ops"].get("Split", 0) <= len(film_modules(qat_checkpoint[0])) + 2
    assert reports["onnx"].notes["onnxruntime_convs"].startswith(f"{len(integer)} integer")
    assert f"upsamplers to conv transpose: {len(ups)}" in reports["onnx"].notes["onnxruntime_rewrites"]


def test_int8_weights_cannot_saturate_without_vnni(exported):
    """x86 U8S8 kernels without VNNI add pairs of uint8 x int8 products in int16 (VPMADDUBSW): with
    weights in [-63, 63] the largest pair is 255 * 126 = 32130 <= 32767, whatever the input or the
    kernel's pairing, so AVX2 and VNNI CPUs compute the same integer sums."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(exported[0] / "edge-xs_onnx_int8.onnx").graph
    inits = {t.name: t for t in graph.initializer}
    activations = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weights and all(np.abs(w.astype(np.int32)).max() <= 63 for w in weights)
    assert max(255 * 2 * int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 32767
    assert activations  # uint8 zero points: activations are uint8, the kernels' U8S8 input type


def test_default_kernels_match_exact_integer_kernels(exported):
    """The export check runs the artifact with onnxruntime's exact U8U8 kernels too: on every x86 CPU
    the default kernels must give the same result (this is what failed without VNNI before)."""
    out, _, reports = exported
    v = reports["onnx"].verification
    assert v.exact_int8_max_abs_diff is not None and v.passed
    assert v.exact_int8_psnr_db is None or v.exact_int8_psnr_db >= 60  # None: identical outputs
    x = np.random.default_rng(2).random((1, 3, 48, 40), dtype=np.float32)
    fast = open_artifact(out / "edge-xs_onnx_int8.onnx")
    exact = fast.exact_int8_twin()
    assert exact is not None and exact.exact_int8 and exact.exact_int8_twin() is None
    np.testing.assert_allclose(fast.run(x), exact.run(x), atol=1e-5)
    data = json.loads((out / "edge-xs_onnx_int8.json").read_text())
    assert data["verification"]["exact_int8_max_abs_diff"] is not None
    assert set(data["exported_on"]) == {"cpu_model", "cpu_flags", "isa"} and data["exported_on"]["isa"]


def test_exact_int8_failure_blocks_the_artifact():
    from datprl_edge.export.verify import Verification, check_exact_int8

    v = Verification("int8", "fake-quant", True, True, 40.0, psnr_db=50.0)
    outs = [np.full((1, 3, 4, 4), 0.5, np.float32)]
    saturated = [outs[0] + np.float32(0.05)]
    check_exact_int8(v, outs, saturated)
    assert not v.passed and "saturation" in v.note and v.exact_int8_psnr_db < 60
    assert v.exact_int8_max_abs_diff == pytest.approx(0.05)


def test_openvino_int8_holds_on_the_non_vnni_path(exported, tmp_path):
    """OpenVINO's oneDNN takes ONEDNN_MAX_CPU_ISA: on a VNNI CPU, AVX512_CORE forces the int8 kernels
    without VNNI (pairs in int16 plus compensation), the path AVX-512 CPUs without VNNI run (an
    AVX2-only CPU runs its own path natively). The artifact must still match its fake-quant model."""
    import os
    import subprocess
    import sys

    from datprl_edge.core.host import cpu_info

    flags = set(cpu_info()["flags"])
    env = dict(os.environ)
    if "avx512_vnni" in flags:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE"
    out, qat, _ = exported
    x = np.random.default_rng(3).random((1, 3, 64, 72), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, sys; from datprl_edge.runtime.sessions import open_artifact; "
            f"y = open_artifact({str(out / 'edge-xs_openvino_int8.xml')!r}).run(np.load(sys.argv[1])); "
            "np.save(sys.argv[2], y)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   env=env, check=True, capture_output=True, timeout=300)
    from datprl_edge.quantize.scope import frozen_observers

    with frozen_observers(qat.prepared):
        ref = reference_output(qat.prepared, x, 8)
    y = np.load(tmp_path / "y.npy")
    assert 10 * np.log10(1.0 / np.mean((y - ref) ** 2)) >= 40


def test_int8_from_a_qat_result_alone_records_its_routing(exported):
    """No float model: the routing table comes from the QAT program's own context output, so
    `restore --task/--domain` works on the artifact."""
    from datprl_edge.fold.routing import parse_routing_table

    out, _, _ = exported
    table = parse_routing_table(read_artifact_metadata(out / "edge-xs_onnx_int8.onnx")["routing_table"])
    assert len(table["tasks"]) == 9 and set(table["domains"]) == {"natural", "medical", "remote"}
    for entry in table["tasks"].values():
        assert abs(sum(entry["domain_weights"]) - 1) < 1e-3 and abs(sum(entry["task_weights"]) - 1) < 1e-3


def test_a_qat_checkpoint_loads_as_a_model_and_inspect_refuses_it(qat_checkpoint, capsys):
    """load_model builds a QAT checkpoint (its size check cannot run on the meta device, the base's
    does); `inspect`, which counts a float model, says what to do instead of tracing it."""
    import torch
    from conftest import run_cli

    from datprl_edge.quantize.feed import run_image
    from datprl_edge.sources import resolve_model

    _, path = qat_checkpoint
    program = resolve_model(str(path))
    with torch.no_grad():
        out = run_image(program, torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    code, _, err = run_cli(capsys, "inspect", path, "--no-latency")
    assert code == 2 and "INT8 QAT checkpoint" in err and err.count("\n") == 1 and "Traceback" not in err
