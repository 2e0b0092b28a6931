"""Task catalogue and degradations: determinism, ranges, physics checks, PSNR bands, severity."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as psnr

from datprl_edge.core.errors import ChannelCountError, ConfigError, NonFiniteInputError, UnknownChoiceError
from datprl_edge.data.degrade.blur import shake_trajectory, trajectory_kernel
from datprl_edge.data.degrade.resample import bicubic_down_up
from datprl_edge.data.pairs import fixed_pairs
from datprl_edge.data.tasks import TASK_SETS, TASKS, degrade, get_task, list_tasks, resolve_tasks

NINE = ["natural/sr_x4", "natural/derain", "natural/motion_deblur", "medical/mri_sr", "medical/ct_denoise",
        "medical/pet_denoise", "remote/sr_x4", "remote/cloud_removal", "remote/dehaze"]
ALL = list(TASKS)

# PSNR(lq, gt) at default severity, mean over 4 seeded 128-pixel crops of the bundled 'val'
# samples (measured: see the test). Dehaze, clouds and low light change the whole image, so
# their PSNR is low by nature.
PSNR_BANDS = {
    "natural/sr_x4": (24, 33), "natural/derain": (21, 28), "natural/motion_deblur": (21, 29),
    "medical/mri_sr": (27, 33), "medical/ct_denoise": (27, 32), "medical/pet_denoise": (26, 33),
    "remote/sr_x4": (19, 26), "remote/cloud_removal": (10, 17), "remote/dehaze": (10, 17),
    "natural/denoise": (19.5, 21.5), "natural/dehaze": (10.5, 17), "natural/lowlight": (7, 14),
}


@pytest.fixture(scope="module")
def crops():
    """Four 96-pixel crops per domain from the bundled val samples (gt only)."""
    out = {}
    for domain, task in (("natural", "natural/denoise"), ("medical", "medical/ct_denoise"),
                         ("remote", "remote/dehaze")):
        out[domain] = [p.gt for p in fixed_pairs(task, 4, 96, seed=5, split="val", severities=[0.0])]
    return out


def test_catalogue_ids_and_sets():
    assert list(TASK_SETS["9task"]) == NINE
    assert set(TASK_SETS["natural5"]) == {"natural/denoise", "natural/derain", "natural/dehaze",
                                          "natural/motion_deblur", "natural/lowlight"}
    assert set(TASKS) == set(NINE) | {"natural/denoise", "natural/dehaze", "natural/lowlight"}
    for t in TASKS.values():
        assert t.domain == t.id.split("/")[0] and t.description and 0 <= t.default_severity <= 1
        assert t.grayscale == (t.domain == "medical")
    assert [t.id for t in list_tasks("natural5")] == list(TASK_SETS["natural5"])
    assert [t.id for t in resolve_tasks("natural5,medical/ct_denoise,natural/derain")] == \
        list(TASK_SETS["natural5"]) + ["medical/ct_denoise"]


def test_unknown_task_did_you_mean():
    with pytest.raises(UnknownChoiceError, match="did you mean 'medical/ct_denoise'"):
        get_task("medical/ct_denose")
    with pytest.raises(UnknownChoiceError, match="did you mean '9task'"):
        resolve_tasks(["9tsk"])


@pytest.mark.parametrize("task_id", ALL)
def test_degradation_contract(task_id, crops):
    task = get_task(task_id)
    img = crops[task.domain][0]
    a = degrade(task_id, img, seed=3)
    assert a.shape == img.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, degrade(task_id, img, seed=3))
    b = degrade(task_id, img, seed=4)
    assert np.array_equal(a, b) != task.stochastic
    assert not np.array_equal(a, img)
    if task.grayscale:
        assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    # a numpy Generator works as the seed too, and the input is not modified
    before = img.copy()
    degrade(task_id, img, 0.3, np.random.default_rng(1))
    assert np.array_equal(img, before)


@pytest.mark.parametrize("task_id", ALL)
def test_severity_monotonic(task_id, crops):
    task = get_task(task_id)
    means = []
    for sev in (0.1, 0.5, 0.9):
        means.append(np.mean([psnr(task.prepare_gt(g), task.degrade(task.prepare_gt(g), sev, seed=k),
                                   data_range=1.0) for k, g in enumerate(crops[task.domain])]))
    assert means[0] > means[1] > means[2], means


@pytest.mark.parametrize("task_id", ALL)
def test_psnr_band_at_default(task_id):
    values = [psnr(p.gt, p.lq, data_range=1.0) for p in fixed_pairs(task_id, 4, 128, seed=0, split="val")]
    lo, hi = PSNR_BANDS[task_id]
    assert lo <= np.mean(values) <= hi, (task_id, np.mean(values))


def test_bad_inputs():
    img = np.full((32, 32, 3), 0.5, np.float32)
    with pytest.raises(ChannelCountError):
        degrade("natural/denoise", img[..., :1])
    with pytest.raises(ChannelCountError):
        degrade("natural/denoise", img[:4, :4])
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError):
        degrade("natural/denoise", bad)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        degrade("natural/denoise", img, severity=1.5)


def test_sr_matches_torch_antialiased_bicubic(crops):
    torch = pytest.importorskip("torch")
    img = crops["natural"][1]
    f = torch.nn.functional.interpolate
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    ref = f(f(x, size=(24, 24), mode="bicubic", antialias=True), size=(96, 96), mode="bicubic",
            antialias=True)
    ref = ref.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(bicubic_down_up(img, 0.5) - ref).max() < 1e-5


def test_mri_keeps_only_the_centre_of_kspace():
    rng = np.random.default_rng(0)
    y = rng.random((64, 64))
    low = np.fft.ifft2(np.fft.ifftshift(np.pad(np.fft.fftshift(np.fft.fft2(y))[24:40, 24:40], 24)))
    out = degrade("medical/mri_sr", np.repeat(y[..., None], 3, axis=2).astype(np.float32))
    assert np.allclose(out[..., 0], np.clip(np.abs(low), 0, 1), atol=1e-5)


def test_noise_physics():
    flat = np.full((128, 128, 3), 0.5, np.float32)
    g = degrade("natural/denoise", flat, 0.5, seed=0) - flat
    assert abs(g.std() - 25 / 255) < 0.003 and abs(g.mean()) < 0.003
    # Poisson thinning is unbiased: the mean count level survives low-count PET
    pet = degrade("medical/pet_denoise", flat, 0.8, seed=0)
    assert abs(pet.mean() - 0.5) < 0.01
    # more dose, less CT noise; the noise is zero-mean
    ct = [degrade("medical/ct_denoise", flat, s, seed=0) - flat for s in (0.2, 0.8)]
    assert ct[0].std() < ct[1].std() / 3 and abs(ct[1].mean()) < 0.01
    # rain only brightens (blend towards the drop); low light darkens; clouds brighten
    assert (degrade("natural/derain", flat, seed=0) >= flat - 1e-6).all()
    assert degrade("natural/lowlight", flat, seed=0).mean() < 0.3
    assert degrade("remote/cloud_removal", flat * 0.6, seed=0).mean() > 0.3


def test_motion_kernel_is_normalised_and_preserves_flat_images():
    k = trajectory_kernel(shake_trajectory(np.random.default_rng(0), 20.0))
    assert k.shape[0] % 2 == 1 and abs(k.sum() - 1) < 1e-9 and (k >= 0).all()
    flat = np.full((64, 64, 3), 0.4, np.float32)
    assert np.allclose(degrade("natural/motion_deblur", flat, seed=1), 0.4, atol=1e-5)


def test_degrade_package_does_not_import_tasks():
    """data.tasks maps ids to degradations; the degradation modules never import the task table."""
    import subprocess
    import sys

    code = ("import sys, datprl_edge.data.degrade, datprl_edge.data.degrade.shifted; "
            "print('datprl_edge.data.tasks' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
