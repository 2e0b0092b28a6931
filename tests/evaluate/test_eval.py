"""`datprl-edge eval`: skimage PSNR/SSIM per task, the input baseline, drops against a reference,
folders of pairs, artifacts without torch, and one-line errors."""

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from torchblock import error_line, no_torch_env, run_cli  # noqa: E402

from datprl_edge.core.errors import ConfigError, InputNotFoundError, UnknownChoiceError  # noqa: E402
from datprl_edge.evaluate.driver import EvalConfig, evaluate, folder_sets, image_metrics  # noqa: E402

TINY = dict(count=2, size=48)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random edge-xs as a toolkit checkpoint and as its verified FP32 ONNX export."""
    import torch

    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.registry import create_model, model_config

    out = tmp_path_factory.mktemp("eval-models")
    torch.manual_seed(0)
    model = create_model("edge-xs")
    arch, options = model_config(model)
    ckpt = out / "edge-xs.safetensors"
    save_checkpoint(ckpt, model.state_dict(), CheckpointConfig(arch=arch, options=options, stage="student"))
    (report,) = export_model(model, ExportConfig(targets=("onnx",), precision="fp32", model_name="edge-xs",
                                                 verify_images=1, verify_size=(40, 48)), out)
    return {"ckpt": ckpt, "onnx": report.path}


def test_image_metrics_are_skimage():
    rng = np.random.default_rng(0)
    gt = rng.random((40, 50, 3), dtype=np.float32)
    out = np.clip(gt + 0.05 * rng.standard_normal(gt.shape).astype(np.float32), 0, 1)
    psnr, ssim = image_metrics(gt, out)
    assert psnr == pytest.approx(peak_signal_noise_ratio(gt.astype(float), out.astype(float), data_range=1.0))
    assert ssim == pytest.approx(structural_similarity(gt.astype(float), out.astype(float), data_range=1.0,
                                                       channel_axis=2, gaussian_weights=True, sigma=1.5,
                                                       use_sample_covariance=False))
    gray = np.repeat(gt[:, :, :1], 3, axis=2)
    psnr_g, _ = image_metrics(gray, np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2), grayscale=True)
    assert psnr_g == pytest.approx(peak_signal_noise_ratio(gray[:, :, 0].astype(float),
                                                           out.mean(axis=2).astype(float), data_range=1.0))
    with pytest.raises(ConfigError, match="differs"):
        image_metrics(gt, gt[:10])


def test_artifact_scores_equal_its_checkpoint(models):
    """The FP32 export against its own torch checkpoint: same scores, drops within export precision."""
    report = evaluate([str(models["onnx"])], EvalConfig(tasks=("natural/denoise", "medical/ct_denoise"),
                                                        reference=str(models["ckpt"]), **TINY))
    assert report["tasks"] == ["natural/denoise", "medical/ct_denoise"]
    (m,) = report["models"]
    assert m["kind"] == "artifact" and report["reference"]["kind"] == "torch"
    for task in report["tasks"]:
        score, ref = m["per_task"][task], report["reference"]["per_task"][task]
        assert score["images"] == 2 and 0 < score["ssim"] <= 1 and np.isfinite(score["psnr"])
        assert abs(score["psnr_drop_db"]) < 1e-3 and abs(score["ssim_drop"]) < 1e-4
        assert score["psnr_drop_db"] == pytest.approx(ref["psnr"] - score["psnr"], abs=2e-4)
        baseline = report["input"]["per_task"][task]
        assert baseline["images"] == 2 and baseline["psnr"] != score["psnr"]
    assert "psnr_drop_db" in m["mean"] and report["data"]["count_per_task"] == 2
    assert report["metrics"]["library"].startswith("scikit-image")


def test_folder_of_pairs_matches_a_manual_computation(models, tmp_path):
    from datprl_edge.io.images import ImageInfo, write_image
    from datprl_edge.runtime.sessions import open_artifact

    rng = np.random.default_rng(1)
    for sub in ("gt", "lq"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
    gts, lqs = [], []
    for i in range(2):
        gt = rng.random((32, 40, 3), dtype=np.float32)
        lq = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
        for sub, arr in (("gt", gt), ("lq", lq)):
            info = ImageInfo("npy", "float32", 32, arr.shape)
            write_image(tmp_path / "pairs" / sub / f"im{i}.npy", arr, info)
        gts.append(gt)
        lqs.append(lq)
    config = EvalConfig(data=str(tmp_path / "pairs"), tasks=("natural/denoise",))
    report = evaluate([str(models["onnx"])], config)
    session = open_artifact(models["onnx"])
    expected = []
    for gt, lq in zip(gts, lqs):
        out = session.run(lq.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        expected.append(peak_signal_noise_ratio(gt.astype(float), np.clip(out, 0, 1).astype(float),
                                                data_range=1.0))
    score = report["models"][0]["per_task"]["natural/denoise"]
    assert score["images"] == 2 and score["psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert report["data"]["images_per_task"] == {"natural/denoise": 2}


def test_folder_with_task_subfolders_and_errors(tmp_path):
    from datprl_edge.io.images import ImageInfo, write_image

    arr = np.full((16, 16, 3), 0.5, np.float32)
    for task in ("medical/ct_denoise", "natural/derain"):
        for sub in ("gt", "lq"):
            (tmp_path / task / sub).mkdir(parents=True)
            write_image(tmp_path / task / sub / "a.npy", arr, ImageInfo("npy", "float32", 32, arr.shape))
    sets = folder_sets(tmp_path)
    assert [s.task for s in sets] == ["medical/ct_denoise", "natural/derain"]
    assert [s.grayscale for s in sets] == [True, False]
    with pytest.raises(ConfigError, match="no pairs for natural/denoise"):
        folder_sets(tmp_path, ("natural/denoise",))
    (tmp_path / "natural/derain/lq/a.npy").unlink()
    with pytest.raises(ConfigError, match="unmatched files"):
        folder_sets(tmp_path)
    with pytest.raises(InputNotFoundError, match="no pairs"):
        folder_sets(tmp_path / "medical" / "ct_denoise" / "gt")
    with pytest.raises(InputNotFoundError, match="neither"):
        EvalConfig(data=str(tmp_path / "missing"))


def test_unknown_task_suggests_a_name(models):
    with pytest.raises(UnknownChoiceError, match="did you mean 'natural/denoise'"):
        evaluate([str(models["onnx"])], EvalConfig(tasks=("natural/denoize",), **TINY))


def test_cli_scores_an_artifact_without_torch(models, tmp_path):
    env = no_torch_env(tmp_path / "site")
    out = tmp_path / "eval.json"
    proc = run_cli(env, "eval", models["onnx"], "--task", "natural/denoise", "--count", "1", "--size", "32",
                   "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "natural/denoise" in proc.stdout and "input (degraded)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["command"].startswith("datprl-edge eval ") and report["tasks"] == ["natural/denoise"]
    assert report["models"][0]["per_task"]["natural/denoise"]["images"] == 1
    # a checkpoint needs torch: without it the error is one line
    proc = run_cli(env, "eval", models["ckpt"], "--task", "natural/denoise", "--count", "1", "--size", "32")
    assert "torch is needed for running the checkpoint" in error_line(proc)
