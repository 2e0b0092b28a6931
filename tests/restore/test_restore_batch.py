"""`datprl-edge restore` on several files and folders: mirrored outputs, per-file errors that do not
stop the run, inputs never overwritten, DICOM series kept together, the torch-free core, `--task`
on checkpoints that record task prompts, and tiled == untiled with forced prompts."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from conftest import run_cli
from PIL import Image

from datprl_edge.core.errors import ConfigError, InputNotFoundError, OutputExistsError
from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
from datprl_edge.io.images import read_image
from datprl_edge.models.registry import create_model, model_config
from datprl_edge.restore.driver import RestoreOptions, Runner, plan_jobs, restore_files, tile_geometry

DICOM = Path(__file__).parents[1] / "fixtures" / "dicom"
RNG = np.random.default_rng(7)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _invert(nchw):
    return 1.0 - nchw


INVERT = Runner(_invert, "invert", pad_multiple=8)


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("edge-xs")
    with torch.no_grad():  # ending = 0: the global residual makes the student an exact identity
        model.ending.weight.zero_()
        model.ending.bias.zero_()
    path = tmp_path_factory.mktemp("model") / "xs-identity.safetensors"
    return save_checkpoint(path, model.state_dict(), CheckpointConfig(*model_config(model)))


def _png(path, shape, dtype=np.uint8):
    top = 65536 if dtype == np.uint16 else 256
    stored = RNG.integers(0, top, shape, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dtype == np.uint16 and len(shape) == 3:
        tifffile.imwrite(path.with_suffix(".tif"), stored)
        return path.with_suffix(".tif"), stored
    Image.fromarray(stored).save(path)
    return path, stored


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_folder_is_mirrored_with_formats_kept(tmp_path, capsys, identity):
    src = tmp_path / "in"
    a, a_px = _png(src / "a.png", (40, 70), np.uint16)
    b, b_px = _png(src / "b.png", (33, 20, 3))
    c, c_px = _png(src / "sub" / "c.png", (90, 75, 3), np.uint16)  # a 16-bit RGB TIFF
    np.save(src / "d.npy", RNG.random((17, 21, 3), dtype=np.float32))
    shutil.copy(DICOM / "CT_small.dcm", src / "ct")  # DICOM without a suffix, found by its header
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"junk")
    code, out, err = run_cli(capsys, "restore", identity, src, "-o", tmp_path / "out", "--recursive",
                             "--tile", "64", "--overlap", "16")
    assert code == 0 and err == "", err
    assert "restored 5, failed 0" in out.splitlines()[-1] and "skipped 1 file" in out
    assert _tree(tmp_path / "out") == ["a.png", "b.png", "ct", "d.npy", "sub/c.tif"]
    for name, stored in (("a.png", a_px), ("b.png", b_px), ("sub/c.tif", c_px)):
        arr, info = read_image(tmp_path / "out" / name)
        assert info.dtype == stored.dtype.name and info.shape == stored.shape
        scale = 65535 if stored.dtype == np.uint16 else 255
        np.testing.assert_array_equal(np.rint(arr * scale).astype(stored.dtype).reshape(stored.shape), stored)
    ds = pydicom.dcmread(tmp_path / "out" / "ct")
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(src / "ct").pixel_array)
    code, out, _ = run_cli(capsys, "restore", identity, src, "-o", tmp_path / "flat")
    assert code == 0 and "restored 4, failed 0" in out and not (tmp_path / "flat" / "sub").exists()


def test_per_file_failures_are_reported_and_the_rest_goes_on(tmp_path, capsys, identity):
    src = tmp_path / "in"
    good, _ = _png(src / "good.png", (30, 30))
    _png(src / "good2.png", (20, 24, 3))
    (src / "trunc.png").write_bytes(good.read_bytes()[:60])
    np.save(src / "nan.npy", np.full((8, 8), np.nan, np.float32))
    Image.fromarray(RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA").save(src / "rgba.png")
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "restore", identity, src, tmp_path / "missing.png", "-o", out_dir)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith("datprl-edge: error: ") for line in lines) and len(lines) == 5
    failed = {Path(line.split(": ")[2]).name for line in lines}
    assert failed == {"trunc.png", "nan.npy", "rgba.png", "broken.dcm", "missing.png"}
    assert out.strip().splitlines()[-1] == "restored 2, failed 5"
    assert _tree(out_dir) == ["good.png", "good2.png"]  # nothing partial, no temporary files


def test_existing_outputs_and_name_clashes_fail_alone(tmp_path, capsys, identity):
    one, two = tmp_path / "one", tmp_path / "two"
    _png(one / "x.png", (16, 16))
    _png(one / "y.png", (16, 16))
    _png(two / "x.png", (16, 16))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "y.png").write_bytes(b"keep me")
    code, out, err = run_cli(capsys, "restore", identity, one, two, "-o", out_dir)
    assert code == 2 and "restored 1, failed 2" in out
    assert "--overwrite" in err and "would also be written from" in err and str(two / "x.png") in err
    assert (out_dir / "y.png").read_bytes() == b"keep me"
    code, out, _ = run_cli(capsys, "restore", identity, one, "-o", out_dir, "--overwrite")
    assert code == 0 and read_image(out_dir / "y.png")[1].shape == (16, 16)


def test_inputs_are_never_overwritten(tmp_path, capsys, identity):
    src = tmp_path / "in"
    a, _ = _png(src / "a.png", (16, 16))
    before = a.read_bytes()
    for argv in ((src, "-o", src), (src, "-o", str(src) + "/"), (src, "-o", src, "--overwrite")):
        code, _, err = run_cli(capsys, "restore", identity, *argv)
        assert code == 2 and "is the input folder" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "restore", identity, a, src / "b.png", "-o", src, "--overwrite")
    assert code == 2 and "refusing to overwrite input" in err
    # an output folder inside a recursively scanned input folder is not read as input
    code, out, err = run_cli(capsys, "restore", identity, src, "-o", src / "restored", "-r")
    assert code == 0 and "restored 1, failed 0" in out
    code, out, err = run_cli(capsys, "restore", identity, src, "-o", src / "restored", "-r", "--overwrite")
    assert code == 0 and "restored 1, failed 0" in out and a.read_bytes() == before


def test_slices_of_one_series_stay_one_series(tmp_path, capsys, identity):
    src = tmp_path / "series"
    src.mkdir()
    for name in ("s1.dcm", "s2.dcm"):
        shutil.copy(DICOM / "CT_small.dcm", src / name)
    shutil.copy(DICOM / "MR_small.dcm", src / "mr.dcm")
    code, out, err = run_cli(capsys, "restore", identity, src, "-o", tmp_path / "out")
    assert code == 0, err
    s1, s2, mr = (pydicom.dcmread(tmp_path / "out" / n) for n in ("s1.dcm", "s2.dcm", "mr.dcm"))
    source = pydicom.dcmread(DICOM / "CT_small.dcm")
    assert s1.SeriesInstanceUID == s2.SeriesInstanceUID != source.SeriesInstanceUID
    assert mr.SeriesInstanceUID != s1.SeriesInstanceUID and s1.SOPInstanceUID != s2.SOPInstanceUID
    assert s1.PatientName == source.PatientName and s1.StudyInstanceUID == source.StudyInstanceUID


def test_output_paths_file_or_folder(tmp_path):
    a, _ = _png(tmp_path / "a.png", (8, 8))
    jobs, _, _ = plan_jobs([a], tmp_path / "b.tif")
    assert jobs[0].dst == tmp_path / "b.tif"
    for out in (tmp_path / "res", str(tmp_path / "res.d") + "/"):
        jobs, _, _ = plan_jobs([a], out)
        assert jobs[0].dst == Path(out) / "a.png"
    with pytest.raises(OutputExistsError, match="names a folder"):
        plan_jobs([a, a], a)
    with pytest.raises(ConfigError, match="looks like an image file"):
        plan_jobs([a, a], tmp_path / "new.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no images to restore.*--recursive"):
        plan_jobs([tmp_path / "empty"], tmp_path / "o")


def test_core_runs_any_numpy_runner_without_torch_objects(tmp_path):
    a, stored = _png(tmp_path / "a.png", (150, 130))
    jobs, failures, _ = plan_jobs([a], tmp_path / "o")
    summary = restore_files(INVERT, jobs, RestoreOptions(tile=64, overlap=16))
    assert not failures and summary.line == "restored 1, failed 0" and summary.restored[0].tiles == 9
    arr, _ = read_image(tmp_path / "o" / "a.png")
    np.testing.assert_array_equal(np.rint(arr[:, :, 0] * 255).astype(np.uint8), 255 - stored)


def test_tile_geometry_defaults_and_errors():
    opts = RestoreOptions()
    assert tile_geometry(INVERT, opts, (100, 100)) == (512, 32)
    recommended = Runner(_invert, "r", pad_multiple=8, tile=256, overlap=16)
    assert tile_geometry(recommended, opts, (9, 9)) == (256, 16)
    assert tile_geometry(recommended, RestoreOptions(tile=0), (37, 50)) == (56, 0)
    assert tile_geometry(recommended, RestoreOptions(tile=64), (9, 9)) == (64, 16)
    static = Runner(_invert, "s", pad_multiple=8, tile=256, overlap=16, max_tile=64)
    assert tile_geometry(static, opts, (9, 9)) == (64, 16)
    with pytest.raises(ConfigError, match="at most 64"):
        tile_geometry(static, RestoreOptions(tile=128), (9, 9))
    with pytest.raises(ConfigError):
        RestoreOptions(tile=-1)


def test_bad_tile_is_one_error_before_any_file(tmp_path, capsys, identity):
    a, _ = _png(tmp_path / "a.png", (8, 8))
    code, _, err = run_cli(capsys, "restore", identity, a, "-o", tmp_path / "o", "--tile", "100")
    assert code == 2 and "multiple of the pad multiple 8 (try 96)" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "restore", identity, a, "-o", tmp_path / "o", "--tile", "64",
                           "--overlap", "32")
    assert code == 2 and "less than half" in err and not (tmp_path / "o").exists()


# -- --task on checkpoints, and tiles that agree ---------------------------------------------------

def _student(tmp_path, name, extra=None, provenance=None, **options):
    torch.manual_seed(0)
    model = create_model("edge-xs", **options).eval()
    cfg = CheckpointConfig(*model_config(model), stage="distilled", extra=extra or {},
                           provenance=provenance or {})
    return model, save_checkpoint(tmp_path / name, model.state_dict(), cfg)


def test_task_forces_the_prompts_a_checkpoint_records(tmp_path):
    from datprl_edge.core.errors import UnknownChoiceError
    from datprl_edge.models.student_blocks import PromptOverride
    from datprl_edge.restore.runners import open_runner

    data = "synthetic:natural/denoise,medical/ct_denoise crop=64 pairs=8 seed=0"
    model, path = _student(tmp_path, "explicit.safetensors", {"train_config": {"prompt_mode": "explicit"}},
                           {"data": data})
    runner = open_runner(path, task="medical/ct_denoise")
    assert runner.tasks == ("medical/ct_denoise",)
    x = RNG.random((1, 3, 40, 48), dtype=np.float32)
    with torch.no_grad():  # catalogue indices: domain medical = 1, task medical/ct_denoise = 4
        ref = model(torch.from_numpy(x), override=PromptOverride(domain=1, task=4)).numpy()
        auto = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner(x), ref, atol=1e-6)
    assert np.abs(ref - auto).max() > 1e-4  # the override changes the output
    with pytest.raises(UnknownChoiceError, match="natural/denoise"):
        open_runner(path, task="natural/derain")


def test_tiled_matches_untiled_with_a_forced_task(tmp_path, capsys):
    # Without channel attention and with the prompts forced, every output pixel depends only on a
    # bounded neighbourhood, so tiles laid on the stride grid agree with the whole image.
    prompts = {"task_prompts": {"natural/denoise": [0, 9]}}
    _, path = _student(tmp_path, "map.safetensors", prompts, use_sca=False)
    yy, xx = np.mgrid[0:150, 0:203]
    base = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + 0.05 * RNG.standard_normal((150, 203))
    np.save(tmp_path / "x.npy", np.clip(base, 0, 1).astype(np.float32)[:, :, None].repeat(3, axis=2))
    outs = {}
    for name, extra in (("tiled", ("--tile", "64", "--overlap", "24")), ("whole", ("--tile", "0")),
                        ("auto", ("--tile", "0", "--task", "auto"))):
        task = () if name == "auto" else ("--task", "natural/denoise")
        code, _, err = run_cli(capsys, "restore", path, tmp_path / "x.npy", "-o", tmp_path / f"{name}.npy",
                               *extra, *task)
        assert code == 0, err
        outs[name] = np.load(tmp_path / f"{name}.npy")
    inner = np.abs(outs["tiled"] - outs["whole"])[16:-16, 16:-16]
    assert inner.max() < 0.02 and inner.mean() < 2e-3
    assert np.abs(outs["auto"] - outs["whole"]).max() > 1e-4  # the forced task changed the prompts
