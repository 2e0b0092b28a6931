"""INT8 made by the export from a float model: its PSNR drop against that model on the task's held-out
pairs is measured, recorded in the report and warned about past 0.1 dB; `--max-drop` hands a budget to
the sensitivity search (quantize/sensitivity.py)."""

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from datprl_edge.core.errors import ConfigError  # noqa: E402
from datprl_edge.export.config import ExportConfig  # noqa: E402

RECIPE = """name = "derain-tiny"
description = "two derain pairs"
seed = 0
crop = 64
split = "train"

[[tasks]]
id = "natural/derain"
count = 2
severities = [0.5]
"""


def test_int8_from_a_float_model_records_its_drop_and_warns(tmp_path, monkeypatch):
    import torch

    from datprl_edge.core.metrics import image_metrics, mean_psnr
    from datprl_edge.export import driver, verify
    from datprl_edge.models.registry import create_model
    from datprl_edge.quantize.inputs import validation_pairs
    from datprl_edge.runtime.sessions import open_artifact
    from datprl_edge.sources import DROP_DESCRIPTION, DROP_PAIRS, DROP_SIZE

    recipe = tmp_path / "derain-tiny.toml"
    recipe.write_text(RECIPE)
    monkeypatch.setattr(verify, "INT8_DROP_WARN_DB", -100.0)  # every drop warns: the path is under test
    torch.manual_seed(0)
    model = create_model("edge-xs").eval()
    lines = []
    cfg = ExportConfig(targets="openvino", precision="int8", model_name="edge-xs", calibration=str(recipe),
                       verify_images=1, verify_size=(48, 48))
    (report,) = driver.export_model(model, cfg, tmp_path / "out", progress=lines.append)

    drop = report.notes["int8_drop_db"]
    assert list(drop["tasks"]) == ["natural/derain"] and drop["worst_task"] == "natural/derain"
    assert drop["pairs"] == DROP_DESCRIPTION == f"{DROP_PAIRS} held-out val pairs of {DROP_SIZE} px per task"
    on_disk = json.loads((tmp_path / "out" / "edge-xs_openvino_int8.json").read_text())["notes"]
    assert on_disk["int8_drop_db"] == drop
    assert any(s.startswith("openvino int8: preparing openvino") for s in lines)  # run_qat's progress
    (warning,) = [s for s in lines if s.startswith("warning:")]
    assert "openvino INT8 loses" in warning and "natural/derain" in warning and "--max-drop" in warning

    # the recorded drop is the artifact's own, to within its parity with the fake-quant model
    lq, gt = validation_pairs(["natural/derain"], DROP_PAIRS, DROP_SIZE)["natural/derain"]
    session = open_artifact(str(report.path))
    with torch.no_grad():
        ref = model(lq).clamp(0, 1).numpy()
    out = np.clip(session.run(lq.numpy()), 0, 1)

    def psnr(x, against=None):
        against = gt.numpy() if against is None else against
        return mean_psnr([image_metrics(g.transpose(1, 2, 0), y.transpose(1, 2, 0), False)[0]
                          for g, y in zip(against, x)])

    assert abs((psnr(ref) - psnr(out)) - drop["worst"]) < 0.05
    # and so is how closely its outputs track the float model's
    assert abs(psnr(out, ref) - drop["fidelity_db"]["natural/derain"]) < 0.5


def test_max_drop_reaches_the_sensitivity_search_with_the_folded_tasks_pairs(monkeypatch):
    from types import SimpleNamespace

    import datprl_edge.quantize.qat as qat
    from datprl_edge import sources

    seen = {}

    def fake_run_qat(model, config, calib, val=None, search_val=None, log=None):
        seen.update(config=config, val=val, search=search_val)
        return SimpleNamespace(float_layers=("decoders.0.0",), metrics={})

    monkeypatch.setattr(qat, "run_qat", fake_run_qat)
    monkeypatch.setattr(sources, "calibration_data", lambda spec, model: ([], "a recipe"))
    model = SimpleNamespace(img_channel=3)
    cfg = ExportConfig(targets="openvino", precision="int8", task="natural/derain", max_drop=0.1)
    _, how = sources.quantize_for_target(model, None, "openvino", cfg)
    assert seen["config"].max_drop == 0.1 and "--max-drop 0.1 dB (float layers: decoders.0.0)" in how
    assert list(seen["val"]) == list(seen["search"]) == ["natural/derain"]
    # the search decides on train-split pairs, the reported drop comes from the val split
    val, search = seen["val"]["natural/derain"][1], seen["search"]["natural/derain"][1]
    assert not np.array_equal(val.numpy(), search.numpy())


@pytest.mark.parametrize("value", [-0.1, 11, True, "0.1"])
def test_max_drop_must_be_a_budget_in_db(value):
    with pytest.raises(ConfigError, match="--max-drop is a PSNR budget in dB"):
        ExportConfig(max_drop=value)


def test_cli_rejects_a_negative_max_drop_in_one_line(capsys, tmp_path):
    from conftest import run_cli

    code, _, err = run_cli(capsys, "export", "edge-xs", "--target", "openvino", "--precision", "int8",
                           "--max-drop", "-1", "-o", tmp_path / "x")
    assert code == 2 and "--max-drop is a PSNR budget in dB" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_failed_export_leaves_no_output_folder(tmp_path, monkeypatch):
    from datprl_edge.core.errors import QualityBudgetError
    from datprl_edge.export import driver
    from datprl_edge.models.registry import create_model

    def unmet(*args):
        raise QualityBudgetError("--max-drop 0.1 dB is not met")

    monkeypatch.setattr(driver, "quantize_for_target", unmet)
    cfg = ExportConfig(targets="openvino", precision="int8", verify_images=1, verify_size=(48, 48))
    with pytest.raises(QualityBudgetError):
        driver.export_model(create_model("edge-xs"), cfg, tmp_path / "new" / "out")
    assert not (tmp_path / "new" / "out").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(QualityBudgetError):
        driver.export_model(create_model("edge-xs"), cfg, kept)
    assert kept.is_dir() and not any(kept.iterdir())  # a folder that was there stays


def test_export_table_gives_the_drop_and_how_closely_int8_tracks_the_float_model(tmp_path):
    from datprl_edge.cli.export_cmd import format_reports
    from datprl_edge.export.driver import ArtifactReport
    from datprl_edge.export.verify import Verification

    drop = {"tasks": {"remote/dehaze": -0.0862}, "worst": -0.0862, "worst_task": "remote/dehaze",
            "pairs": "8 held-out val pairs of 128 px per task", "fidelity_db": {"remote/dehaze": 41.52}}
    check = Verification(precision="int8", reference="fake-quant torch model", numerics_checked=True,
                         passed=True, threshold_db=40.0, psnr_db=51.04, max_abs_diff=0.0171)
    report = ArtifactReport("openvino", "int8", tmp_path / "m_openvino_int8.xml", [], 2048, {}, check, {},
                            {"int8_drop_db": drop})
    lines = format_reports([report]).splitlines()
    assert lines[-2:] == [
        "m_openvino_int8.xml: PSNR drop against the float model, 8 held-out val pairs of 128 px per task: "
        "remote/dehaze -0.086 dB",
        "m_openvino_int8.xml: PSNR of its outputs against the float model's: remote/dehaze 41.5 dB"]
