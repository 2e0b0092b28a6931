"""Image sizes and tensor shapes as text, read and written one way everywhere.

"HxW" is height x width. Users may write "256x256", "256*256", "256 x 256" or "256" (a square);
config files may also give a [height, width] pair. A full tensor shape ("1x3x256x256") uses the
same separators. Artifact metadata lists static sizes as "256x256,512x512", or "dynamic".
"""

from __future__ import annotations

from datprl_edge.core import limits
from datprl_edge.core.errors import ConfigError

MAX_SIDE = 16384  # pixels per side; larger inputs are tiled, never exported or benchmarked whole
DYNAMIC = "dynamic"


def _ints(text) -> list[int] | None:
    try:
        return [int(p) for p in str(text).lower().replace("*", "x").split("x")]
    except ValueError:
        return None


def parse_hw(value, what: str = "shape") -> tuple[int, int]:
    """'256x256', '256*256', '256' (square) or a (height, width) pair -> (height, width).

    Each side must be 1..MAX_SIDE pixels. `what` names the option in the error ("--size")."""
    if isinstance(value, (list, tuple)):
        try:
            hw = [int(v) for v in value]
        except (TypeError, ValueError):
            hw = []
        if len(hw) != 2:
            raise ConfigError(f"{what} must be (height, width), got {value!r}")
    else:
        hw = _ints(value)
        if hw is not None and len(hw) == 1:
            hw *= 2
        if hw is None or len(hw) != 2:
            raise ConfigError(f"{what} must look like HxW (height x width), e.g. 256x256, or one size for a "
                              f"square; got {value!r}")
    h, w = hw
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ConfigError(f"{what} must be between 1 and {MAX_SIDE} pixels per side, got {h}x{w}")
    limits.check_image(h, w, what)
    return h, w


def parse_dims(text, form: str = "BxCxHxW", what: str = "--shape", example: str = "1x3x256x256") -> tuple:
    """A full shape such as '1x3x256x256' -> (1, 3, 256, 256): as many sizes >= 1 as `form` names."""
    dims = _ints(text)
    if dims is None or len(dims) != len(form.split("x")) or min(dims) < 1:
        raise ConfigError(f"{what} takes {form}, e.g. {example}; got {text!r}")
    return tuple(dims)


def format_dims(dims) -> str:
    """(256, 256) -> '256x256'; (1, 3, 256, 256) -> '1x3x256x256'."""
    return "x".join(str(int(d)) for d in dims)


def format_shapes(shapes) -> str:
    """'dynamic' or '256x256,512x512' (the artifact metadata form)."""
    return DYNAMIC if not shapes else ",".join(format_dims(s) for s in shapes)


def parse_shapes(text) -> list[tuple[int, int]]:
    """The inverse of `format_shapes`: [] for 'dynamic' or empty."""
    if not text or text == DYNAMIC:
        return []
    return [parse_hw(part, "shapes") for part in str(text).split(",")]
