"""Activation bounds of the norm-free edge student.

The student's gated blocks multiply features and have no norm, so on an input far outside the
training range (rain heavier than any training image, say) the products grow layer by layer until
they overflow and the whole output is NaN. Each convolution's output is clamped to the largest
|output| that convolution gave on training crops (`margin` 1): no change on the training
distribution, and out-of-range inputs saturate the way an INT8 program's activation ranges do
(measured on the shifted derain set of `benchmarks/quality.py`: 6 of 16 outputs all-NaN before,
+1.30 dB over the input after; one clamp per block at 2x its range was finite but 11 dB below the
input on some images). The bounds are the
architecture option `act_bounds` ({conv module path: bound}), so checkpoints and exported graphs
carry them (a Clip after each conv, which the runtimes fuse into the conv). QAT strips them: its
fake-quant ranges bound the activations already.
"""

from __future__ import annotations

import math

from torch import nn

from datprl_edge.core.errors import ConfigError

DEFAULT_MARGIN = 1.0
# A crop that drives some conv past this multiple of its bound is one the float model clamps its way
# through (the edge-lat student folded for CT: one 64-px calibration crop in 160 reached 1e9 x its
# bound without the clamps, the others at most 1.9x). INT8 ranges calibrated on it waste all 8 bits.
OUT_OF_RANGE = 4.0


class BoundedConv2d(nn.Conv2d):
    """A Conv2d whose output is clamped to +-`bound` (set by `set_act_bounds`, never built directly)."""

    bound: float

    def forward(self, x):
        return super().forward(x).clamp(-self.bound, self.bound)


def bounded_layers(model) -> dict:
    """{module path: Conv2d} of the layers a bound can apply to."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def check_bounds(bounds, names) -> dict:
    if not isinstance(bounds, dict) or not bounds:
        raise ConfigError(f"act_bounds must map conv module paths to bounds, got {bounds!r}; measure them "
                          "with datprl_edge.models.bounds.measure_act_bounds")
    unknown = sorted(set(bounds) - set(names))
    if unknown:
        raise ConfigError(f"act_bounds names {len(unknown)} layer(s) this model lacks, e.g. {unknown[0]!r}; "
                          "the bounds belong to another architecture")
    out = {}
    for name, b in bounds.items():
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise ConfigError(f"act_bounds[{name!r}] must be a positive finite number, got {b!r}")
        out[name] = float(b)
    return out


def measure_act_bounds(model, batches, margin: float = DEFAULT_MARGIN) -> dict:
    """`margin` x the largest |output| of each conv over `batches` (tensors (B, C, H, W); images
    that are not finite are skipped), with any existing bounds lifted while measuring."""
    import torch

    if not (margin >= 1 and math.isfinite(margin)):
        raise ConfigError(f"the bound margin must be a finite number >= 1, got {margin!r}")
    layers = bounded_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no convolutions to bound")
    saved = current_bounds(model)
    set_act_bounds(model, None)
    peak = dict.fromkeys(layers, 0.0)
    hooks = [m.register_forward_hook(_peak_hook(peak, n)) for n, m in layers.items()]
    seen = 0
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            for x in batches:
                x = x[torch.isfinite(x).flatten(1).all(1)]
                if len(x):
                    model(x.to(dev))
                    seen += len(x)
    finally:
        for h in hooks:
            h.remove()
        set_act_bounds(model, saved)
    used = {n: p for n, p in peak.items() if p > 0}  # layers the forward never reached stay unbounded
    if not seen or not all(math.isfinite(p) for p in used.values()):
        raise ConfigError("no finite image to measure the bounds on, or the model's outputs were not finite")
    return {n: math.ceil(margin * p * 1e5) / 1e5 for n, p in used.items()}  # rounded up: never binds in range


def within_bounds(model, x, factor: float = OUT_OF_RANGE):
    """(B,) bool tensor: the images of batch `x` on which every bounded conv of `model`, run with its
    bounds lifted, stays finite and within `factor` x its bound (all True for a model without bounds)."""
    import torch

    bounds = current_bounds(model)
    if not bounds:
        return torch.ones(len(x), dtype=torch.bool)
    layers = bounded_layers(model)
    worst = torch.zeros(len(x))

    def hook(name):
        def record(_mod, _inp, out):
            nonlocal worst
            ratio = out.detach().abs().flatten(1).amax(1).float().cpu() / bounds[name]
            worst = torch.maximum(worst, torch.nan_to_num(ratio, nan=math.inf))
        return record

    set_act_bounds(model, None)
    hooks = [layers[n].register_forward_hook(hook(n)) for n in bounds]
    try:
        with torch.no_grad():
            model(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        set_act_bounds(model, bounds)
    return torch.isfinite(worst) & (worst <= factor)


def current_bounds(model) -> dict | None:
    found = {n: m.bound for n, m in bounded_layers(model).items() if isinstance(m, BoundedConv2d)}
    return found or None


def set_act_bounds(model, bounds) -> None:
    """Clamp each named conv's output to +-bound (None: no clamps), in place; recorded in the
    model's config so that a saved checkpoint rebuilds with them."""
    layers = bounded_layers(model)
    values = {} if bounds is None else check_bounds(bounds, layers)
    for name, conv in layers.items():
        if name in values:
            conv.__class__ = BoundedConv2d
            conv.bound = values[name]
        elif isinstance(conv, BoundedConv2d):
            conv.__class__ = nn.Conv2d
            del conv.bound
    cfg = getattr(model, "datprl_config", None)
    if cfg is not None:
        opts = {k: v for k, v in cfg.get("options", {}).items() if k != "act_bounds"}
        if values:
            opts["act_bounds"] = values
        model.datprl_config = {**cfg, "options": opts}


def _peak_hook(peak: dict, name: str):
    def hook(_mod, _inp, out):
        peak[name] = max(peak[name], float(out.detach().abs().max()))
    return hook
