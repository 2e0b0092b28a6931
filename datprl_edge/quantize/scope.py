"""What INT8 quantization touches in a model, shared by the three target quantizers.

Layers are named by their module path ("decoders.0.0.conv1"). The prompt path (query mappers,
prompt pools and the FiLM prompt projections) works on pooled (B, C) vectors: it costs almost
nothing, and quantizing its activations can flip the discrete top-k prompt choice, so every scheme
keeps its activations in float by design. The ONNX scheme still stores its conv / linear weights as
int8 (weight-only, per output channel: the top-k sees float activations); the others keep it fully
float. `float_layers` are pixel-path layers the user or the sensitivity search keeps in float on
top of that.
"""

from __future__ import annotations

import contextlib

from datprl_edge.core.errors import ConfigError, UnknownChoiceError

PROMPT_PATH = "query mappers, prompt pools and FiLM prompt projections (pooled (B, C) vectors)"
# Shapes the INT8 programs are prepared with; H and W must stay multiples of the pad multiple.
EXAMPLE_SIZE = 64
EXAMPLE_BATCH = 2


def _prompt_types():
    from datprl_edge.models.prompt_pool import PromptPool
    from datprl_edge.models.student_blocks import GatedFiLM, QueryMapper

    return (QueryMapper, PromptPool), GatedFiLM


def prompt_path_modules(model) -> list[str]:
    """Names of the outermost query-mapper / prompt-pool modules (float activations in every scheme)."""
    routing, _ = _prompt_types()
    return _outermost(model, routing)


def film_modules(model) -> list[str]:
    """Names of the gated-FiLM modules (their prompt projection is part of the prompt path)."""
    _, film = _prompt_types()
    return _outermost(model, (film,))


def _outermost(model, types) -> list[str]:
    names: list[str] = []
    for name, mod in model.named_modules():
        if name and isinstance(mod, types) and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    return names


def quantizable_layers(model) -> list[str]:
    """Conv2d / Linear layers that INT8 schemes quantize (pixel path), in module order."""
    from torch import nn

    skip = prompt_path_modules(model) + film_modules(model)
    return [name for name, mod in model.named_modules()
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and not _under(name, skip)]


def float_blocks(model, float_layers) -> tuple:
    """Names of the edge blocks whose every quantizable layer is in `float_layers` (e.g. given as
    `--float-layers decoders.0.0`): a scheme may keep such a block float as a whole."""
    from datprl_edge.models.student_blocks import BLOCK_TYPES

    if model is None:
        return ()
    chosen, layers = set(float_layers), quantizable_layers(model)
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, BLOCK_TYPES):
            continue
        inside = [n for n in layers if n.startswith(name + ".")]
        if inside and all(n in chosen for n in inside):
            out.append(name)
    return tuple(out)


def channel_attention_layers(model) -> tuple:
    """Names of the edge blocks' channel-attention convs (1x1 on a pooled (B, C, 1, 1) vector)."""
    from datprl_edge.models.student_blocks import EdgeBlock

    return tuple(f"{name}.sca" for name, mod in model.named_modules()
                 if isinstance(mod, EdgeBlock) and mod.sca is not None)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def present_convs(model, names) -> list[str]:
    """The `names` that are Conv2d layers of `model` (a scheme's fixed float layers; none without a model)."""
    from torch import nn

    mods = dict(model.named_modules()) if model is not None else {}
    return [n for n in names if isinstance(mods.get(n), nn.Conv2d)]


def with_scheme_layers(model, float_layers, image_layers, pooled: bool) -> tuple:
    """`float_layers` plus a scheme's fixed float layers that `model` has: the image convs named in
    `image_layers` and, with `pooled`, the channel-attention convs."""
    extra = present_convs(model, image_layers)
    if pooled:
        extra += channel_attention_layers(model)
    return tuple(float_layers) + tuple(n for n in extra if n not in float_layers)


def check_float_layers(model, float_layers) -> tuple[str, ...]:
    """Validated, de-duplicated layer names in module order; a block's name (`decoders.0.0`) stands for
    every quantizable layer inside it."""
    if isinstance(float_layers, str):
        float_layers = [s for s in float_layers.split(",") if s.strip()]
    wanted = [str(s).strip() for s in (float_layers or ())]
    layers = quantizable_layers(model)
    chosen = set()
    for name in wanted:
        inside = [n for n in layers if n == name or n.startswith(name + ".")]
        if not inside:
            raise UnknownChoiceError("quantizable layer", name, layers or ["(none)"])
        chosen.update(inside)
    return tuple(n for n in layers if n in chosen)


