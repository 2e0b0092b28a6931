"""Export command, target table, profiles, config checks and error paths (mostly without exporting)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from datprl_edge.core.artifacts import artifact_stem, build_metadata
from datprl_edge.core.errors import ConfigError, MissingBackendError, UnknownChoiceError
from datprl_edge.core.targets import parse_targets, resolve_target, target_names
from datprl_edge.export.config import ExportConfig, list_profiles, load_profile
from datprl_edge.export.verify import MIN_PSNR_DB, compare_outputs

REPO = Path(__file__).resolve().parents[2]


def test_target_table_and_did_you_mean():
    assert target_names() == ("onnx", "openvino", "coreml")
    assert [s.name for s in parse_targets("all")] == ["onnx", "openvino", "coreml"]
    assert [s.name for s in parse_targets("coreml,onnx,coreml")] == ["coreml", "onnx"]
    with pytest.raises(UnknownChoiceError, match="did you mean 'openvino'"):
        resolve_target("openvno")
    with pytest.raises(UnknownChoiceError, match="did you mean 'fp16'"):
        ExportConfig(precision="fp61")


def test_importing_targets_runtime_and_cli_loads_no_backend():
    code = ("import sys, datprl_edge.runtime.sessions, datprl_edge.export.config, datprl_edge.cli.main as m; "
            "m.build_parser(); "
            "print([k for k in ('torch', 'onnx', 'onnxruntime', 'openvino', 'coremltools', 'nncf') "
            "if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_every_profile_loads_into_a_config():
    names = list_profiles()
    assert {"onnx-cpu", "openvino-cpu-int8", "coreml-ios17-ane"} <= set(names)
    for name in names:
        cfg = ExportConfig(**load_profile(name))
        assert cfg.profile == name and len(cfg.targets) == 1
    ane = ExportConfig(**load_profile("coreml-ios17-ane"))
    assert ane.compute_units == "CPU_AND_NE" and ane.shapes == ((256, 256), (512, 512))
    with pytest.raises(UnknownChoiceError, match="did you mean 'onnx-cpu'"):
        load_profile("onnx-cpuu")


def test_profile_with_unknown_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('target = "onnx"\nprecison = "fp16"\n')
    with pytest.raises(ConfigError, match="unknown key.*precison"):
        load_profile(p)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tile_size=64, tile_overlap=32), "less than half the tile size"),
    (dict(verify_images=0), "verify_images must be an integer >= 1"),
    (dict(compute_units="NEURAL"), "unknown Core ML compute units"),
    (dict(shapes=((0, 64),)), "between 1 and 16384"),
    (dict(qat_steps=-1), "qat_steps"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kwargs)


def test_folded_int8_defaults_to_qat():
    """A folded export (--task) quantizes with FOLDED_QAT_STEPS of QAT unless told; the all-in-one
    model with post-training quantization; an explicit 0 stays 0."""
    from datprl_edge.export.config import FOLDED_QAT_STEPS

    assert FOLDED_QAT_STEPS == 300
    assert ExportConfig(task="remote/dehaze").qat_steps == FOLDED_QAT_STEPS
    assert ExportConfig().qat_steps == 0 and ExportConfig(task="remote/dehaze", qat_steps=0).qat_steps == 0


def test_metadata_and_naming():
    meta = build_metadata(model_name="edge-xs", target="onnx", precision="int8", tasks=["medical/ct_denoise"],
                          source_sha256="f" * 64, extra={"calibration": {"images": 4}})
    assert meta["tasks"] == "medical/ct_denoise" and meta["input_layout"] == "NCHW"
    assert meta["calibration"] == '{"images": 4}' and all(isinstance(v, str) for v in meta.values())
    assert artifact_stem("bundled:edge-xs", "coreml", "fp16") == "edge-xs_coreml_fp16"


def test_verification_thresholds():
    ref = [np.full((1, 3, 8, 8), 0.5, np.float32)]
    assert MIN_PSNR_DB == {"fp32": 60.0, "fp16": 45.0, "int8": 40.0}
    close = compare_outputs(ref, [ref[0] + 1e-4], "fp32", "FP32 torch model")
    assert close.passed and 79 < close.psnr_db < 81
    far = compare_outputs(ref, [ref[0] + 1e-2], "fp16", "FP32 torch model")
    assert not far.passed and abs(far.max_abs_diff - 1e-2) < 1e-6
    nan = compare_outputs(ref, [ref[0] * np.nan], "int8", "fake-quant")
    assert not nan.passed and "NaN" in nan.note


def test_cli_mistyped_target(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "coreml2", "-o", tmp_path)
    assert code == 2 and "did you mean 'coreml'" in err and "Traceback" not in err


def test_cli_needs_a_target(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "edge-xs", "-o", tmp_path)
    assert code == 2 and "--target" in err


def test_cli_without_bundled_student(capsys, tmp_path, monkeypatch):
    import datprl_edge.models.loading as loading

    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path / "none")
    code, _, err = run_cli(capsys, "export", "--target", "onnx", "-o", tmp_path / "out")
    assert code == 2 and "no bundled student in this install" in err


def test_cli_unsupported_combinations(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "openvino", "--shape", "64x64", "128x128",
                           "-o", tmp_path)
    assert code == 2 and "OpenVINO IR takes one static shape" in err
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "coreml", "--shape", "60x60",
                           "-o", tmp_path)
    assert code == 2 and "multiples of the model's pad multiple 8" in err
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "onnx", "--tile", "100", "-o", tmp_path)
    assert code == 2 and "multiple of the model's pad multiple" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_backend_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "onnx", "-o", tmp_path)
    assert code == 2 and "pip install onnxruntime" in err
    from datprl_edge.runtime.sessions import open_artifact

    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"not onnx")
    with pytest.raises(MissingBackendError, match="onnxruntime"):
        open_artifact(fake)


def test_missing_coreml_backend(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    from datprl_edge.export.driver import export_model
    from datprl_edge.models.registry import create_model

    with pytest.raises(MissingBackendError, match="pip install coremltools"):
        export_model(create_model("edge-xs"), ExportConfig(targets="coreml"), tmp_path)


def test_runtime_rejects_unknown_files(tmp_path):
    from datprl_edge.runtime.sessions import open_artifact

    with pytest.raises(ConfigError, match="not an exported artifact"):
        open_artifact(tmp_path / "model.tflite")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_cli_end_to_end_json(capsys, tmp_path):
    code, out, err = run_cli(capsys, "export", "edge-xs", "--profile", "onnx-cpu", "--shape", "64x64",
                             "--verify-images", "1", "--json", "-o", tmp_path)
    assert code == 0, err
    (report,) = json.loads(out)
    assert report["artifact"] == "edge-xs_onnx_fp32.onnx" and report["verification"]["passed"]
    meta = report["metadata"]
    assert meta["profile"] == "onnx-cpu" and meta["source_sha256"] == "random-init"
    assert meta["shapes"] == "64x64" and report["structure"]["inputs"]["input"] == [1, 3, 64, 64]
    assert "exporting onnx fp32" in err
    # The runtime runs the artifact with numpy + onnxruntime only.
    code = ("import sys, numpy as np; from datprl_edge.runtime.sessions import open_artifact; "
            f"s = open_artifact({str(tmp_path / report['artifact'])!r}); "
            "y = s.run(np.zeros((1, 3, 64, 64), np.float32)); "
            "print(y.shape, s.metadata['model_name'], 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert res.stdout.strip() == "(1, 3, 64, 64) edge-xs False"


def test_cli_unknown_task(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "onnx", "--task", "medical/ct_denoize",
                           "-o", tmp_path)
    assert code == 2 and "did you mean 'medical/ct_denoise'" in err


def test_folded_models_carry_their_task_into_the_metadata():
    from types import SimpleNamespace

    from datprl_edge.export.driver import _folded_tasks

    assert _folded_tasks(SimpleNamespace(tasks=("medical/ct_denoise",)), None) == ["medical/ct_denoise"]
    qat = SimpleNamespace(base_options={"tasks": ["remote/dehaze"], "width": 16})
    assert _folded_tasks(None, qat) == ["remote/dehaze"]
    assert _folded_tasks(SimpleNamespace(), None) is None  # an unfolded model routes itself: "auto"


def test_default_model_takes_each_targets_shipped_int8_weights():
    import dataclasses

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.sources import export_plan, locate_model

    config = ExportConfig(targets=("onnx", "openvino"), precision="fp32,int8")
    parts = [(c.targets, c.precision, spec) for c, spec in export_plan(None, config)]
    assert parts == [(("onnx",), "int8", "bundled:edge-xs-int8-onnx"),
                     (("openvino",), "int8", "bundled:edge-xs-int8-openvino"),
                     (("onnx", "openvino"), "fp32", "bundled:edge-xs")]
    shipped = locate_model("bundled:edge-xs-int8-onnx")
    assert shipped.qat and shipped.name == "edge-xs"  # edge-xs_onnx_int8 beside its fp32/fp16 files
    assert "shipped QAT weights edge-xs-int8-onnx.safetensors" in shipped.label
    task = dataclasses.replace(config, task="medical/ct_denoise")  # folding needs the float student
    assert export_plan(None, task) == [(task, "bundled:edge-xs")]
    assert export_plan("m.safetensors", config) == [(config, "m.safetensors")]
    named = [(c.targets, c.precision, spec) for c, spec in export_plan("bundled:edge-xs", config)]
    assert named == parts  # the bundled student named: the same plan
    assert export_plan("bundled:edge-xs-int8-onnx", config) == [(config, "bundled:edge-xs-int8-onnx")]
    fp32 = dataclasses.replace(config, precision="fp32")
    assert export_plan("bundled:edge-xs", fp32) == [(fp32, "bundled:edge-xs")]
    lat = [(c.targets, c.precision, spec) for c, spec in export_plan("bundled:edge-lat", config)]
    assert lat == [(("openvino",), "int8", "bundled:edge-lat-int8-openvino"),
                   (("onnx",), "fp32,int8", "bundled:edge-lat"), (("openvino",), "fp32", "bundled:edge-lat")]
    assert locate_model("bundled:edge-lat-int8-openvino").name == "edge-lat"


def test_mission_command_needs_no_output(capsys, tmp_path, monkeypatch):
    """`datprl-edge export --target coreml` alone: the bundled student into ./artifacts (printed)."""
    from conftest import run_cli

    seen = {}

    def fake_export(model, config, out, progress=None):
        seen.update(config=config, out=out)
        return []

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("datprl_edge.export.driver.export_model", fake_export)
    code, out, err = run_cli(capsys, "export", "--target", "coreml")
    assert code == 0, err
    assert seen["out"] == tmp_path / "artifacts" and seen["config"].targets == ("coreml",)
    assert f"writing to {tmp_path / 'artifacts'}" in err and "bundled:edge-xs" in out
