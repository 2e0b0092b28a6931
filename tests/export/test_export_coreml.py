"""Core ML export: mlprogram for iOS 17, flexible sizes, metadata, structural check off macOS."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("coremltools")

from datprl_edge.core.errors import ConfigError, PlatformError  # noqa: E402
from datprl_edge.export.driver import ExportConfig, export_model  # noqa: E402
from datprl_edge.runtime.sessions import inspect_artifact, open_artifact, read_artifact_metadata  # noqa: E402

SMALL = dict(verify_images=1, verify_size=(64, 64))
LINUX = sys.platform != "darwin"


@pytest.fixture(scope="module")
def model(untrained_edge_xs):
    return untrained_edge_xs


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    reports = export_model(model, ExportConfig(targets="coreml", precision="fp32,fp16", model_name="edge-xs",
                                               tile_size=128, **SMALL), out)
    return out, {r.precision: r for r in reports}


def test_default_precision_is_fp16():
    from datprl_edge.core.targets import resolve_target

    default = resolve_target("coreml").default_precision
    assert ExportConfig(targets="coreml").precisions_for(default) == ["fp16"]


def test_mlprogram_ios17_with_range_shapes(exported):
    out, reports = exported
    for precision in ("fp32", "fp16"):
        info = inspect_artifact(out / f"edge-xs_coreml_{precision}.mlpackage")
        assert info["model_type"] == "mlProgram" and info["specification_version"] >= 8  # iOS 17
        assert list(info["inputs"]) == ["input", "context", "context_mix"]  # the student's context
        assert list(info["outputs"]) == ["output", "context_out"]
        assert info["size_range"] == {"h": [8, 4096], "w": [8, 4096]}
        assert info["inputs"]["input"]["shape"] == [1, 3, 128, 128]  # default = the tile size
        assert info["ops"]["conv"] > 0
    fp32 = reports["fp32"].size_bytes
    assert reports["fp16"].size_bytes < 0.65 * fp32


def test_report_says_numerics_not_checked_off_macos(exported):
    out, reports = exported
    data = json.loads((out / "edge-xs_coreml_fp16.json").read_text())
    if LINUX:
        assert data["numerics_checked"] is False and data["verification"]["psnr_db"] is None
        assert "numerics not checked" in data["verification"]["note"]
    else:
        assert data["numerics_checked"] is True and data["verification"]["psnr_db"] >= 45
    assert data["notes"]["traced_graph_max_abs_diff_at_other_size"] < 1e-3
    assert data["notes"]["compute_units"] == "ALL"


def test_metadata_and_compute_units(exported):
    out, _ = exported
    meta = read_artifact_metadata(out / "edge-xs_coreml_fp16.mlpackage")
    assert meta["model_name"] == "edge-xs" and meta["compute_units"] == "ALL"
    assert meta["input_layout"] == "NCHW" and meta["input_multiple"] == "8" and meta["tile_size"] == "128"
    assert meta["precision"] == "fp16" and meta["tasks"] == "auto"


@pytest.mark.skipif(not LINUX, reason="prediction works on macOS")
def test_prediction_off_macos_raises_platform_error(exported):
    out, _ = exported
    session = open_artifact(out / "edge-xs_coreml_fp16.mlpackage")
    assert session.metadata["precision"] == "fp16"
    with pytest.raises(PlatformError, match="needs macOS"):
        session.run(np.zeros((1, 3, 64, 64), np.float32))


def test_enumerated_shapes_and_compute_units(model, tmp_path):
    (r,) = export_model(model, ExportConfig(targets="coreml", shapes=((64, 64), (64, 96)),
                                            compute_units="cpu_and_ne", **SMALL), tmp_path)
    info = inspect_artifact(r.path)
    assert sorted(info["enumerated_hw"]) == [(64, 64), (64, 96)]
    assert read_artifact_metadata(r.path)["compute_units"] == "CPU_AND_NE"


def test_shapes_must_be_multiples_of_the_pad_multiple(model, tmp_path):
    with pytest.raises(ConfigError, match=r"multiples of the model's pad multiple 8.*try 64x72"):
        export_model(model, ExportConfig(targets="coreml", shapes=((60, 70),), **SMALL), tmp_path)
    assert list(tmp_path.iterdir()) == []


TINY_RECIPE = 'name = "tiny"\ncrop = 64\n[[tasks]]\nid = "medical/ct_denoise"\ncount = 2\n'


def test_task_exports_the_statically_folded_model(model, tmp_path):
    pytest.importorskip("datprl_edge.fold.folding")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "out"
    cfg = ExportConfig(targets="coreml", task="medical/ct_denoise", calibration=str(recipe),
                       model_name="edge-xs", **SMALL)
    (r,) = export_model(model, cfg, out)
    assert r.path.name == "edge-xs-medical-ct-denoise_coreml_fp16.mlpackage"
    info = inspect_artifact(r.path)
    assert "topk" not in info["ops"] and "gather" not in info["ops"]  # no prompt pools left
    assert read_artifact_metadata(r.path)["tasks"] == "medical/ct_denoise"
    assert r.notes["folded_task"] == "medical/ct_denoise" and r.notes["fold_psnr_db"] >= 60
