"""How much more training a target needs: fits of a quality figure against training compute.

A chain of checkpoints, each trained further from the one before, gives points (compute, figure):
compute is the training pixels seen so far (steps x batch x crop^2, summed over the chain's stages).
Two trend shapes, fitted by least squares in log space (numpy.polyfit):

- `power`: a gap that shrinks towards 0 (teacher minus student): gap = A * P^-c;
- `log`: a gain that grows (PSNR gain over the input): gain = a + b * ln P.

`extrapolate` returns the fit and the compute at which it reaches the target. With three points and
learning-rate schedules restarted per stage, this is an order of magnitude, not a promise; the JSON
says so next to every figure.
"""

from __future__ import annotations

import math

SHAPES = ("power", "log")
MAX_FACTOR = 1000.0  # beyond this a fitted trend says nothing about reaching the target


def stage_pixels(stages) -> list:
    """Cumulative training pixels after each stage of [(steps, batch, crop), ...]."""
    out, total = [], 0
    for steps, batch, crop in stages:
        if min(steps, batch, crop) <= 0:
            raise ValueError(f"a stage needs positive steps, batch and crop, got {(steps, batch, crop)}")
        total += steps * batch * crop * crop
        out.append(total)
    return out


def extrapolate(compute, values, target: float, shape: str) -> dict:
    """Fit `values` against `compute` and solve for `target`: {"shape", "params", "target",
    "met_at_last_point", "compute_at_target" (None when the trend never gets there), "factor" (over
    the last point), "residual_db" (largest absolute misfit at the points)}."""
    import numpy as np

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    x = np.log(np.asarray(compute, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or len(x) != len(y):
        raise ValueError("need at least two (compute, value) points of equal count")
    met = bool(y[-1] <= target) if shape == "power" else bool(y[-1] >= target)
    out = {"shape": shape, "target": float(target), "points": len(x), "met_at_last_point": met}
    if shape == "power":
        if (y <= 0).any():
            out.update(params=None, compute_at_target=None, factor=None, residual_db=None,
                       note="a gap at or below 0 dB: the target is already met at a point")
            return out
        slope, icpt = np.polyfit(x, np.log(y), 1)
        fit = np.exp(icpt + slope * x)
        params = {"A": float(math.exp(icpt)), "c": float(-slope)}
        at = math.exp((math.log(target) - icpt) / slope) if slope < 0 else None
    else:
        slope, icpt = np.polyfit(x, y, 1)
        fit = icpt + slope * x
        params = {"a": float(icpt), "b": float(slope)}
        at = math.exp((target - icpt) / slope) if slope > 0 else None
    last = float(np.exp(x[-1]))
    factor = (at / last) if at else None
    if factor is not None and factor > MAX_FACTOR:
        at = factor = None
        out["note"] = (f"the fitted trend needs more than {MAX_FACTOR:g}x the compute so far: "
                       "no trend to the target")
    out.update(params=params, compute_at_target=at, factor=factor, residual_db=float(np.abs(fit - y).max()))
    return out


def curve_points(fit: dict, lo: float, hi: float, n: int = 64) -> tuple:
    """(compute, value) samples of a fitted trend on [lo, hi], log-spaced, for plotting."""
    import numpy as np

    xs = np.exp(np.linspace(math.log(lo), math.log(hi), n))
    p = fit["params"]
    ys = p["A"] * xs ** -p["c"] if fit["shape"] == "power" else p["a"] + p["b"] * np.log(xs)
    return xs, ys
