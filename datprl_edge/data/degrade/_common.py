"""Helpers shared by the degradation modules: input checks, seeding, luminance, clipping."""

from __future__ import annotations

import numpy as np

from datprl_edge.core.errors import ChannelCountError, ConfigError, NonFiniteInputError

# ITU-R BT.601 luma weights; they sum to 1, so an image with equal channels keeps its value.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def check_image(image) -> np.ndarray:
    """Validate an (H, W, 3) image in [0, 1] and return it as float64 for the arithmetic."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ChannelCountError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ChannelCountError(f"image {arr.shape[0]}x{arr.shape[1]} is too small to degrade (min 8x8)")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteInputError("image holds NaN or infinite values")
    return np.clip(arr.astype(np.float64), 0.0, 1.0)


def check_severity(severity) -> float:
    try:
        s = float(severity)
    except (TypeError, ValueError):
        raise ConfigError(f"severity must be a number in [0, 1], got {severity!r}") from None
    if not 0.0 <= s <= 1.0:
        raise ConfigError(f"severity must be in [0, 1], got {s}")
    return s


def as_rng(seed) -> np.random.Generator:
    """A Generator from an int seed, a SeedSequence, a Generator (used as is) or None (seed 0)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(0 if seed is None else seed)


def lerp(lo: float, hi: float, s: float) -> float:
    return lo + (hi - lo) * s


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ LUMA


def finish(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and return contiguous float32."""
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def gray3(y: np.ndarray) -> np.ndarray:
    """A single-channel image as (H, W, 3) float32 with equal channels, clipped to [0, 1]."""
    return finish(np.repeat(np.asarray(y)[..., None], 3, axis=2))
