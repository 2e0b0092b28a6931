"""`datprl-edge restore`: formats kept, inputs protected, one-line errors, nothing partial."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from conftest import run_cli
from PIL import Image

from datprl_edge import create_model
from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
from datprl_edge.io.images import ImageInfo, read_image, write_image
from datprl_edge.models.registry import model_config, register_arch

CT = Path(__file__).parents[1] / "fixtures" / "dicom" / "CT_small.dcm"
RNG = np.random.default_rng(1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Identity(torch.nn.Module):
    """A 1x1 convolution set to the identity: restore must give back the input exactly."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()
        self.nan = nan

    def forward(self, x):
        y = self.conv(x)
        return y * float("nan") if self.nan else y


register_arch("RestoreTestIdentity")(lambda nan=False: _Identity(nan))


def _save(tmp_path, name="identity.safetensors", **opts):
    model = create_model("RestoreTestIdentity", **opts)
    arch, options = model_config(model)
    return save_checkpoint(tmp_path / name, model.state_dict(), CheckpointConfig(arch, options))


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("model"))


def _single_error_line(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datprl-edge: error:") and "Traceback" not in err
    return lines[0]


def _write(path, stored):
    if path.suffix == ".npy":
        np.save(path, stored)
    elif path.suffix == ".tif":
        tifffile.imwrite(path, stored)
    else:
        scale = 65535.0 if stored.dtype == np.uint16 else 255.0
        info = ImageInfo("png", stored.dtype.name, 8 * stored.itemsize, stored.shape)
        write_image(path, stored / scale, info)


@pytest.mark.parametrize("name,stored", [
    ("g8.png", RNG.integers(0, 256, (20, 27), dtype=np.uint8)),
    ("rgb16.png", RNG.integers(0, 65536, (20, 27, 3), dtype=np.uint16)),
    ("g16.tif", RNG.integers(0, 65536, (21, 19), dtype=np.uint16)),
    ("rgb8.tif", RNG.integers(0, 256, (21, 19, 3), dtype=np.uint8)),
    ("hw.npy", RNG.random((13, 17), dtype=np.float32)),
    ("hw1.npy", RNG.random((13, 17, 1), dtype=np.float32)),
    ("hw3.npy", RNG.random((13, 17, 3), dtype=np.float32)),
])
def test_identity_restore_keeps_format_dtype_shape(tmp_path, capsys, identity, name, stored):
    src, dst = tmp_path / name, tmp_path / "out" / f"r_{name}"
    _write(src, stored)
    code, out, err = run_cli(capsys, "restore", identity, src, "-o", dst)
    assert code == 0 and err == "" and "restored" in out
    _, info_in = read_image(src)
    _, info_out = read_image(dst)
    assert (info_out.format, info_out.dtype, info_out.shape) == (info_in.format, info_in.dtype, info_in.shape)
    back = np.load(dst) if dst.suffix == ".npy" else None
    if back is None:
        arr, _ = read_image(dst)
        scale = 65535 if stored.dtype == np.uint16 else 255
        back = np.rint(arr * scale).astype(stored.dtype).reshape(stored.shape)
    np.testing.assert_allclose(back, stored, atol=1e-6)


def test_dicom_in_dicom_out(tmp_path, capsys, identity):
    dst = tmp_path / "ct_restored.dcm"
    code, _, err = run_cli(capsys, "restore", identity, CT, "-o", dst)
    assert code == 0, err
    src, ds = pydicom.dcmread(CT), pydicom.dcmread(dst)
    np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
    assert ds.PatientName == src.PatientName and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.ImageType[0] == "DERIVED"
    assert "identity.safetensors" in ds.DerivationDescription


def test_dicom_round_trip_through_tiles(tmp_path, capsys, identity):
    dst = tmp_path / "ct.dcm"
    code, out, err = run_cli(capsys, "restore", identity, CT, "-o", dst, "--tile", "64", "--overlap", "16")
    assert code == 0 and "9 tiles" in out, err
    src, ds = pydicom.dcmread(CT), pydicom.dcmread(dst)
    np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "Modality", "BitsStored",
                "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "Rows", "Columns"):
        assert ds.get(tag) == src.get(tag), tag


def test_dicom_to_sixteen_bit_png_and_window(tmp_path, capsys, identity):
    code, _, _ = run_cli(capsys, "restore", identity, CT, "-o", tmp_path / "ct.png", "--window", "40,400")
    assert code == 0
    arr, info = read_image(tmp_path / "ct.png")
    assert info.dtype == "uint16" and info.shape == (128, 128) and arr.max() == 1.0
    code, _, err = run_cli(capsys, "restore", identity, CT, "-o", tmp_path / "w.dcm", "--window", "x")
    assert "CENTER,WIDTH" in _single_error_line(code, err)


def test_real_student_runs(tmp_path, capsys):
    model = create_model("edge-xs")
    cfg = CheckpointConfig(*model_config(model))
    path = save_checkpoint(tmp_path / "xs.safetensors", model.state_dict(), cfg)
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (30, 45), dtype=np.uint8)).save(src)
    code, _, err = run_cli(capsys, "restore", path, src, "-o", tmp_path / "b.png")
    assert code == 0, err
    arr, info = read_image(tmp_path / "b.png")
    assert info.shape == (30, 45) and info.dtype == "uint8"


