"""INT8 OpenVINO from the OpenVINO QAT result (NNCF): FakeQuantize ops and int8 weights, parity
with the fake-quant model."""

import json

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import ptq_export  # noqa: E402

from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact, read_artifact_metadata  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8ov")
    return out, ptq_export("edge-xs", out)


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


def test_int8_weights_cannot_saturate_without_vnni(exported):
    """Without VNNI the CPU plugin's u8 x s8 kernels add pairs of products in saturating int16: with
    NNCF's overflow fix on every dense conv their stored weights stay within 7 bits, so the largest
    pair, 255 * 64 * 2 = 32640, fits, and AVX2 and VNNI CPUs compute the same sums."""
    from datprl_edge.quantize.openvino import OVERFLOW_FIX
    from datprl_edge.runtime.openvino import SAFE_INT8_WEIGHT, saturation_warning

    out, r = exported
    peak = inspect_artifact(r.path)["int8_weight_peak"]
    assert OVERFLOW_FIX == "enable" and peak is not None
    assert 32 < peak <= SAFE_INT8_WEIGHT and 255 * 2 * SAFE_INT8_WEIGHT <= 32767  # 7 bits used, not fewer
    assert saturation_warning(r.path.name, peak, ["avx2", "fma"]) is None


def test_full_range_int8_weights_warn_only_without_vnni():
    from datprl_edge.core.host import int8_pairs_saturate
    from datprl_edge.runtime.openvino import saturation_warning

    avx2, vnni = ["avx", "avx2", "fma"], ["avx2", "avx512f", "avx512_vnni"]
    assert int8_pairs_saturate(avx2) and int8_pairs_saturate(avx2 + ["avx512f"])
    assert not int8_pairs_saturate(vnni) and not int8_pairs_saturate(["neon"])
    note = saturation_warning("m_openvino_int8.xml", 127, avx2)
    assert note.startswith("m_openvino_int8.xml has int8 weights up to 127") and "re-export" in note
    assert "\n" not in note
    assert saturation_warning("m.xml", 127, vnni) is None and saturation_warning("m.xml", None, avx2) is None


def test_worst_case_products_compute_the_same_on_every_cpu():
    """Inputs at the top of their range and same-sign weights at the top of theirs: every product pair
    is as large as it can be. With the scheme's NNCF settings the OpenVINO CPU plugin still computes
    what the fake-quant model computes, with or without VNNI (with NNCF's default overflow fix, first
    conv only, an AVX2-only CPU returned 906 where the model gave 1790). The depthwise conv keeps
    full-range weights (NNCF's fix covers dense convs only): its kernel widens before it adds."""
    import numpy as np
    import openvino as ov
    import torch

    from datprl_edge.quantize.openvino import _nncf, nncf_settings

    nncf = _nncf()

    class Worst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(16, 16, 1, bias=False)
            self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
            self.b = torch.nn.Conv2d(16, 16, 1, bias=False)
            for conv in (self.a, self.dw, self.b):
                torch.nn.init.ones_(conv.weight)

        def forward(self, x):
            return self.b(torch.relu(self.dw(torch.relu(self.a(x)))))

    x = torch.ones(1, 16, 8, 8)
    with torch.no_grad():
        q = nncf.quantize(Worst().eval(), nncf.Dataset([x, torch.rand(1, 16, 8, 8)]), subset_size=2,
                          **nncf_settings()).eval()
        ref = q(x).numpy()
    compiled = ov.Core().compile_model(ov.convert_model(q, example_input=x), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(x.numpy())[0]
    assert ref.max() > 1000
    np.testing.assert_allclose(out, ref, rtol=1e-4)
