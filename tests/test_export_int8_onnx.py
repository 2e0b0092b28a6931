"""INT8 from a QAT checkpoint: QDQ ONNX (int8 initializers) and OpenVINO from that QDQ ONNX."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("torchao")

from datprl_edge.errors import ConfigError  # noqa: E402
from datprl_edge.export import ExportConfig, export_model, reference_output  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.runtime import inspect_artifact, open_artifact, read_artifact_metadata  # noqa: E402

SMALL = dict(verify_images=1, verify_size=(60, 68))


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory):
    import torch

    from datprl_edge.export_sources import _synthetic
    from datprl_edge.qat import QATConfig, run_qat, save_qat

    torch.manual_seed(0)
    model = create_model("edge-xs")
    calib = [_synthetic(64, 64, 3, s)[0] for s in range(4)]
    config = QATConfig(target="onnx", steps=0, calib_batches=2, batch_size=2, val_images=0)
    result = run_qat(model, config, calib)
    path = save_qat(result, tmp_path_factory.mktemp("qat") / "edge-xs-int8-onnx.safetensors")
    return model, path


@pytest.fixture(scope="module")
def exported(qat_checkpoint, tmp_path_factory):
    from datprl_edge.qat import load_qat

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
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quantized = sum(m.weight.numel() for m in layers)
    assert info["weight_bytes"]["int8"] >= quantized  # every conv / linear weight, prompt path included
    total_params = sum(p.numel() for p in model.parameters())
    assert info["weight_bytes"]["int8"] + info["weight_bytes"]["float32"] < 0.3 * 4 * total_params


def test_prompt_path_is_weight_only_int8(exported, qat_checkpoint):
    """Prompt-path linears (query-mapper proj, pool value aggregation, FiLM prompt projections) read
    int8 weights through DequantizeLinear but float activations, so top-k routing sees float queries."""
    import onnx
    from torch import nn

    linears = sum(isinstance(m, nn.Linear) for m in qat_checkpoint[0].modules())
    graph = onnx.load(exported[0] / "edge-xs_onnx_int8.onnx").graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    producer = {out: node for node in graph.node for out in node.output}

    def from_dq(name, int8_only=False):
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and (
            not int8_only or node.input[0] in int8)

    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert weighted and all(from_dq(n.input[1], int8_only=True) for n in weighted)
    gemms = [n for n in graph.node if n.op_type == "Gemm"]  # edge-xs: every Linear is on the prompt path
    assert len(gemms) == linears and not any(from_dq(n.input[0]) for n in gemms)


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
    monkeypatch.setattr("datprl_edge.qat.load_qat", lambda path: loaded)  # already checked by the fixture
    seen = {}
    def fake_export(model, config, out, progress=None):
        seen.update(model=model, config=config)
        return []

    monkeypatch.setattr("datprl_edge.export.export_model", fake_export)
    _, path = qat_checkpoint
    code, out, err = run_cli(capsys, "export", path, "--target", "onnx", "--precision", "int8",
                             "-o", tmp_path)
    assert code == 0, err
    assert seen["model"] is loaded and seen["config"].source_sha256 != "random-init"
    assert "QAT checkpoint" in out and cmd.DEFAULT_MODEL == "bundled:edge-xs"
