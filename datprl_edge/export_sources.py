"""What the export stage takes from the other stages: the task fold, the INT8 quantization of a
float model, and the images the artifacts are verified on."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def fold_for_task(model, task: str, calibration: str | None = None):
    """(the statically folded model for one task, fold report) from the fold stage: the task's
    prompt (its pool weights averaged over calibration images) baked into the convs."""
    if model is None:
        raise ConfigError("--task needs a float model to fold")
    from .fold import FoldConfig, fold_static

    result = fold_static(model, FoldConfig(task=task, calibration=calibration or "all", latency_iters=0))
    check = result.verification[task]
    return result.model, {"folded_task": task, "fold_psnr_db": check.get("psnr_db"),
                          "fold_prompt": result.prompts.get(task)}


def quantize_for_target(float_model, qat, target: str, config):
    """(QAT result, how it was obtained) for an INT8 artifact of `target`.

    A QAT checkpoint is used as it is; a float model gets the target's quantization
    (`targets/<target>_quant.py` through `qat.run_qat`) on the calibration recipe: post-training
    quantization when `config.qat_steps` is 0, else QAT for that many steps.
    """
    if qat is not None:
        return qat, f"the given QAT result {qat.source or ''}".strip()
    from .qat import QATConfig, run_qat

    calib, described = calibration_data(config.calibration or "all", float_model)
    # val_images=0: the export's own verification is the parity check; QAT's metrics are not needed
    qconfig = QATConfig(target=target, steps=config.qat_steps, val_images=0)
    with _quiet_torch():
        result = run_qat(float_model, qconfig, calib)
    how = ("post-training quantization (0 QAT steps)" if config.qat_steps == 0
           else f"quantization-aware training ({config.qat_steps} steps)")
    return result, f"{how} of the float model with the {target} quantizer on {described}"


_SETS: dict = {}


def calibration_set(spec: str):
    """(task id -> CalibrationTask, description) for a built set folder, or a recipe name/path
    (built once per process into a temporary folder)."""
    from pathlib import Path

    from .data.calib import build_calibration_set, load_calibration_set, load_recipe

    key = str(spec)
    if key not in _SETS:
        if Path(key).is_dir():
            _SETS[key] = (load_calibration_set(key), f"calibration set {key}")
        else:
            import tempfile

            recipe = load_recipe(key)
            with tempfile.TemporaryDirectory(prefix="datprl-calib-") as tmp:
                build_calibration_set(recipe, Path(tmp) / "set", progress=False)
                _SETS[key] = (load_calibration_set(Path(tmp) / "set"), f"calibration recipe {recipe.name!r}")
    return _SETS[key]


def calibration_data(spec: str, model):
    """(calibration items for `qat.run_qat`, description)."""
    try:
        tasks, described = calibration_set(spec)
    except ImportError:  # an install without the data stage: stand-in images
        channels = int(getattr(model, "img_channel", 3))
        images = [img[0] for _, img in _stand_in_images(8, (96, 96), channels)]
        return images, f"{len(images)} stand-in images (no calibration recipes in this install)"
    items = [{"lq": t.lq[i], "gt": t.gt[i], "task": t.task} for t in tasks.values() for i in range(len(t.lq))]
    return items, f"{described} ({len(items)} pairs)"


def _stand_in_images(count, size, channels):
    images = [(n, _to_channels(_crop(img, *size), channels)) for n, img in _from_samples(count)]
    seed = 0
    while len(images) < count:
        images.append((f"synthetic-{seed}", _synthetic(*size, channels, seed)))
        seed += 1
    return images


def _quiet_torch():
    from .targets.common import quiet

    return quiet()


def verification_images(config, channels: int) -> list[tuple[str, np.ndarray]]:
    """`config.verify_images` (name, (1, C, H, W) float32 in [0, 1]) images at `config.verify_size`.

    From the calibration recipe when one is set, else the bundled validation samples, else
    deterministic synthetic images (smooth gradients, edges and noise) when no samples ship.
    """
    count, (h, w) = config.verify_images, config.verify_size
    if config.calibration:
        images = [(name, _to_channels(_crop(img, h, w), channels))
                  for name, img in _from_calibration(config.calibration, count)]
        if images:
            return images[:count]
    return _stand_in_images(count, (h, w), channels)


def _from_calibration(spec: str, count: int) -> list:
    """The first input of each task in turn, so that a few images cover several tasks."""
    try:
        tasks, _ = calibration_set(spec)
    except ImportError:  # no recipes in this install: the stand-in images are used
        return []
    out, i = [], 0
    while len(out) < count and any(i < len(t.lq) for t in tasks.values()):
        out += [(f"{t.task} #{i}", t.lq[i]) for t in tasks.values() if i < len(t.lq)]
        i += 1
    return out[:count]


def _from_samples(count: int) -> list:
    try:
        from .data.samples import list_samples, load_sample

        samples = list_samples(split="val") or list_samples()
        return [(s.name, load_sample(s)) for s in samples[:count]]
    except (ImportError, OSError):
        return []


def _hwc(arr) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    return arr if arr.ndim == 3 else arr[:, :, None]


def _crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre crop to h x w, tiling first (reflected) when the image is smaller."""
    img = _hwc(img)
    if img.shape[0] < h or img.shape[1] < w:
        grow = ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0))
        img = np.pad(img, grow, mode="reflect")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.shape[2] != channels:
        img = img.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(img[:, :, :1], channels, axis=2)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1)[None], dtype=np.float32)


def _synthetic(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((channels, h, w), np.float32)
    for c in range(channels):
        fx, fy = rng.uniform(1, 4, size=2)
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + c)
        edges = 0.15 * ((xx // max(w // 4, 1) + yy // max(h // 4, 1)) % 2)
        img[c] = base + edges + 0.05 * rng.standard_normal((h, w))
    return np.clip(img, 0.0, 1.0)[None]