def test_refuses_output_equal_to_input(tmp_path, capsys, identity):
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(src)
    before = src.read_bytes()
    for extra in ((), ("--overwrite",)):
        code, _, err = run_cli(capsys, "restore", identity, src, "-o", src, *extra)
        assert "refusing to overwrite input" in _single_error_line(code, err)
    assert src.read_bytes() == before


def test_existing_output_needs_overwrite(tmp_path, capsys, identity):
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(src)
    dst.write_bytes(b"keep")
    code, _, err = run_cli(capsys, "restore", identity, src, "-o", dst)
    assert "--overwrite" in _single_error_line(code, err) and dst.read_bytes() == b"keep"
    code, _, _ = run_cli(capsys, "restore", identity, src, "-o", dst, "--overwrite")
    assert code == 0 and read_image(dst)[1].shape == (8, 8)


def _bad_inputs(tmp_path):
    (tmp_path / "in").mkdir()
    rgba = tmp_path / "in" / "rgba.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    nan = tmp_path / "in" / "nan.npy"
    np.save(nan, np.full((8, 8), np.nan, np.float32))
    good = tmp_path / "in" / "good.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(good)
    trunc = tmp_path / "in" / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:40])
    return rgba, nan, good, trunc


def test_errors_are_one_line_and_leave_nothing(tmp_path, capsys, identity):
    rgba, nan, good, trunc = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        ((identity, rgba, "-o", out / "a.png"), "accepted"),
        ((identity, nan, "-o", out / "b.npy"), "NaN"),
        ((identity, trunc, "-o", out / "c.png"), "trunc.png"),
        ((identity, tmp_path / "missing.png", "-o", out / "d.png"), "not found"),
        ((tmp_path / "missing.safetensors", good, "-o", out / "e.png"), "not found"),
        ((identity, good, "-o", out / "f.pgn"), "did you mean '.png'"),
        ((identity, good, "-o", out / "g.dcm"), "DICOM output needs a DICOM input"),
        ((identity, good, "-o", out / "h.png", "--window", "file"), "DICOM inputs only"),
        ((_save(tmp_path, "nan.safetensors", nan=True), good, "-o", out / "i.png"), "NaN"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(capsys, "restore", *argv)
        assert needle in _single_error_line(code, err), (argv, err)
    assert list(out.iterdir()) == []


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, "restore", "--help")
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--network" in text and "--window" in text
    assert "--task" in text and "--tile" in text and "--overlap" in text and "--recursive" in text
    assert "tile seam-free" in " ".join(text.split()) and "--stats-size" in text and "--blend" in text


def test_released_pth_with_network(tmp_path, capsys):
    model = create_model("RestoreTestIdentity")
    torch.save({"params": model.state_dict()}, tmp_path / "released.pth")
    (tmp_path / "net.json").write_text('{"network_g": {"type": "RestoreTestIdentity"}}')
    src, dst = tmp_path / "a.tif", tmp_path / "b.tif"
    stored = RNG.integers(0, 65536, (10, 12), dtype=np.uint16)
    tifffile.imwrite(src, stored)
    code, _, err = run_cli(capsys, "restore", tmp_path / "released.pth", src, "-o", dst,
                           "--network", tmp_path / "net.json")
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(dst), stored)
    code, _, err = run_cli(capsys, "restore", tmp_path / "released.pth", src, "-o", tmp_path / "c.tif")
    assert "--network" in _single_error_line(code, err)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_onnx_artifact(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = create_model("RestoreTestIdentity")
    onnx_path = tmp_path / "id.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(model, torch.rand(1, 3, 16, 16), onnx_path, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes, "y": axes})
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    stored = RNG.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    Image.fromarray(stored).save(src)
    code, _, err = run_cli(capsys, "restore", onnx_path, src, "-o", dst)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(dst)), stored)


# -- exported artifacts, without torch ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
NO_TORCH = """
import os, sys

class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["TORCH_ATTEMPTS"], "a") as f:
                f.write(name + "\\n")
            raise ImportError("torch is blocked: restore on an artifact must run without it")
        return None

sys.meta_path.insert(0, _BlockTorch())
"""


