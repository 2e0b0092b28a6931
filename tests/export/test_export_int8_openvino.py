"""INT8 OpenVINO from the OpenVINO QAT result (NNCF): FakeQuantize ops and int8 weights, parity
with the fake-quant model."""

import json

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact, read_artifact_metadata  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    from datprl_edge.quantize.qat import QATConfig, run_qat
    from datprl_edge.sources import _synthetic

    torch.manual_seed(0)
    calib = [_synthetic(64, 64, 3, s)[0] for s in range(2)]
    config = QATConfig(target="openvino", steps=0, calib_batches=1, batch_size=2, val_images=0)
    qat = run_qat(create_model("edge-xs"), config, calib)
    out = tmp_path_factory.mktemp("int8ov")
    cfg = ExportConfig(targets="openvino", precision="int8", model_name="edge-xs", verify_images=2,
                       verify_size=(60, 68))
    (report,) = export_model(qat, cfg, out)
    return out, report


def test_report_and_parity_against_fake_quant(exported):
    out, r = exported
    data = json.loads((out / "edge-xs_openvino_int8.json").read_text())
    assert data["notes"]["int8_source"] == "the given QAT result PTQ"
    v = data["verification"]
    assert v["passed"] and v["psnr_db"] >= 40 and v["reference"].startswith("fake-quant")
    assert len(v["images"]) == 2 and v["images"][0].endswith("60x68")


def test_openvino_int8_is_fake_quantize_with_int8_weights(exported):
    out, r = exported
    info = inspect_artifact(r.path)
    assert info["ops"]["FakeQuantize"] > 0
    # every conv weight the scheme quantizes is stored as int8 (one byte per weight); the scheme's
    # float layers (image and channel-attention convs) and the prompt path stay f32
    from datprl_edge.quantize.openvino import scheme_float_layers
    from datprl_edge.quantize.scope import quantizable_layers

    model = create_model("edge-xs")
    floats = set(scheme_float_layers(model))
    int8 = sum(model.get_submodule(n).weight.numel() for n in quantizable_layers(model) if n not in floats)
    assert info["weight_bytes"]["i8"] == int8
    meta = read_artifact_metadata(r.path)
    assert meta["input_multiple"] == "8" and meta["int8_scheme"].startswith("NNCF")  # traced by OpenVINO
    assert "NNCF" in r.notes["conversion"]
