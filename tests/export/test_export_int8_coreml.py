"""INT8 Core ML from a float model: LinearQuantizer PTQ runs first and the report says so; the
package is W8A8 (int8 constexpr weights, quantize/dequantize activations)."""

import json

import pytest

pytest.importorskip("coremltools")

from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact  # noqa: E402

TINY_RECIPE = """
name = "tiny"
crop = 64
[[tasks]]
id = "natural/derain"
count = 2
[[tasks]]
id = "medical/ct_denoise"
count = 2
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("int8coreml")
    recipe = out.parent / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    cfg = ExportConfig(targets="coreml", precision="int8", model_name="edge-xs", verify_images=2,
                       verify_size=(64, 64), calibration=str(recipe))
    return out, {r.target: r for r in export_model(create_model("edge-xs"), cfg, out)}


def test_report_says_ptq_from_the_float_model(exported):
    out, reports = exported
    data = json.loads((out / "edge-xs_coreml_int8.json").read_text())
    assert data["notes"]["int8_source"].startswith("post-training quantization (0 QAT steps) of the float "
                                                   "model with the coreml quantizer")
    assert "calibration recipe 'tiny' (4 pairs)" in data["notes"]["int8_source"]
    assert data["verification"]["reference"].startswith("fake-quant")
    if data["numerics_checked"]:  # verified on the calibration images, one task after the other
        tasks = [i.split(" #")[0] for i in data["verification"]["images"]]
        assert tasks == ["natural/derain", "medical/ct_denoise"]


def test_coreml_int8_is_w8a8(exported):
    out, reports = exported
    info = inspect_artifact(reports["coreml"].path)
    assert info["ops"]["constexpr_affine_dequantize"] > 0 and info["ops"]["quantize"] > 0
    elements = info["weight_elements"]
    assert elements["INT8"] > 0.5 * sum(elements.values())
    assert "W8A8" in reports["coreml"].notes["int8_format"]
