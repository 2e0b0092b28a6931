"""Resource limits, in one place, checked before anything is allocated.

Each limit has a default that fits this toolkit's edge use (a 4K drone frame is 8.3 MP, a CT slice
0.26 MP) and an environment variable that raises it; commands that read user files also take
`--max-pixels`. A value beyond a limit ends in one `ResourceLimitError` line that names the variable.
"""

from __future__ import annotations

import dataclasses
import os

from datprl_edge.core.errors import ConfigError, ResourceLimitError


@dataclasses.dataclass(frozen=True)
class Limit:
    name: str
    env: str
    default: int
    unit: str
    what: str


LIMITS = {
    "pixels": Limit("pixels", "DATPRL_EDGE_MAX_PIXELS", 64_000_000, "pixels",
                    "pixels per image (every format, decoded or not)"),
    "params": Limit("params", "DATPRL_EDGE_MAX_PARAMS", 200_000_000, "parameters",
                    "model parameters, computed from a checkpoint's config before the model is built"),
    "macs": Limit("macs", "DATPRL_EDGE_MAX_MACS", 2_000_000_000_000, "MACs",
                  "model multiply-accumulates at 256x256, computed before the model is built"),
    "crop": Limit("crop", "DATPRL_EDGE_MAX_CROP", 2048, "px", "training, calibration and QAT crop size"),
    "batch": Limit("batch", "DATPRL_EDGE_MAX_BATCH", 4096, "images", "batch size"),
}
_overrides: dict[str, int] = {}


def limit(name: str) -> int:
    """The current value of a limit: an override (`--max-pixels`), the environment, or the default."""
    spec = LIMITS[name]
    if name in _overrides:
        return _overrides[name]
    text = os.environ.get(spec.env, "").strip()
    if not text:
        return spec.default
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(f"{spec.env}={text!r} is not a number of {spec.unit}") from None
    if value <= 0:
        raise ConfigError(f"{spec.env} must be a positive number of {spec.unit}, got {text}")
    return value


def set_limit(name: str, value: int | None) -> None:
    """Override a limit for this process (the CLI's `--max-pixels`); None restores the default."""
    if value is None:
        _overrides.pop(name, None)
        return
    if int(value) <= 0:
        raise ConfigError(f"--max-{name} must be a positive number of {LIMITS[name].unit}, got {value}")
    _overrides[name] = int(value)


def check(name: str, value: int, subject: str) -> None:
    """Raise ResourceLimitError when `value` exceeds the limit `name` (say what and how to raise it)."""
    cap = limit(name)
    if int(value) > cap:
        spec = LIMITS[name]
        raise ResourceLimitError(f"{subject}: {_fmt(value)} {spec.unit} is over the limit of {_fmt(cap)} "
                                 f"{spec.unit} ({spec.what}); raise it with {spec.env}=N")


def check_image(height: int, width: int, subject: str) -> None:
    """Pixel limit for an image of this size, and sane dimensions, before decoding it."""
    if int(height) <= 0 or int(width) <= 0:
        raise ResourceLimitError(f"{subject}: image size {height}x{width} is empty or invalid")
    check("pixels", int(height) * int(width), f"{subject} is {int(height)}x{int(width)}")


def _fmt(n: int) -> str:
    n = int(n)
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)