def example_inputs(model, size: int = EXAMPLE_SIZE, batch: int = EXAMPLE_BATCH, *,
                   with_context: bool = False):
    """A fixed example batch (B, C, size, size) for tracing/exporting `model`; `with_context` and a
    model with a context (`models.context`): (batch, zero context (B, K), zero mix (B, K))."""
    import torch

    from datprl_edge.models.context import context_size
    from datprl_edge.quantize.feed import example_with_context

    channels = int(getattr(model, "img_channel", 3))
    multiple = int(getattr(model, "pad_multiple", 8))
    if size % multiple or size < 2 * multiple:
        raise ConfigError(f"example size {size} must be a multiple of the pad multiple {multiple} "
                          f"and at least {2 * multiple}")
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, channels, size, size, generator=gen)
    return example_with_context(image, context_size(model) if with_context else 0)


def fake_quant_modules(prepared) -> list:
    """Fake-quant modules that carry a running observer (torchao PT2E and torch.ao styles)."""
    return [m for m in prepared.modules()
            if hasattr(m, "observer_enabled") and hasattr(m, "fake_quant_enabled")]


def set_observers(prepared, enabled: bool) -> None:
    for m in fake_quant_modules(prepared):
        m.observer_enabled[0] = 1 if enabled else 0


@contextlib.contextmanager
def frozen_observers(prepared):
    """Evaluate without moving any quantization range; restores the previous observer state."""
    mods = fake_quant_modules(prepared)
    before = [int(m.observer_enabled[0]) for m in mods]
    for m in mods:
        m.observer_enabled[0] = 0
    try:
        yield prepared
    finally:
        for m, b in zip(mods, before):
            m.observer_enabled[0] = b


CALIBRATION_RANGES = ("mean", "extremes")


def scheme_ranges(qm) -> str:
    """How the target scheme `qm` (a quantize module) sets activation ranges: its SCHEME["calibration"]."""
    return qm.SCHEME.get("calibration", "mean")


# QAT default: activation ranges keep moving (moving averages of the training batches) for the first
# 70% of the steps, unless the target's scheme says otherwise (SCHEME["freeze_observers_at"])
FREEZE_OBSERVERS_AT = 0.7


def scheme_freeze_at(qm) -> float:
    """The fraction of QAT steps after which the target scheme `qm` (a quantize module) stops moving its
    activation ranges (0: they stay where calibration set them)."""
    return float(qm.SCHEME.get("freeze_observers_at", FREEZE_OBSERVERS_AT))


def calibrate(prepared, batches, ranges: str = "mean") -> int:
    """Set activation ranges from `batches` (tensors) with fake quant on; returns the batch count.

    `ranges` "mean": each range is the mean of the per-batch min/max (the moving-average observers
    would otherwise keep mostly the first batch's range, so the averaging constant is set to
    1/(k+1) for batch k and restored afterwards for training). "extremes": the lowest min and
    highest max over all batches, so no calibration activation is clipped (a scheme whose integer
    runtime saturates its residual sums prefers this; see the target's SCHEME["calibration"]).
    """
    import torch

    from datprl_edge.quantize.feed import run_image

    if ranges not in CALIBRATION_RANGES:
        raise ConfigError(f"calibration ranges must be one of {CALIBRATION_RANGES}, got {ranges!r}")
    mods = [m for m in fake_quant_modules(prepared)
            if hasattr(getattr(m, "activation_post_process", None), "averaging_constant")]
    observers = [m.activation_post_process for m in mods]
    saved = [o.averaging_constant for o in observers]
    lows: list = [None] * len(observers)
    highs: list = [None] * len(observers)
    set_observers(prepared, True)
    count = 0
    try:
        with torch.no_grad():
            for k, x in enumerate(batches):
                for o in observers:
                    o.averaging_constant = 1.0 if ranges == "extremes" else 1.0 / (k + 1)
                run_image(prepared, x)
                count += 1
                if ranges == "extremes":
                    for i, o in enumerate(observers):
                        lo, hi = o.min_val.clone(), o.max_val.clone()
                        lows[i] = lo if lows[i] is None else torch.minimum(lows[i], lo)
                        highs[i] = hi if highs[i] is None else torch.maximum(highs[i], hi)
        if ranges == "extremes" and count:
            for m, o, lo, hi in zip(mods, observers, lows, highs):
                o.min_val.copy_(lo)
                o.max_val.copy_(hi)
                scale, zero_point = o.calculate_qparams()
                m.scale.resize_(scale.shape).copy_(scale)
                m.zero_point.resize_(zero_point.shape).copy_(zero_point)
    finally:
        for o, c in zip(observers, saved):
            o.averaging_constant = c
    if count == 0:
        raise ConfigError("calibration needs at least one batch of images")
    return count
