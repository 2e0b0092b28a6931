"""The INT8-first student `edge-q8` through the OpenVINO INT8 export: in the graph the CPU plugin
compiles, every conv of its blocks and samplers runs an int8 kernel; only the scheme's float layers
(the image convs) and the prompt path's mapper convs run in float."""

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import ptq_export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return ptq_export("edge-q8", tmp_path_factory.mktemp("q8"), verify_size=(64, 64), verify_images=1)


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
