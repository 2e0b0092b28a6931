"""Activation bounds of the norm-free edge student.

The student's gated blocks multiply features and have no norm, so on an input far outside the
training range (rain heavier than any training image, say) the products grow block by block until
they overflow and the whole output is NaN. A bound per block, `margin` times the largest output that
block gave on training crops, clamps the block's output: no change on the training distribution,
finite outputs everywhere. The bounds are the architecture option `block_bounds` (one per block, in
module order), so checkpoints and exported graphs carry them (a Clip per block). QAT strips them:
its fake-quant ranges bound the activations already.
"""

from __future__ import annotations

import math

from datprl_edge.core.errors import ConfigError

DEFAULT_MARGIN = 2.0


def edge_blocks(model) -> list:
    """[(module path, EdgeBlock)] in module order."""
    from datprl_edge.models.student_blocks import EdgeBlock

    return [(n, m) for n, m in model.named_modules() if isinstance(m, EdgeBlock)]


def check_bounds(bounds, count: int) -> list[float]:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != count:
        raise ConfigError(f"block_bounds must list one bound per block ({count}), got {bounds!r}; "
                          "measure them with datprl_edge.models.bounds.measure_block_bounds")
    out = []
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise ConfigError(f"every block bound must be a positive finite number, got {b!r}")
        out.append(float(b))
    return out


def measure_block_bounds(model, batches, margin: float = DEFAULT_MARGIN) -> list[float]:
    """`margin` x the largest |output| of each block over `batches` (tensors (B, C, H, W); images
    that are not finite are skipped), with any existing bounds lifted while measuring."""
    import torch

    if not (margin >= 1 and math.isfinite(margin)):
        raise ConfigError(f"the bound margin must be a finite number >= 1, got {margin!r}")
    blocks = edge_blocks(model)
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no gated edge blocks to bound")
    peak = [0.0] * len(blocks)
    saved = [b.bound for _, b in blocks]
    hooks = [b.register_forward_hook(_peak_hook(peak, k)) for k, (_, b) in enumerate(blocks)]
    try:
        for _, b in blocks:
            b.bound = None
        with torch.no_grad():
            dev = next(model.parameters()).device
            for x in batches:
                x = x[torch.isfinite(x).flatten(1).all(1)]
                if len(x):
                    model(x.to(dev))
    finally:
        for h in hooks:
            h.remove()
        for (_, b), s in zip(blocks, saved):
            b.bound = s
    if not all(math.isfinite(p) and p > 0 for p in peak):
        raise ConfigError("the model gave non-finite or all-zero block outputs on the measuring batches")
    return [round(margin * p, 4) for p in peak]


def set_block_bounds(model, bounds) -> None:
    """Clamp each block's output to +-bound (None: no clamp), in place; recorded in the model's
    config so that a saved checkpoint rebuilds with them."""
    blocks = edge_blocks(model)
    values = [None] * len(blocks) if bounds is None else check_bounds(bounds, len(blocks))
    for (_, b), v in zip(blocks, values):
        b.bound = v
    cfg = getattr(model, "datprl_config", None)
    if cfg is not None:
        opts = dict(cfg.get("options", {}))
        if bounds is None:
            opts.pop("block_bounds", None)
        else:
            opts["block_bounds"] = values
        model.datprl_config = {**cfg, "options": opts}


def _peak_hook(peak: list, k: int):
    def hook(_mod, _inp, out):
        peak[k] = max(peak[k], float(out.detach().abs().max()))
    return hook
