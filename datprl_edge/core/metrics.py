"""PSNR and SSIM: the one definition every stage, benchmark and report uses (numpy + scikit-image).

Convention (`METRIC_CONVENTION` records it in results JSONs):

* Argument order is `(reference, output)`: the ground truth (or the reference model's output) first.
* Images live in [0, 1]: data range 1. `clip=True` clips the *output* to [0, 1] first; scores against
  the ground truth clip (`image_metrics` does by default), parity checks between two models do not.
* PSNR is `skimage.metrics.peak_signal_noise_ratio(data_range=1)`, +inf when the output equals the
  reference and -inf when the output holds NaN or inf (so every threshold refuses it).
* A mean PSNR over images caps each image at `PSNR_CAP_DB` (100 dB) first (`mean_psnr`): one image
  equal to its reference then cannot make a mean, a gain or a drop infinite. Single-image and
  worst-image figures are never capped.
* SSIM is `skimage.metrics.structural_similarity(data_range=1)` with the Gaussian window of Wang et
  al. 2004 (`SSIM_OPTIONS`: 11x11, sigma 1.5, population covariance), over the colour channels via
  `channel_axis`; images need sides of at least `SSIM_MIN_SIDE` pixels.
* Grayscale tasks are scored on one channel: the channel mean (`grayscale=True`).
* Layouts are explicit: one image is "HWC" (default), "CHW" or "HW"; a batch is "NCHW" or "NHWC".
"""

from __future__ import annotations

import math

import numpy as np

from datprl_edge.core.errors import ConfigError

DATA_RANGE = 1.0
PSNR_CAP_DB = 100.0
SSIM_OPTIONS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
SSIM_MIN_SIDE = 11  # the Gaussian window: 2 * int(3.5 * sigma + 0.5) + 1
_CHANNEL_AXIS = {"HWC": 2, "CHW": 0, "HW": None}
_BATCH_LAYOUTS = {"NCHW": "CHW", "NHWC": "HWC"}

METRIC_CONVENTION = {
    "definition": "datprl_edge.core.metrics",
    "argument_order": "(reference, output): ground truth (or the reference model's output) first",
    "data_range": DATA_RANGE,
    "output": "clipped to [0, 1] before scoring against the ground truth",
    "psnr": "skimage.metrics.peak_signal_noise_ratio(data_range=1); inf when identical, -inf when the "
            "output is not finite",
    "psnr_mean": f"mean over images of min(PSNR, {PSNR_CAP_DB:g} dB)",
    "ssim": "skimage.metrics.structural_similarity(data_range=1, "
            + ", ".join(f"{k}={v}" for k, v in SSIM_OPTIONS.items()) + ", channel_axis=<colour axis>)",
    "grayscale_tasks": "scored on the channel mean",
}


def _pair(reference, output, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ConfigError(f"output shape {out.shape} differs from the reference {ref.shape}")
    return ref, (np.clip(out, 0.0, 1.0) if clip else out)


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of a mean squared error at data range 1; inf for 0."""
    return math.inf if mse <= 0 else float(10.0 * math.log10(DATA_RANGE ** 2 / mse))


def psnr(reference, output, *, clip: bool = False) -> float:
    """PSNR (dB) of one image (any layout: it is a mean over every value)."""
    ref, out = _pair(reference, output, clip)
    if not np.isfinite(out).all():
        return -math.inf
    if np.array_equal(ref, out):
        return math.inf
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, out, data_range=DATA_RANGE))


def ssim(reference, output, *, layout: str = "HWC", clip: bool = False) -> float:
    """SSIM of one image in `layout` ("HWC", "CHW" or "HW")."""
    if layout not in _CHANNEL_AXIS:
        raise ConfigError(f"image layout must be one of {', '.join(_CHANNEL_AXIS)}, got {layout!r}")
    ref, out = _pair(reference, output, clip)
    axis = _CHANNEL_AXIS[layout]
    if ref.ndim != (2 if axis is None else 3):
        raise ConfigError(f"a {layout} image needs {len(layout)} dimensions, got shape {ref.shape}")
    sides = [n for i, n in enumerate(ref.shape) if i != axis]
    if min(sides) < SSIM_MIN_SIDE:
        raise ConfigError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} px (its Gaussian "
                          f"window), got {sides[1]}x{sides[0]}")
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, out, data_range=DATA_RANGE, channel_axis=axis, **SSIM_OPTIONS))


def image_metrics(reference, output, grayscale: bool = False, *, layout: str = "HWC",
                  clip: bool = True) -> tuple[float, float]:
    """(PSNR dB, SSIM) of one output image against its ground truth. `grayscale` scores the channel
    mean of both (grayscale tasks: a scanner image has one channel)."""
    ref, out = _pair(reference, output, clip)
    if grayscale and layout != "HW":
        axis = _CHANNEL_AXIS.get(layout)
        if axis is None:
            raise ConfigError(f"image layout must be one of {', '.join(_CHANNEL_AXIS)}, got {layout!r}")
        ref, out, layout = ref.mean(axis=axis), out.mean(axis=axis), "HW"
    return psnr(ref, out), ssim(ref, out, layout=layout)


def _images(reference, output, layout: str):
    if layout not in _BATCH_LAYOUTS:
        raise ConfigError(f"batch layout must be one of {', '.join(_BATCH_LAYOUTS)}, got {layout!r}")
    ref, out = _pair(reference, output, False)
    if ref.ndim != 4:
        raise ConfigError(f"a {layout} batch needs 4 dimensions, got shape {ref.shape}")
    return zip(ref, out)


def batch_psnr(reference, output, *, layout: str = "NCHW", clip: bool = False) -> list[float]:
    """PSNR of each image of a batch (one value per image, not one over the batch)."""
    return [psnr(r, o, clip=clip) for r, o in _images(reference, output, layout)]


def batch_metrics(reference, output, *, layout: str = "NCHW", grayscale: bool = False,
                  clip: bool = True) -> list[tuple[float, float]]:
    """`image_metrics` of each image of a batch."""
    one = _BATCH_LAYOUTS.get(layout)
    return [image_metrics(r, o, layout=one, grayscale=grayscale, clip=clip)
            for r, o in _images(reference, output, layout)]


def mean_psnr(values) -> float:
    """Mean of per-image PSNRs, each capped at PSNR_CAP_DB first (finite when one image is exact)."""
    values = np.asarray(list(values), dtype=np.float64)
    if not values.size:
        raise ConfigError("a mean PSNR needs at least one image")
    return float(np.mean(np.minimum(values, PSNR_CAP_DB)))


MAX_DROP_DB = 10.0  # a larger INT8 drop budget is a typo (1 instead of 0.1), not a quality target


def check_drop_budget(value, name: str = "--max-drop") -> None:
    """A PSNR drop budget (INT8 against FP32): a number of dB in [0, MAX_DROP_DB], else ConfigError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 <= value <= MAX_DROP_DB:
        raise ConfigError(f"{name} is a PSNR budget in dB (0..{MAX_DROP_DB:g}, e.g. 0.1), got {value!r}")
