"""Calibration recipes, building, coverage, hashes, warnings."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datprl_edge.core.errors import (
    ConfigError,
    InputNotFoundError,
    OutputExistsError,
    ResourceLimitError,
    UnknownChoiceError,
    VerificationError,
)
from datprl_edge.data.calib import (
    build_calibration_set,
    calibration_images,
    list_recipes,
    load_calib_recipe,
    load_calibration_set,
    verify_calibration_set,
)

REPO = Path(__file__).resolve().parents[2]
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


def test_resource_finder_finds_the_calibration_recipes():
    from datprl_edge.core.resources import find_resource, resource_dir

    assert resource_dir("calibration") == REPO / "calibration"
    assert find_resource("calibration", "all", "calibration recipe") == REPO / "calibration" / "all.toml"
    assert list_recipes()["all"] == REPO / "calibration" / "all.toml"
    assert not (REPO / "datprl_edge" / "data" / "recipes").exists()  # one copy: the top-level folder


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"all", "drone", "medical-scanner"} <= set(names)
    assert [t.id for t in load_calib_recipe("all").tasks] == [
        "natural/sr_x4", "natural/derain", "natural/motion_deblur", "medical/mri_sr", "medical/ct_denoise",
        "medical/pet_denoise", "remote/sr_x4", "remote/cloud_removal", "remote/dehaze"]
    assert {t.id for t in load_calib_recipe("medical-scanner").tasks} == {
        "medical/ct_denoise", "medical/mri_sr", "medical/pet_denoise"}
    drone = {t.id for t in load_calib_recipe("drone").tasks}
    assert {"remote/sr_x4", "remote/cloud_removal", "remote/dehaze", "natural/motion_deblur"} <= drone


def test_recipe_errors(tmp_path):
    with pytest.raises(UnknownChoiceError, match="did you mean 'drone'"):
        load_calib_recipe("drne")
    with pytest.raises(InputNotFoundError):
        load_calib_recipe(tmp_path / "missing.toml")
    with pytest.raises(UnknownChoiceError, match="did you mean 'count'"):
        load_calib_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 2\ncont = 3\n'))
    with pytest.raises(ConfigError, match="severities"):
        load_calib_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 2\n'
                                            'severities = [2]\n'))
    with pytest.raises(ConfigError, match="count"):
        load_calib_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derain"\ncount = 0\n'))
    with pytest.raises(UnknownChoiceError, match="did you mean 'natural/derain'"):
        load_calib_recipe(_recipe(tmp_path, '[[tasks]]\nid = "natural/derian"\ncount = 1\n'))
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_calib_recipe(_recipe(tmp_path, "tasks = [\n"))


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


def test_calibration_images_from_recipe_and_folder(tmp_path):
    recipe = _recipe(tmp_path, 'crop = 32\n[[tasks]]\nid = "natural/derain"\ncount = 2\n', "one.toml")
    images = calibration_images(recipe)
    items = images.pairs()
    assert images.description == "calibration recipe 'one'"
    assert len(items) == 2 and items[0]["lq"].shape == (3, 32, 32) and items[0]["task"] == "natural/derain"
    build_calibration_set(recipe, tmp_path / "set", progress=False)
    again = calibration_images(tmp_path / "set")
    assert again.description.startswith("calibration set ")
    assert all(np.array_equal(a["lq"], b["lq"]) for a, b in zip(items, again.pairs()))


def test_calibration_images_select_count_and_crop(tmp_path):
    recipe = _recipe(tmp_path, 'crop = 32\n[[tasks]]\nid = "natural/derain"\ncount = 3\n', "one.toml")
    build_calibration_set(recipe, tmp_path / "set", progress=False)
    cut = calibration_images(tmp_path / "set", count=2, crop=16)
    assert list(cut.tasks) == ["natural/derain"]
    derain = cut.tasks["natural/derain"]
    assert derain.lq.shape == derain.gt.shape == (2, 3, 16, 16) and len(derain.sources) == 2
    with pytest.raises(UnknownChoiceError, match="task in calibration set"):
        calibration_images(tmp_path / "set", tasks=["natural/denoise"])
    # a recipe builds the chosen tasks at the given count and crop; an unlisted task gets the defaults
    built = calibration_images(recipe, tasks=["natural/denoise", "natural/derain"], count=1, crop=24)
    assert list(built.tasks) == ["natural/denoise", "natural/derain"]
    assert all(t.lq.shape == (1, 3, 24, 24) for t in built.tasks.values())


@pytest.fixture(scope="module")
def one_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    recipe = root / "one.toml"
    recipe.write_text('crop = 32\n[[tasks]]\nid = "natural/derain"\ncount = 1\n')
    build_calibration_set(recipe, root / "set", progress=False)
    return root / "set"


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _resum(folder):
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}"
             for n in sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("entry,message", [
    ("../../../../etc/hostname", "paths are not allowed"),
    ("/etc/hostname", "paths are not allowed"),
    ("not-a-digest", "line 4 is not '<sha256>  <file name>'"),
])
def test_sums_entries_outside_the_set_are_refused_unread(tmp_path, one_set, entry, message):
    folder = _copy(one_set, tmp_path / "set")
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    extra = entry if entry == "not-a-digest" else f"{'0' * 64}  {entry}"
    (folder / "SHA256SUMS").write_text("\n".join(sums + [extra]) + "\n")
    with pytest.raises(VerificationError, match=message):
        verify_calibration_set(folder)


def test_blank_lines_in_sums_are_allowed(tmp_path, one_set):
    folder = _copy(one_set, tmp_path / "set")
    text = (folder / "SHA256SUMS").read_text()
    (folder / "SHA256SUMS").write_text("\n" + text.replace("\n", "\n\n"))
    assert set(verify_calibration_set(folder)) == {"coverage.json", "natural__derain.npz", "recipe.toml"}


@pytest.mark.parametrize("coverage,message", [
    ("{not json", "coverage.json is not valid JSON"),
    ("[1, 2]", "needs a non-empty 'tasks' list"),
    ('{"tasks": [{"id": "natural/derainn"}]}', "did you mean 'natural/derain'"),
])
def test_malformed_coverage_is_one_error(tmp_path, one_set, coverage, message):
    folder = _copy(one_set, tmp_path / "set")
    (folder / "coverage.json").write_text(coverage)
    _resum(folder)
    with pytest.raises((ConfigError, VerificationError), match=message):
        load_calibration_set(folder)


def test_task_file_declaring_huge_arrays_is_refused_before_decompression(tmp_path, one_set, monkeypatch):
    folder = _copy(one_set, tmp_path / "set")
    monkeypatch.setenv("DATPRL_EDGE_MAX_PIXELS", "100")
    with pytest.raises(ResourceLimitError, match="natural__derain.npz lq.*over the limit of 100"):
        load_calibration_set(folder)


def test_absurd_crop_is_refused_before_building(tmp_path):
    recipe = _recipe(tmp_path, 'crop = 100000\n[[tasks]]\nid = "natural/derain"\ncount = 1\n', "huge.toml")
    with pytest.raises(ResourceLimitError, match="crop: 100000 px is over the limit of 2048 px"):
        build_calibration_set(recipe, tmp_path / "set", progress=False)
    assert not (tmp_path / "set").exists()
