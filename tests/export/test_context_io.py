"""Artifacts of a student carry its context (models/context.py): optional inputs context and
context_mix, output context_out, the layout in the metadata, checked against torch."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import torch  # noqa: E402
from conftest import tiny_teacher  # noqa: E402

from datprl_edge.core.artifacts import CONTEXT_MIX_NAME, CONTEXT_NAME, CONTEXT_OUT_NAME  # noqa: E402
from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.models.context import (  # noqa: E402
    DOMAIN_WEIGHTS,
    TASK_WEIGHTS,
    context_layout,
    context_size,
    layout_slices,
)
from datprl_edge.runtime.sessions import inspect_artifact, open_artifact, read_artifact_metadata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(verify_images=1, verify_size=(32, 32))
TINY_RECIPE = 'name = "tiny"\ncrop = 64\n[[tasks]]\nid = "medical/ct_denoise"\ncount = 2\n'
ARTIFACTS = ("edge-xs_onnx_fp32.onnx", "edge-xs_openvino_fp32.xml")
TOL = 1e-5  # fp32 artifact vs torch (measured ~1e-7); the context effects checked are > 1e-4


@pytest.fixture(scope="module")
def model(untrained_edge_xs):
    return untrained_edge_xs.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("context")
    cfg = ExportConfig(targets=("onnx", "openvino"), precision="fp32", model_name="edge-xs", **SMALL)
    reports = export_model(model, cfg, out)
    return out, {r.target: r for r in reports}


def _torch(model, x, context=None, mix=None):
    with torch.no_grad():
        if context is None:
            return model(torch.from_numpy(x)).numpy()
        c, m = torch.from_numpy(context), torch.from_numpy(mix)
        y, own = model(torch.from_numpy(x), context=c, context_mix=m)
    return y.numpy(), own.numpy()


def _images(n=2, h=30, w=34, seed=0):
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


def test_metadata_layout_and_io(exported, model):
    out, reports = exported
    layout = context_layout(model)
    for name in ARTIFACTS:
        meta = read_artifact_metadata(out / name)
        assert json.loads(meta["context_layout"]) == [list(e) for e in layout]
        assert meta["context_size"] == str(context_size(model))
        assert CONTEXT_NAME in meta["context"] and "own + context_mix * (context - own)" in meta["context"]
        info = inspect_artifact(out / name)
        assert list(info["inputs"]) == ["input", CONTEXT_NAME, CONTEXT_MIX_NAME]
        assert list(info["outputs"]) == ["output", CONTEXT_OUT_NAME]
        session = open_artifact(out / name)
        assert session.context_layout == layout and session.context_size == context_size(model)
    for r in reports.values():
        v = r.verification
        assert v.context_checked and v.context_passed and v.passed
        assert v.context_psnr_db is None or v.context_psnr_db >= v.threshold_db
        assert v.context_out_max_abs_diff < TOL and v.context_effect_max_abs_diff > 1e-4
        report = json.loads((out / f"{r.path.stem}.json").read_text())
        assert report["verification"]["context_checked"] is True


def test_onnx_context_inputs_are_optional(exported, model):
    import onnxruntime as ort

    out, _ = exported
    sess = ort.InferenceSession(str(out / ARTIFACTS[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert {i.name for i in sess.get_overridable_initializers()} == {CONTEXT_NAME, CONTEXT_MIX_NAME}
    x = _images(1, 32, 40)
    y, own = sess.run(None, {"input": x})  # the image alone: the model's own behaviour
    assert np.abs(y - _torch(model, x)).max() < TOL
    k = context_size(model)
    ref_y, ref_own = _torch(model, x, np.zeros((1, k), np.float32), np.zeros((1, k), np.float32))
    assert np.abs(own - ref_own).max() < TOL


@pytest.mark.parametrize("name", ARTIFACTS)
def test_mix_zero_is_the_model(exported, model, name):
    out, _ = exported
    session = open_artifact(out / name)
    x = _images()
    k = session.context_size
    y = session.run(x)
    y0, own = session.run_with_context(x, np.random.default_rng(1).random((2, k), dtype=np.float32),
                                       np.zeros((2, k), np.float32))
    ref = _torch(model, x)
    assert np.abs(y - ref).max() < TOL and np.abs(y0 - ref).max() < TOL
    _, ref_own = _torch(model, x, np.zeros((2, k), np.float32), np.zeros((2, k), np.float32))
    assert own.shape == (2, k) and np.abs(own - ref_own).max() < TOL


@pytest.mark.parametrize("name", ARTIFACTS)
def test_given_context_matches_torch(exported, model, name):
    out, _ = exported
    session = open_artifact(out / name)
    x = _images()
    k = session.context_size
    zeros = np.zeros((2, k), np.float32)
    _, other = _torch(model, 1 - _images(seed=5), zeros, zeros)  # other images' own context
    ones = np.ones((2, k), np.float32)
    y, own = session.run_with_context(x, other, ones)
    ref, ref_own = _torch(model, x, other, ones)
    assert np.abs(y - ref).max() < TOL and np.abs(own - ref_own).max() < TOL
    assert np.abs(ref - _torch(model, x)).max() > 1e-4  # the context did change the output
    y1, _ = session.run_with_context(x[:1], other[:1], ones[:1])
    assert np.abs(y1 - ref[:1]).max() < TOL


@pytest.mark.parametrize("name", ARTIFACTS)
def test_forced_routing_matches_torch(exported, model, name):
    out, _ = exported
    session = open_artifact(out / name)
    x = _images(1)
    k = session.context_size
    slices = layout_slices(session.context_layout)
    context, mix = np.zeros((1, k), np.float32), np.zeros((1, k), np.float32)
    for entry, index in ((DOMAIN_WEIGHTS, 2), (TASK_WEIGHTS, 4)):
        s = slices[entry]
        context[0, s.start + index] = 1.0
        mix[0, s] = 1.0
    y, own = session.run_with_context(x, context, mix)
    ref, ref_own = _torch(model, x, context, mix)
    assert np.abs(y - ref).max() < TOL and np.abs(own - ref_own).max() < TOL
    assert np.abs(y - session.run(x)).max() > 1e-4  # forcing the prompts changes the restoration


def test_teacher_exports_the_image_only(tmp_path):
    teacher = tiny_teacher().eval()
    cfg = ExportConfig(targets="onnx", precision="fp32", model_name="teacher", **SMALL)
    (r,) = export_model(teacher, cfg, tmp_path)
    info = inspect_artifact(r.path)
    assert list(info["inputs"]) == ["input"] and list(info["outputs"]) == ["output"]
    assert "context_layout" not in info["metadata"] and "context_size" not in info["metadata"]
    session = open_artifact(r.path)
    assert session.context_layout == [] and session.context_size == 0
    assert not r.verification.context_checked and r.verification.context_passed is None
    x = _images(1)
    assert np.abs(session.run(x) - _torch(teacher, x)).max() < TOL


def test_folded_static_student_has_block_entries_only(model, tmp_path):
    pytest.importorskip("datprl_edge.fold.folding")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    cfg = ExportConfig(targets="onnx", precision="fp32", task="medical/ct_denoise", calibration=str(recipe),
                       model_name="edge-xs", **SMALL)
    (r,) = export_model(model, cfg, tmp_path / "out")
    layout = [tuple(e) for e in json.loads(read_artifact_metadata(r.path)["context_layout"])]
    student = context_layout(model)
    assert layout == student[4:] and all(name.split(".")[0] in ("encoders", "middle_blks", "decoders")
                                         for name, _ in layout)
    assert r.verification.context_checked and r.verification.context_passed


def test_coreml_spec_has_optional_context_inputs(model, tmp_path):
    pytest.importorskip("coremltools")
    cfg = ExportConfig(targets="coreml", model_name="edge-xs", **SMALL)
    (r,) = export_model(model, cfg, tmp_path)
    info = inspect_artifact(r.path)
    k = context_size(model)
    assert list(info["inputs"]) == ["input", CONTEXT_NAME, CONTEXT_MIX_NAME]
    assert list(info["outputs"]) == ["output", CONTEXT_OUT_NAME]
    for name in (CONTEXT_NAME, CONTEXT_MIX_NAME):
        assert info["inputs"][name]["shape"] == [1, k] and info["inputs"][name]["default"] == 0.0
    assert info["size_range"] == {"h": [8, 4096], "w": [8, 4096]}
    assert json.loads(info["metadata"]["context_layout"]) == [list(e) for e in context_layout(model)]
    assert open_artifact(r.path).context_size == k
