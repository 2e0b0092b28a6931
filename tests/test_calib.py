"""Calibration recipes, building, coverage, hashes, warnings."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datprl_edge.data.calib import (
    PACKAGE_RECIPES,
    build_calibration_set,
    list_recipes,
    load_calibration_set,
    load_recipe,
    verify_calibration_set,
)
from datprl_edge.errors import (
    ConfigError,
    InputNotFoundError,
    OutputExistsError,
    UnknownChoiceError,
    VerificationError,
)

REPO = Path(__file__).resolve().parents[1]
TINY = """
name = "tiny"
seed = 3
crop = 32
split = "train"

[[tasks]]
id = "medical/ct_denoise"
count = 4
severities = [0.25, 0.75]

[[tasks]]
id = "natural/derain"
count = 3
"""


def _recipe(tmp_path, text=TINY, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_recipes_load_and_match_package_copies():
    names = list_recipes()
    assert {"all", "drone", "medical-scanner"} <= set(names)
    assert [t.id for t in load_recipe("all").tasks] == [
        "natural/sr_x4", "natural/derain", "natural/motion_deblur", "medical/mri_sr", "medical/ct_denoise",
        "medical/pet_denoise", "remote/sr_x4", "remote/cloud_removal", "remote/dehaze"]
    assert {t.id for t in load_recipe("medical-scanner").tasks} == {
        "medical/ct_denoise", "medical/mri_sr", "medical/pet_denoise"}
    drone = {t.id for t in load_recipe("drone").tasks}
    assert {"remote/sr_x4", "remote/cloud_removal", "remote/dehaze", "natural/motion_deblur"} <= drone
    # the package ships copies so that a non-editable install finds the recipes too
    for p in sorted((REPO / "calibration").glob("*.toml")):
        assert (PACKAGE_RECIPES / p.name).read_bytes() == p.read_bytes(), p.name


def test_recipe_errors(tmp_path):
    with pytest.raises(UnknownChoiceError, match="did you mean 'drone'"):
        load_recipe("drne")
    with pytest.raises(InputNotFoundError):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(UnknownChoiceError, match="did you mean 'count'"):
        load_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 2\ncont = 3\n'))
    with pytest.raises(ConfigError, match="severities"):
        load_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 2\nseverities = [2]\n'))
    with pytest.raises(ConfigError, match="count"):
        load_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 0\n'))
    with pytest.raises(UnknownChoiceError, match="did you mean 'natural/derain'"):
        load_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derian"\ncount = 1\n'))
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_recipe(_recipe(tmp_path, "tasks = [\n"))


def test_build_coverage_hashes_and_load(tmp_path, capsys):
    out = tmp_path / "set"
    cov = build_calibration_set(_recipe(tmp_path), out, progress=False)
    err = capsys.readouterr().err
    # two CT training images for four requested pairs: warned, not failed
    assert "warning" in err and "medical/ct_denoise asks for 4 samples but only 2 distinct" in err
    assert "natural/derain" not in err
    rows = {(r["task"], r["severity"]): r for r in cov["rows"]}
    assert rows[("medical/ct_denoise", 0.25)]["count"] == 2
    assert rows[("medical/ct_denoise", 0.75)]["count"] == 2
    assert rows[("medical/ct_denoise", 0.25)]["distinct_images"] == 2
    assert rows[("natural/derain", 0.5)]["count"] == 3
    assert cov["totals"] == {"pairs": 7, "by_domain": {"medical": 4, "natural": 3}}
    assert json.loads((out / "coverage.json").read_text()) == cov
    files = sorted(p.name for p in out.iterdir())
    assert files == ["SHA256SUMS", "coverage.json", "medical__ct_denoise.npz", "natural__derain.npz",
                     "recipe.toml"]
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    data = load_calibration_set(out)
    assert list(data) == ["medical/ct_denoise", "natural/derain"]
    ct = data["medical/ct_denoise"]
    assert ct.lq.shape == (4, 3, 32, 32) and ct.lq.dtype == np.float32 and ct.domain == "medical"
    assert list(ct.severity) == [0.25, 0.75, 0.25, 0.75]
    assert np.array_equal(ct.lq[:, 0], ct.lq[:, 2])
    with np.load(out / "medical__ct_denoise.npz") as z:
        assert z["lq"].dtype == np.uint16 and z["lq"].shape == (4, 32, 32, 1)
    # deterministic: a rebuild gives identical files
    again = tmp_path / "again"
    build_calibration_set(_recipe(tmp_path), again, progress=False)
    assert (again / "SHA256SUMS").read_text() == (out / "SHA256SUMS").read_text()


def test_build_refuses_existing_output_and_verify_detects_tampering(tmp_path):
    out = tmp_path / "set"
    derain_only = 'crop = 32\n[[tasks]]\nid = "natural/derain"\ncount = 1\n'
    build_calibration_set(_recipe(tmp_path, derain_only, "one.toml"), out, progress=False)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        build_calibration_set(_recipe(tmp_path), out, progress=False)
    assert not (out / "medical__ct_denoise.npz").exists()  # nothing partial was written
    build_calibration_set(_recipe(tmp_path), out, progress=False, overwrite=True)
    assert (out / "medical__ct_denoise.npz").exists()
    with (out / "natural__derain.npz").open("ab") as f:
        f.write(b"x")
    with pytest.raises(VerificationError, match="natural__derain.npz"):
        verify_calibration_set(out)
    with pytest.raises(VerificationError):
        load_calibration_set(out)


def test_custom_images_folder(tmp_path, capsys):
    imgs = tmp_path / "mine"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{k}.png")
    text = '[[tasks]]\nid = "remote/dehaze"\ncount = 2\ncrop = 32\nimages = "mine"\n'
    cov = build_calibration_set(_recipe(tmp_path, text), tmp_path / "set", progress=False)
    assert cov["rows"][0]["split"] == "custom" and cov["rows"][0]["distinct_images"] == 2
    assert "warning" not in capsys.readouterr().err
    srcs = load_calibration_set(tmp_path / "set")["remote/dehaze"].sources
    assert set(srcs) <= {"0.png", "1.png", "2.png"}


def test_calibration_items_from_recipe_and_folder(tmp_path):
    from datprl_edge.data.calib import calibration_items

    recipe = _recipe(tmp_path, 'crop = 32\n[[tasks]]\nid = "natural/derain"\ncount = 2\n', "one.toml")
    items = calibration_items(recipe)
    assert len(items) == 2 and items[0]["lq"].shape == (3, 32, 32) and items[0]["task"] == "natural/derain"
    build_calibration_set(recipe, tmp_path / "set", progress=False)
    again = calibration_items(tmp_path / "set")
    assert all(np.array_equal(a["lq"], b["lq"]) for a, b in zip(items, again))
