"""Classical restoration baselines per task, from libraries: numpy in, numpy out.

Every method takes the degraded image, float32 (H, W, 3) in [0, 1], and returns one of the same
shape and dtype. Medical tasks carry equal channels: methods work on one channel and return equal
channels. `BASELINES` lists the methods of each task; `select_best` picks a task's best method on
the *train* split (never on the images it is then scored on); `run_baseline` runs one by name.
Nothing is learnt, and no method sees the ground truth or the degradation settings, except the
nominal SR factor (x4) that the task's name states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from datprl_edge.core.errors import ConfigError, MissingBackendError, UnknownChoiceError

SR_FACTOR = 4  # the nominal factor of the SR tasks; the shifted set uses x4.25, which methods do not know
# Blind deconvolution stand-in: the true camera-shake kernel is unknown to the method, so it
# assumes a generic isotropic Gaussian PSF of this width.
GENERIC_PSF_SIGMA = 2.0


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    fn: Callable = dataclasses.field(repr=False)
    uses: str  # the library function(s), for the report


def _check(image) -> np.ndarray:
    from datprl_edge.data.degrade._common import check_image

    return check_image(image)


def _out(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


def _gray(img: np.ndarray) -> bool:
    return bool(np.allclose(img[..., 0], img[..., 1]) and np.allclose(img[..., 0], img[..., 2]))


def _per_image(fn):
    """Apply `fn` to one channel for equal-channel (grey) images, else to the (H, W, 3) image with
    `channel_axis=2` where `fn` accepts it."""
    def run(image, **kw):
        img = _check(image)
        if _gray(img):
            return _out(fn(img[..., 0], None, **kw))
        return _out(fn(img, 2, **kw))

    return run


def sigma_estimate(img: np.ndarray, channel_axis) -> float:
    from skimage.restoration import estimate_sigma

    s = estimate_sigma(img, channel_axis=channel_axis, average_sigmas=True)
    return float(max(s, 1e-4))


# ---- denoisers -------------------------------------------------------------------------------

def _nlm(img, axis):
    from skimage.restoration import denoise_nl_means

    sigma = sigma_estimate(img, axis)
    return denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True,
                            channel_axis=axis)


def _wavelet(img, axis):
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(img, method="BayesShrink", mode="soft", rescale_sigma=True, channel_axis=axis)


def _tv(img, axis):
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(img, weight=max(0.01, 1.5 * sigma_estimate(img, axis)), channel_axis=axis)


def _bm3d(img, axis):
    try:
        import bm3d
    except ImportError:
        raise MissingBackendError("bm3d", purpose="the BM3D baseline") from None
    sigma = sigma_estimate(img, axis)
    if axis is None:
        return bm3d.bm3d(img, sigma_psd=sigma)
    return bm3d.bm3d_rgb(img, sigma_psd=sigma)


def _median(img, axis):
    from scipy.ndimage import median_filter

    return median_filter(img, size=(5, 5) if axis is None else (5, 5, 1), mode="reflect")


# ---- SR, sharpening, deblurring ----------------------------------------------------------------

def _lanczos(image):
    """The input is bicubic-upsampled; re-derive its low-res image (antialiased bicubic down x4,
    Pillow) and upsample that with Lanczos (Pillow)."""
    from PIL import Image

    img = _check(image)
    h, w = img.shape[:2]
    small = (max(1, round(w / SR_FACTOR)), max(1, round(h / SR_FACTOR)))
    chans = []
    for c in range(3):
        ch = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
        lr = ch.resize(small, Image.Resampling.BICUBIC)
        chans.append(np.asarray(lr.resize((w, h), Image.Resampling.LANCZOS)))
    return _out(np.stack(chans, axis=2))


def _unsharp(img, axis):
    from skimage.filters import unsharp_mask

    return unsharp_mask(img, radius=2.0, amount=0.7, channel_axis=axis, preserve_range=True)


def _generic_psf() -> np.ndarray:
    r = int(np.ceil(3 * GENERIC_PSF_SIGMA))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    psf = np.exp(-(yy**2 + xx**2) / (2 * GENERIC_PSF_SIGMA**2))
    return psf / psf.sum()


def _channels(img, axis, fn):
    if axis is None:
        return fn(img)
    return np.stack([fn(img[..., c]) for c in range(img.shape[2])], axis=2)


def _wiener(img, axis):
    from skimage.restoration import unsupervised_wiener

    psf = _generic_psf()
    return _channels(img, axis, lambda ch: unsupervised_wiener(ch, psf, clip=True, rng=0)[0])


def _richardson_lucy(img, axis):
    from skimage.restoration import richardson_lucy

    psf = _generic_psf()
    pad = psf.shape[0]
    def run(ch):
        padded = np.pad(ch, pad, mode="reflect")
        return richardson_lucy(padded, psf, num_iter=10, clip=True)[pad:-pad, pad:-pad]
    return _channels(img, axis, run)


# ---- haze and clouds: dark channel prior ------------------------------------------------------

def _box(x: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int = 40, eps: float = 1e-3) -> np.ndarray:
    """Grey-guide guided filter (He et al., TPAMI 2013) with box means from scipy."""
    mean_i, mean_p = _box(guide, r), _box(src, r)
    cov = _box(guide * src, r) - mean_i * mean_p
    var = _box(guide * guide, r) - mean_i**2
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def dark_channel_prior(image, patch: int = 15, omega: float = 0.95, t0: float = 0.1) -> np.ndarray:
    """Dehazing by the dark channel prior (He, Sun & Tang, CVPR 2009): airlight from the brightest
    0.1 % of the dark channel, transmission 1 - omega * dark(I / A) refined by a guided filter,
    then J = (I - A) / max(t, t0) + A. Written with numpy and scipy.ndimage.minimum_filter."""
    from scipy.ndimage import minimum_filter

    img = _check(image)
    dark = minimum_filter(img.min(axis=2), size=patch, mode="reflect")
    n = max(1, dark.size // 1000)
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = np.maximum(img.reshape(-1, 3)[idx].max(axis=0), 1e-3)
    t = 1.0 - omega * minimum_filter((img / airlight).min(axis=2), size=patch, mode="reflect")
    r = max(2, min(img.shape[:2]) // 8)
    t = guided_filter(img.mean(axis=2), t, r=r, eps=1e-3)
    return _out((img - airlight) / np.maximum(t, t0)[..., None] + airlight)


def _clahe(img, axis):
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(img, clip_limit=0.01)  # RGB: on the HSV value channel


def _identity(image):
    return _out(_check(image))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("input", _identity, "none: the degraded image itself (for SR tasks: bicubic upsampling)"),
    Method("lanczos", _lanczos, "PIL Image.resize BICUBIC down x4 (re-derived low-res), LANCZOS up"),
    Method("unsharp", _per_image(_unsharp), "skimage.filters.unsharp_mask(radius=2, amount=0.7)"),
    Method("nlm", _per_image(_nlm), "skimage.restoration.denoise_nl_means(h=0.8 sigma, fast_mode), "
                                    "sigma from skimage.restoration.estimate_sigma"),
    Method("wavelet", _per_image(_wavelet), "skimage.restoration.denoise_wavelet(BayesShrink, soft)"),
    Method("tv", _per_image(_tv), "skimage.restoration.denoise_tv_chambolle(weight=1.5 sigma_est)"),
    Method("bm3d", _per_image(_bm3d), "bm3d.bm3d / bm3d.bm3d_rgb(sigma_psd=estimate_sigma)"),
    Method("median", _per_image(_median), "scipy.ndimage.median_filter(size=5)"),
    Method("wiener", _per_image(_wiener), "skimage.restoration.unsupervised_wiener, blind: generic "
                                          f"Gaussian PSF sigma {GENERIC_PSF_SIGMA} px"),
    Method("richardson_lucy", _per_image(_richardson_lucy),
           f"skimage.restoration.richardson_lucy(num_iter=10), blind: generic Gaussian PSF sigma "
           f"{GENERIC_PSF_SIGMA} px"),
    Method("dcp", dark_channel_prior, "dark channel prior (He et al. 2009), numpy + scipy.ndimage, "
                                      "guided-filter refinement"),
    Method("clahe", _per_image(_clahe), "skimage.exposure.equalize_adapthist(clip_limit=0.01)"),
)}

BASELINES: dict[str, list[str]] = {
    "natural/sr_x4": ["lanczos", "unsharp"],
    "natural/derain": ["median", "nlm"],
    "natural/motion_deblur": ["wiener", "richardson_lucy", "unsharp"],
    "medical/mri_sr": ["unsharp", "tv"],
    "medical/ct_denoise": ["nlm", "wavelet", "tv", "bm3d"],
    "medical/pet_denoise": ["nlm", "wavelet", "tv", "bm3d"],
    "remote/sr_x4": ["lanczos", "unsharp"],
    "remote/cloud_removal": ["dcp"],
    "remote/dehaze": ["dcp"],
    "natural/denoise": ["nlm", "wavelet", "tv", "bm3d"],
    "natural/dehaze": ["dcp"],
    "natural/lowlight": ["clahe"],
}


def methods_for(task) -> list[str]:
    """The classical methods of a task id (an empty list for a task without one)."""
    from datprl_edge.data.tasks import get_task

    return list(BASELINES.get(get_task(task).id, []))


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownChoiceError("classical method", str(name), METHODS) from None


def run_baseline(name: str, image) -> np.ndarray:
    """Restore `image` (float32 (H, W, 3) in [0, 1]) with the classical method `name`."""
    return get_method(name).fn(image)


def select_best(task, *, count: int = 4, size: int = 128, seed: int = 0, methods=None) -> dict:
    """The task's best classical method by mean PSNR on `count` fixed pairs of the *train* split.

    Returns {"task", "best", "psnr" {method: dB}, "input_psnr", "count", "size", "split"}; "best" is
    None for a task without methods. The input is scored but never chosen.
    """
    from datprl_edge.core.metrics import image_metrics, mean_psnr
    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.data.tasks import get_task

    task = get_task(task)
    names = list(methods) if methods is not None else methods_for(task)
    for n in names:
        get_method(n)
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    pairs = fixed_pairs(task, count, size, seed, split="train")
    scores = {n: [] for n in ["input", *names]}
    for p in pairs:
        for n in scores:
            scores[n].append(image_metrics(p.gt, run_baseline(n, p.lq), task.grayscale)[0])
    means = {n: round(mean_psnr(v), 4) for n, v in scores.items()}
    best = max(names, key=lambda n: means[n]) if names else None
    return {"task": task.id, "best": best, "psnr": {n: means[n] for n in names}, "input_psnr": means["input"],
            "count": count, "size": size, "split": "train", "seed": seed}
