"""CLI: `tasks`, `data synth`, `data preview`, `calib build/list/show`."""

import json

import numpy as np
from conftest import run_cli
from PIL import Image

NINE = ["natural/sr_x4", "natural/derain", "natural/motion_deblur", "medical/mri_sr", "medical/ct_denoise",
        "medical/pet_denoise", "remote/sr_x4", "remote/cloud_removal", "remote/dehaze"]


def test_tasks_table_and_json(capsys):
    code, out, _ = run_cli(capsys, "tasks", "--set", "9task")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()[2:] if "/" in line.split(" ")[0]]
    assert listed == NINE
    code, out, _ = run_cli(capsys, "tasks", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["tasks"]) == 12 and data["sets"]["9task"] == NINE
    assert {"id", "domain", "description", "default_severity"} <= set(data["tasks"][0])


def test_unknown_task_exits_2_with_suggestion(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "synth", "--task", "natural/derian", "-o", tmp_path / "x")
    assert code == 2 and "did you mean 'natural/derain'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(capsys, "tasks", "--set", "natral5")
    assert code == 2 and "did you mean 'natural5'" in err


def test_data_synth_writes_pairs(capsys, tmp_path):
    out = tmp_path / "pairs"
    code, stdout, _ = run_cli(capsys, "data", "synth", "--task", "medical/pet_denoise", "--count", "3",
                              "-o", out, "--size", "48", "--seed", "2", "--severity", "0.7")
    assert code == 0 and "wrote 3 pairs" in stdout
    names = ["0000.png", "0001.png", "0002.png"]
    assert sorted(p.name for p in (out / "gt").iterdir()) == names
    assert sorted(p.name for p in (out / "lq").iterdir()) == names
    meta = json.loads((out / "pairs.json").read_text())
    assert meta["task"] == "medical/pet_denoise" and [r["severity"] for r in meta["pairs"]] == [0.7] * 3
    lq = np.asarray(Image.open(out / "lq" / "0000.png"))
    assert lq.shape == (48, 48) and lq.dtype == np.uint16  # medical: 16-bit grey
    code, _, _ = run_cli(capsys, "data", "synth", "--task", "natural/derain", "--count", "1",
                         "-o", tmp_path / "rgb", "--size", "32")
    assert code == 0 and np.asarray(Image.open(tmp_path / "rgb" / "lq" / "0000.png")).shape == (32, 32, 3)
    code, _, err = run_cli(capsys, "data", "synth", "--task", "natural/derain", "-o", out)
    assert code == 2 and "--overwrite" in err
    assert len(list((out / "gt").iterdir())) == 3  # untouched


def test_data_preview_writes_sheet(capsys, tmp_path):
    sheet = tmp_path / "sheet.png"
    code, out, _ = run_cli(capsys, "data", "preview", "-o", sheet, "--tasks", "natural/derain",
                           "medical/mri_sr", "--size", "64")
    assert code == 0 and "PSNR" in out and "medical/mri_sr" in out
    img = Image.open(sheet)
    assert img.format == "PNG" and img.size[1] > img.size[0] / 4
    before = sheet.read_bytes()
    again = ("data", "preview", "-o", sheet, "--tasks", "natural/derain", "--size", "64")
    code, _, err = run_cli(capsys, *again)
    assert code == 2 and "exists; pass --overwrite" in err and sheet.read_bytes() == before
    code, _, _ = run_cli(capsys, *again, "--overwrite")
    assert code == 0 and sheet.read_bytes() != before


def test_calib_cli(capsys, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('crop = 32\nsplit = "val"\n[[tasks]]\nid = "remote/dehaze"\ncount = 2\n'
                      'severities = [0.2, 0.8]\n')
    out = tmp_path / "set"
    code, stdout, _ = run_cli(capsys, "calib", "build", recipe, "-o", out, "--quiet")
    assert code == 0 and "remote/dehaze" in stdout and "total 2 pairs" in stdout
    assert (out / "SHA256SUMS").exists() and (out / "remote__dehaze.npz").exists()
    code, stdout, _ = run_cli(capsys, "calib", "show", out)
    assert code == 0 and "hashes OK" in stdout
    code, _, err = run_cli(capsys, "calib", "build", recipe, "-o", out, "--quiet")
    assert code == 2 and "exists" in err
    code, _, err = run_cli(capsys, "calib", "build", "medical-scaner", "-o", tmp_path / "m")
    assert code == 2 and "did you mean 'medical-scanner'" in err
    code, stdout, _ = run_cli(capsys, "calib", "list")
    assert code == 0 and "drone" in stdout and "medical-scanner" in stdout
