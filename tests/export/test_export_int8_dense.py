"""The INT8-first student `edge-q8` through the OpenVINO INT8 export: in the graph the CPU plugin
compiles, every conv of its blocks and samplers runs an int8 kernel; only the scheme's float layers
(the image convs) and the prompt path's mapper convs run in float."""

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    from datprl_edge.quantize.qat import QATConfig, run_qat
    from datprl_edge.sources import _synthetic

    torch.manual_seed(0)
    calib = [_synthetic(64, 64, 3, s)[0] for s in range(2)]
    config = QATConfig(target="openvino", steps=0, calib_batches=1, batch_size=2, val_images=0)
    qat = run_qat(create_model("edge-q8"), config, calib)
    cfg = ExportConfig(targets="openvino", precision="int8", model_name="edge-q8", verify_images=1,
                       verify_size=(64, 64))
    (report,) = export_model(qat, cfg, tmp_path_factory.mktemp("q8"))
    return report


def test_every_block_and_sampler_conv_runs_int8(exported):
    import openvino as ov

    assert exported.verification.passed and exported.verification.numerics_checked
    core = ov.Core()
    model = core.read_model(str(exported.path))
    model.reshape({model.inputs[0]: [1, 3, 64, 64]})
    runtime = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    precision = {}
    for op in runtime.get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            layer = info["originalLayersNames"].astype(str).split("/")[0].removeprefix("__module.model.")
            precision[layer] = info["runtimePrecision"].astype(str)
    stages = ("encoders.", "middle_blks.", "decoders.", "downs.", "ups.")
    blocks = [n for n in precision if n.startswith(stages)]
    assert len(blocks) == 7 * 2 + 3 + 3
    assert all(precision[n] in ("u8", "i8") for n in blocks), precision
    assert sorted(n for n, p in precision.items() if p == "f32") == [
        "degradation_mapper.conv", "domain_mapper.conv", "ending", "intro"]
