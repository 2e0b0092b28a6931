"""ONNX and OpenVINO export at FP32/FP16: parity with torch, metadata, shapes, atomic failure."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from datprl_edge.core.errors import ConfigError, OutputExistsError, VerificationError  # noqa: E402
from datprl_edge.export import verify  # noqa: E402
from datprl_edge.export.driver import ExportConfig, export_model, reference_output  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact, open_artifact, read_artifact_metadata  # noqa: E402

SMALL = dict(verify_images=1, verify_size=(60, 68))


@pytest.fixture(scope="module")
def model(untrained_edge_xs):
    return untrained_edge_xs


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    cfg = ExportConfig(targets=("onnx", "openvino"), precision="fp32,fp16", model_name="edge-xs",
                       source_sha256="ab" * 32, **SMALL)
    reports = export_model(model, cfg, out)
    return out, {(r.target, r.precision): r for r in reports}


def test_every_artifact_passes_with_report(exported):
    out, reports = exported
    assert set(reports) == {("onnx", "fp32"), ("onnx", "fp16"), ("openvino", "fp32"), ("openvino", "fp16")}
    for target, precision in reports:
        data = json.loads((out / f"edge-xs_{target}_{precision}.json").read_text())
        assert data["numerics_checked"] is True and data["verification"]["passed"] is True
        assert data["verification"]["psnr_db"] >= verify.MIN_PSNR_DB[precision]
        assert data["verification"]["max_abs_diff"] is not None
        assert all((out / f).exists() for f in data["files"])
    assert (out / "edge-xs_openvino_fp32.bin").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_metadata_embedded_in_each_artifact(exported):
    out, _ = exported
    for name in ("edge-xs_onnx_fp32.onnx", "edge-xs_onnx_fp16.onnx", "edge-xs_openvino_fp16.xml"):
        meta = read_artifact_metadata(out / name)
        assert meta["model_name"] == "edge-xs" and meta["tasks"] == "auto"
        assert meta["input_layout"] == "NCHW" and meta["input_range"] == "[0,1]"
        assert meta["tile_size"] == "256" and meta["tile_overlap"] == "16" and meta["pad_multiple"] == "8"
        assert meta["source_sha256"] == "ab" * 32
        assert meta["toolkit_version"] and meta["precision"] in name


def test_onnx_structure_opset_dynamic_and_fp16(exported):
    out, _ = exported
    fp32 = inspect_artifact(out / "edge-xs_onnx_fp32.onnx")
    fp16 = inspect_artifact(out / "edge-xs_onnx_fp16.onnx")
    assert fp32["checker"] == "passed" and fp16["checker"] == "passed"
    assert fp32["opset"] >= 17
    dims = fp32["inputs"]["input"]
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:])  # dynamic H and W
    assert fp16["weight_bytes"].get("float16", 0) > 10 * fp16["weight_bytes"].get("float32", 1)
    assert fp16["size_bytes"] < 0.65 * fp32["size_bytes"]


def test_sessions_match_torch_at_odd_sizes(exported, model):
    out, _ = exported
    x = np.random.default_rng(0).random((2, 3, 37, 53), dtype=np.float32)
    ref = reference_output(model, x, 8)
    for name, tol in (("edge-xs_onnx_fp32.onnx", 1e-4), ("edge-xs_openvino_fp32.xml", 1e-4),
                      ("edge-xs_onnx_fp16.onnx", 2e-2), ("edge-xs_openvino_fp16.xml", 2e-2)):
        y = open_artifact(out / name).run(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert np.abs(y - ref).max() < tol, name


def test_openvino_fp16_weights_are_compressed(exported):
    out, _ = exported
    fp32 = inspect_artifact(out / "edge-xs_openvino_fp32.xml")
    fp16 = inspect_artifact(out / "edge-xs_openvino_fp16.xml")
    assert fp16["weight_bytes"].get("f16", 0) > 0 and fp32["weight_bytes"].get("f16", 0) == 0
    sizes = {p: (out / f"edge-xs_openvino_{p}.bin").stat().st_size for p in ("fp32", "fp16")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    assert fp16["inputs"]["input"] == "[1,3,?,?]"


def test_existing_outputs_are_refused(exported, model):
    out, _ = exported
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_model(model, ExportConfig(targets="onnx", **SMALL), out)


class TinyNet:
    """A one-conv stand-in with the attributes export reads (fast to export)."""

    def __new__(cls):
        import torch

        net = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
        net.img_channel, net.pad_multiple = 3, 1
        return net


def test_failed_verification_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(verify.MIN_PSNR_DB, "fp32", 1000.0)
    with pytest.raises(VerificationError, match=r"artifact not kept: tiny_onnx_fp32.onnx: .* dB < 1000.0 dB"):
        export_model(TinyNet(), ExportConfig(targets="onnx", model_name="tiny", tile_size=64, **SMALL),
                     tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_static_openvino_shape(model, tmp_path):
    (r,) = export_model(model, ExportConfig(targets="openvino", precision="fp32", shapes=((48, 56),),
                                            model_name="static", **SMALL), tmp_path)
    assert r.verification.passed and r.verification.images[0].endswith("48x56")
    session = open_artifact(r.path)
    assert session.static_hw == (48, 56)
    with pytest.raises(ConfigError, match="48x56 inputs only"):
        session.run(np.zeros((1, 3, 40, 40), np.float32))
    assert read_artifact_metadata(r.path)["shapes"] == "48x56"
