"""`datprl_edge.core.metrics`: the one PSNR/SSIM convention, checked against closed forms and
scikit-image's reference calls on a bundled image, and used by every stage that scores images."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from datprl_edge.core import metrics
from datprl_edge.core.errors import ConfigError
from datprl_edge.core.metrics import (
    PSNR_CAP_DB,
    SSIM_OPTIONS,
    batch_metrics,
    batch_psnr,
    image_metrics,
    mean_psnr,
    psnr,
    psnr_from_mse,
    ssim,
)


@pytest.fixture(scope="module")
def pair():
    """A bundled 'val' photo (96x80 crop) and a seeded noisy copy, both (H, W, 3) in [0, 1]."""
    from datprl_edge.data.samples import list_samples, load_sample

    gt = load_sample(list_samples("natural", "val")[0])[:96, :80].astype(np.float64)
    rng = np.random.default_rng(0)
    return gt, np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)


def test_psnr_of_a_known_mse_is_the_closed_form():
    ref = np.full((16, 12, 3), 0.25)
    assert psnr(ref, ref + 0.1) == pytest.approx(20.0)  # MSE 0.01 at data range 1
    assert psnr(ref, ref - 0.01) == pytest.approx(40.0)
    assert psnr_from_mse(0.01) == pytest.approx(20.0) and psnr_from_mse(0.0) == math.inf


def test_identical_is_inf_non_finite_is_minus_inf_and_means_cap():
    img = np.random.default_rng(1).random((12, 12, 3))
    assert psnr(img, img.copy()) == math.inf
    assert psnr(img.astype(np.float32), img.astype(np.float32)) == math.inf
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    assert psnr(img, bad) == -math.inf and psnr(img, bad, clip=True) == -math.inf
    assert mean_psnr([math.inf, 30.0]) == pytest.approx((PSNR_CAP_DB + 30.0) / 2)
    assert mean_psnr([120.0, 40.0]) == pytest.approx(70.0) and mean_psnr(np.array([25.0])) == 25.0
    with pytest.raises(ConfigError, match="at least one"):
        mean_psnr([])


def test_the_convention_is_skimage_with_the_gaussian_window(pair):
    gt, out = pair
    p, s = image_metrics(gt, out)
    assert p == pytest.approx(peak_signal_noise_ratio(gt, out, data_range=1.0), abs=1e-12)
    reference = structural_similarity(gt, out, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False)
    assert s == pytest.approx(reference, abs=1e-12)
    assert SSIM_OPTIONS == {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    uniform = structural_similarity(gt, out, data_range=1.0, channel_axis=2)  # skimage's default window
    assert abs(s - uniform) > 1e-4  # the window is a choice the numbers depend on
    pg, sg = image_metrics(gt, out, grayscale=True)
    assert pg == pytest.approx(peak_signal_noise_ratio(gt.mean(2), out.mean(2), data_range=1.0), abs=1e-12)
    assert sg == pytest.approx(structural_similarity(gt.mean(2), out.mean(2), data_range=1.0, **SSIM_OPTIONS),
                               abs=1e-12)


def test_argument_order_matters_only_through_clipping(pair):
    gt, out = pair
    assert psnr(gt, out) == psnr(out, gt)
    assert ssim(gt, out) == pytest.approx(ssim(out, gt), abs=1e-12)  # fixed data range: symmetric
    over = gt + 0.2  # an output above 1: clipping applies to the output (second argument) only
    assert psnr(gt, over, clip=True) > psnr(gt, over)
    assert psnr(gt, over, clip=True) != psnr(over, gt, clip=True)
    assert image_metrics(gt, over)[0] == psnr(gt, np.clip(over, 0, 1))


def test_nchw_batch_agrees_with_hwc_images(pair):
    gt, out = pair
    gts = np.stack([gt, gt[::-1]])
    outs = np.stack([out, out[::-1]])
    per_image = [image_metrics(g, o) for g, o in zip(gts, outs)]
    nchw = batch_metrics(gts.transpose(0, 3, 1, 2), outs.transpose(0, 3, 1, 2))
    assert np.allclose(nchw, per_image, rtol=0, atol=1e-12)
    assert np.allclose(batch_metrics(gts, outs, layout="NHWC"), per_image, rtol=0, atol=1e-12)
    assert np.allclose(batch_psnr(gts.transpose(0, 3, 1, 2), outs.transpose(0, 3, 1, 2)),
                       [p for p, _ in per_image], rtol=0, atol=1e-12)
    gray = batch_metrics(gts.transpose(0, 3, 1, 2), outs.transpose(0, 3, 1, 2), grayscale=True)
    expect = [image_metrics(g, o, grayscale=True) for g, o in zip(gts, outs)]
    assert np.allclose(gray, expect, rtol=0, atol=1e-12)
    assert ssim(gt.transpose(2, 0, 1), out.transpose(2, 0, 1), layout="CHW") == pytest.approx(ssim(gt, out),
                                                                                               abs=1e-12)


def test_errors_are_config_errors(pair):
    gt, out = pair
    with pytest.raises(ConfigError, match="differs"):
        psnr(gt, out[:10])
    with pytest.raises(ConfigError, match="11x11"):
        ssim(gt[:10], out[:10])
    with pytest.raises(ConfigError, match="layout"):
        ssim(gt, out, layout="WHC")
    with pytest.raises(ConfigError, match="4 dimensions"):
        batch_psnr(gt, out)
    with pytest.raises(ConfigError, match="layout"):
        batch_metrics(gt[None], out[None], layout="HWC")


def test_convention_is_recorded_as_json():
    conv = json.loads(json.dumps(metrics.METRIC_CONVENTION))
    assert conv["data_range"] == 1.0 and "gaussian_weights=True" in conv["ssim"]
    assert str(int(PSNR_CAP_DB)) in conv["psnr_mean"]
    assert conv["argument_order"].startswith("(reference, output)")


def test_module_imports_neither_torch_nor_skimage_up_front():
    code = ("import sys, datprl_edge.core.metrics; "
            "print(any(m.split('.')[0] in ('torch', 'skimage') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_stage_scores_with_it(pair):
    """eval, classical baselines, the data preview and artifact verification share the definition;
    train and QAT validation give the same numbers as it, order (reference, output)."""
    torch = pytest.importorskip("torch")
    from datprl_edge.core.artifacts import psnr_db
    from datprl_edge.data import preview
    from datprl_edge.evaluate import driver
    from datprl_edge.quantize.loop import evaluate as qat_evaluate
    from datprl_edge.train.evaluate import evaluate as train_evaluate

    gt, out = pair
    assert driver.image_metrics is image_metrics and preview.psnr is psnr
    assert psnr_db(gt, out) == psnr(gt, out) and psnr_db(gt, gt) == math.inf

    lq = torch.from_numpy(np.stack([out, out[::-1]]).transpose(0, 3, 1, 2)).float()
    ref = torch.from_numpy(np.stack([gt, gt[::-1]]).transpose(0, 3, 1, 2)).float()
    expect = batch_metrics(ref.numpy(), lq.numpy())
    identity = torch.nn.Identity()
    identity.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))  # evaluate() asks for a device
    got = train_evaluate(identity, {"natural/denoise": (lq, ref), "medical/ct_denoise": (lq, ref)})
    row = got["tasks"]["natural/denoise"]
    assert row["psnr"] == pytest.approx(mean_psnr(p for p, _ in expect), abs=1e-4)
    assert row["ssim"] == pytest.approx(np.mean([s for _, s in expect]), abs=1e-5)
    assert row["psnr_input"] == row["psnr"]
    gray = batch_metrics(ref.numpy(), lq.numpy(), grayscale=True)  # a grayscale task: the channel mean
    ct = got["tasks"]["medical/ct_denoise"]
    assert ct["psnr"] == pytest.approx(mean_psnr(p for p, _ in gray), abs=1e-4)

    scores = qat_evaluate(identity, {"t": (lq, ref), "same": (ref, ref)}, multiple=1)
    assert scores["t"] == pytest.approx(mean_psnr(p for p, _ in expect), abs=1e-9)
    assert scores["same"] == PSNR_CAP_DB  # identical images: the capped mean, not inf