def _export_onnx(model, path, *, tasks=None, static=None, tile=64, overlap=16):
    """A small ONNX artifact with the toolkit metadata (the export stage's metadata helpers, the
    fast TorchScript exporter)."""
    import warnings

    import onnx

    from datprl_edge.core.artifacts import build_metadata
    from datprl_edge.core.shapes import format_shapes
    from datprl_edge.export.onnx import set_metadata

    axes = {2: "h", 3: "w"}
    dynamic = None if static else {"input": axes, "output": axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(1, 3, *(static or (64, 64))), path, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes=dynamic)
    proto = onnx.load(str(path))
    set_metadata(proto, build_metadata(model_name="edge-xs", target="onnx", precision="fp32", tasks=tasks,
                                       pad_multiple=8, tile_size=tile, tile_overlap=overlap,
                                       shapes=format_shapes([static] if static else [])))
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def xs(tmp_path_factory):
    """(edge-xs module, its checkpoint, ONNX artifacts: dynamic, folded-for-CT metadata, static 64x64)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("xs")
    torch.manual_seed(0)
    model = create_model("edge-xs").eval()
    cfg = CheckpointConfig(*model_config(model))
    ckpt = save_checkpoint(root / "xs.safetensors", model.state_dict(), cfg)
    return model, ckpt, {
        "dynamic": _export_onnx(model, root / "xs.onnx"),
        "folded": _export_onnx(model, root / "xs-ct.onnx", tasks=["medical/ct_denoise"]),
        "static": _export_onnx(model, root / "xs-static.onnx", static=(64, 64)),
    }


def test_restore_on_an_artifact_without_torch(tmp_path, capsys, xs):
    import subprocess
    import sys

    _, ckpt, artifacts = xs
    src = tmp_path / "in"
    src.mkdir()
    stored = RNG.integers(0, 65536, (100, 150, 3), dtype=np.uint16)
    write_image(src / "rgb16.png", stored / 65535.0, ImageInfo("png", "uint16", 16, stored.shape))
    (src / "ct.dcm").write_bytes(CT.read_bytes())
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH)
    attempts = tmp_path / "torch-attempts.txt"
    env = {**__import__("os").environ, "PYTHONPATH": f"{site}:{ROOT}", "TORCH_ATTEMPTS": str(attempts),
           "OMP_NUM_THREADS": "1"}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr
    attempts.unlink()
    proc = subprocess.run([sys.executable, "-m", "datprl_edge.cli.main", "restore", str(artifacts["dynamic"]),
                           str(src), "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not attempts.exists(), attempts.read_text()
    ckpt_run = subprocess.run([sys.executable, "-m", "datprl_edge.cli.main", "restore", str(ckpt), str(CT),
                               "-o", str(tmp_path / "c.dcm")], env=env, capture_output=True, text=True,
                              timeout=300)
    assert ckpt_run.returncode == 2 and "Traceback" not in ckpt_run.stderr
    assert "torch is needed" in ckpt_run.stderr and not (tmp_path / "c.dcm").exists()
    assert "restored 2, failed 0" in proc.stdout and "6 tiles" in proc.stdout  # 100x150 at the 64/16 default
    arr, info = read_image(tmp_path / "out" / "rgb16.png")
    assert (info.format, info.dtype, info.shape) == ("png", "uint16", (100, 150, 3))
    source, ds = pydicom.dcmread(CT), pydicom.dcmread(tmp_path / "out" / "ct.dcm")
    assert ds.pixel_array.dtype == source.pixel_array.dtype and ds.pixel_array.shape == (128, 128)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "Modality", "BitsStored", "RescaleIntercept"):
        assert ds.get(tag) == source.get(tag), tag
    assert ds.SOPInstanceUID != source.SOPInstanceUID and "xs.onnx" in ds.DerivationDescription
    # the same numbers as the torch checkpoint through the same tiles (this hand-made artifact has no
    # context input, so each tile uses its own statistics: --stats-size 0 does the same in torch)
    code, _, err = run_cli(capsys, "restore", ckpt, src, "-o", tmp_path / "torch", "--tile", "64",
                           "--overlap", "16", "--stats-size", "0")
    assert code == 0, err
    ref, _ = read_image(tmp_path / "torch" / "rgb16.png")
    assert np.abs(ref - arr).max() <= 2 / 65535
    ref_ct = pydicom.dcmread(tmp_path / "torch" / "ct.dcm").pixel_array.astype(int)
    assert np.abs(ref_ct - ds.pixel_array.astype(int)).max() <= 1


def test_artifact_task_must_match_its_fold(tmp_path, capsys, xs):
    _, _, artifacts = xs
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (40, 40), dtype=np.uint8)).save(src)
    code, _, err = run_cli(capsys, "restore", artifacts["dynamic"], src, "-o", tmp_path / "b.png",
                           "--task", "medical/ct_denoise")
    assert "has no routing input" in _single_error_line(code, err)  # exported by hand, image only
    code, _, err = run_cli(capsys, "restore", artifacts["folded"], src, "-o", tmp_path / "b.png",
                           "--task", "natural/denoise")
    assert "folded for medical/ct_denoise" in _single_error_line(code, err)
    for task in ("medical/ct_denoise", "auto"):
        code, _, err = run_cli(capsys, "restore", artifacts["folded"], src, "-o", tmp_path / "c.png",
                               "--task", task, "--overwrite")
        assert code == 0, err


def test_static_artifact_is_tiled_at_its_size(tmp_path, capsys, xs):
    _, _, artifacts = xs
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (100, 90, 3), dtype=np.uint8)).save(src)
    code, _, err = run_cli(capsys, "restore", artifacts["static"], src, "-o", tmp_path / "s.png")
    assert code == 0, err
    code, _, err = run_cli(capsys, "restore", artifacts["dynamic"], src, "-o", tmp_path / "d.png")
    assert code == 0, err
    diff = np.abs(read_image(tmp_path / "s.png")[0] - read_image(tmp_path / "d.png")[0])
    assert diff.max() <= 1 / 255
    code, _, err = run_cli(capsys, "restore", artifacts["static"], src, "-o", tmp_path / "t.png",
                           "--tile", "128")
    assert "at most 64" in _single_error_line(code, err)


# -- --task on models without a task map ---------------------------------------------------------

def test_task_on_an_adaptive_student_forces_its_routing_and_is_refused_without_prompts(tmp_path, capsys,
                                                                                       identity, xs):
    _, ckpt, _ = xs
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (16, 16), dtype=np.uint8)).save(src)
    code, _, err = run_cli(capsys, "restore", ckpt, src, "-o", tmp_path / "f.png",
                           "--task", "medical/ct_denoise")
    assert code == 0 and (tmp_path / "f.png").exists(), err
    code, _, err = run_cli(capsys, "restore", ckpt, src, "-o", tmp_path / "b.png",
                           "--task", "natural/denoize")
    assert "did you mean" in _single_error_line(code, err)
    code, _, err = run_cli(capsys, "restore", identity, src, "-o", tmp_path / "b.png",
                           "--task", "natural/denoise")
    assert "no prompt override" in _single_error_line(code, err)
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("key,value", [("pad_multiple", "0"), ("pad_multiple", "x"), ("img_channel", "7")])
def test_damaged_artifact_metadata_is_one_error(tmp_path, capsys, xs, key, value):
    import onnx

    proto = onnx.load(str(xs[2]["dynamic"]))
    for entry in proto.metadata_props:
        if entry.key == f"datprl_edge.{key}":
            entry.value = value
    bad = tmp_path / "damaged.onnx"
    onnx.save(proto, str(bad))
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (40, 40), dtype=np.uint8)).save(src)
    code, _, err = run_cli(capsys, "restore", bad, src, "-o", tmp_path / "b.png")
    assert f"metadata {key} = '{value}' is not an integer" in _single_error_line(code, err)
    assert not (tmp_path / "b.png").exists()


def test_library_noise_stays_off_stderr_unless_debug(tmp_path):
    """A garbage OpenVINO pair makes OpenVINO's parsers log to file descriptor 2 and a pickled .pth
    makes torch explain at length: the user sees one line, and --debug shows everything."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    (tmp_path / "g.xml").write_text("garbage")
    (tmp_path / "g.bin").write_bytes(b"garbage")
    torch.save({"params": {"a": torch.zeros(1)}, "hook": print}, tmp_path / "evil.pth")
    (tmp_path / "net.yml").write_text("network_g: {type: DualPromptRestormerv3}\n")
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (40, 40), dtype=np.uint8)).save(src)
    cli = [sys.executable, "-m", "datprl_edge"]
    cases = ((tmp_path / "g.xml", []), (tmp_path / "evil.pth", ["--network", tmp_path / "net.yml"]))
    for model, extra in cases:
        args = ["restore", model, src, "-o", tmp_path / "out.png", *extra]
        proc = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("datprl-edge: error:") and not (tmp_path / "out.png").exists()
    args = ["restore", tmp_path / "g.xml", src, "-o", tmp_path / "o.png"]
    debug = subprocess.run([*cli, "--debug", *map(str, args)], capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
