"""INT8 quantizer settings of the Core ML target: coremltools' LinearQuantizer (W8A8 QAT).

Stack: `coremltools.optimize.torch.quantization.LinearQuantizer` with the affine scheme
(int8 per-channel weights, uint8 activations with a zero point from their range), prepare ->
train -> `finalize`; `torch.jit.trace` + `ct.convert(minimum_deployment_target=iOS17)` then gives
int8 `constexpr_affine_dequantize` weights and quantize/dequantize activations.

Why not torchao PT2E with coremltools' `CoreMLQuantizer`: it fails to import with torch 2.13
(it needs `torch.ao.quantization.quantizer`, which torch removed when PT2E moved to torchao).

LinearQuantizer traces with `torch.fx.symbolic_trace`, which cannot follow the student's
top-level forward (input checks and padding branch on tensor shapes). So it quantizes the largest
traceable pieces that the forward calls: each encoder/decoder/middle block, down/up sampler and
the intro/ending convs (float in scheme 2, `IMAGE_LAYERS`; a whole folded plain-conv model when
that traces). The joins between pieces (skip additions, global residual) and the prompt path stay
float (FP16 in Core ML).

A model with a context is prepared with its three inputs: the top-level forward (mappers, routing,
context arithmetic) stays eager and float. A block takes the forward pass's `Context` object (or
None) as its `ctx` argument, which fx cannot hold as a value: each block is traced through
`_fx_block_class`, where its context entry becomes one `_pool_or_own` call (the given context mixed
in at run time, or the block's own mean without one); models prepared without a context trace
their blocks without it, as before the context existed.
"""

from __future__ import annotations

import copy
import inspect

import torch.fx

from datprl_edge.models.context import context_layout
from datprl_edge.quantize.feed import call_with_context, example_context_size, mark
from datprl_edge.quantize.scope import (
    PROMPT_PATH,
    film_modules,
    prompt_path_modules,
    with_scheme_layers,
)

TARGET = "coreml"
STACK = "coremltools.optimize.torch LinearQuantizer (torch.fx QAT) per traceable block"
# "affine": activation zero points anywhere in [0, 255]. "symmetric" (zero point 0 or 128) spends a
# bit of every signed tensor on values it never takes: edge-xs QAT worst drop 0.90 -> 0.48 dB (CT)
QUANTIZATION_SCHEME = "affine"
# Scheme 2, as the OpenVINO one: sums and products stay float (the residual stream, gates, channel
# attention and layer-scale products are not rounded to 8 bits), and so do the convs that read the
# image and write the restored residual and the channel-attention convs on pooled vectors: edge-xs PTQ
# worst drop 1.40 -> 0.47 dB (CT 0.66 -> 0.05). Every other conv still reads an 8-bit map with int8
# weights (W8A8), but a conv output that no conv reads directly is not quantized (LinearQuantizer puts
# a fake quant on every conv output): PTQ 0.47 -> 0.20 dB (cloud removal; MRI 0.08 -> 0.03).
FLOAT_OPS = ("add", "mul")
IMAGE_LAYERS = ("intro", "ending")
POOLED_LAYERS = True
FLOAT_CONV_OUTPUTS = True
# Bumped whenever the prepared module changes: a QAT checkpoint only loads into the module it was made
# with. 1 (no field): every op quantized. 2: the float ops and layers above.
SCHEME_VERSION = 2
SCHEME = {
    "target": TARGET,
    "stack": STACK,
    "version": SCHEME_VERSION,
    "quantizer": ("LinearQuantizer(LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig("
                  f"quantization_scheme='{QUANTIZATION_SCHEME}')))"),
    "weights": "int8 affine per output channel, moving-average min/max",
    "activations": "quint8 affine (zero point from the range), per tensor, on conv inputs",
    "float_by_design": (PROMPT_PATH + "; joins between traced blocks; sums and products "
                        "(module_type_configs operator.add / mul: None); the image convs "
                        + ", ".join(IMAGE_LAYERS) + " and the channel-attention convs (on pooled vectors); "
                        "conv outputs no conv reads directly (their fake quant dropped from the prepared "
                        "graph)"),
    "float_layer_semantics": "LinearQuantizer module_name_configs[layer] = None",
    "converted": "eager module whose blocks are LinearQuantizer.finalize()d torch.fx GraphModules",
    "export": "torch.jit.trace(converted) -> coremltools.convert(mlprogram, minimum_deployment_target=iOS17)",
    "input_sizes": "any H and W (the top-level padding stays eager)",
    "why": "CoreMLQuantizer (PT2E) needs torch.ao.quantization.quantizer, removed in torch 2.13",
    # QAT keeps the calibrated activation ranges (the moving averages over 64-pixel training crops
    # drifted away from the whole-image ranges): edge-xs QAT worst drop 0.159 -> 0.120 dB at lr 1e-5
    # (dehazing 0.16 -> -0.07); single runs, and other frozen-range settings gave 0.115-0.189 dB
    # (always CT): benchmarks/results/qat_coreml_scheme2.json
    "freeze_observers_at": 0.0,
}

QUANTIZERS_ATTR = "_datprl_coreml_quantizers"


def _config(float_names=(), leaves=()):
    import operator

    import torch
    from coremltools.optimize.torch.quantization import (
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    functions = {"add": (operator.add, torch.add), "mul": (operator.mul, torch.mul)}
    return LinearQuantizerConfig(
        global_config=ModuleLinearQuantizerConfig(quantization_scheme=QUANTIZATION_SCHEME),
        module_type_configs={f: None for op in FLOAT_OPS for f in functions[op]},
        module_name_configs={n: None for n in float_names},
        non_traceable_module_names=list(leaves))


def prepare(model, example_inputs, float_layers=(), calib=None):
    """Copy of `model` whose traceable blocks are LinearQuantizer-prepared (fake quant on)."""
    import torch
    from coremltools.optimize.torch.quantization import LinearQuantizer

    float_layers = scheme_float_layers(model, float_layers)
    q = copy.deepcopy(model).eval()
    with_context = bool(example_context_size(example_inputs))
    if with_context:
        # the student finds its block entries by the block type, which traced blocks no longer have
        q.context_layout = _FixedLayout(context_layout(q))
    for mod in q.modules():
        if "ctx" in inspect.signature(type(mod).forward).parameters:
            mod.__class__ = _fx_block_class(type(mod), with_context)
    calls = _record_calls(q, example_inputs)
    quantizers = {}
    for unit in _units(q, calls):
        rel_float = [_relative(f, unit) for f in float_layers if _inside(f, unit)]
        if "" in rel_float:
            continue  # the whole block is a float layer
        sub = q.get_submodule(unit) if unit else q
        leaves = [_relative(f, unit) for f in film_modules(q) if _inside(f, unit)]
        quantizer = LinearQuantizer(sub, _config(rel_float, leaves))
        with torch.no_grad():
            prepared = quantizer.prepare(example_inputs=calls[unit], inplace=False)
        if FLOAT_CONV_OUTPUTS:
            _float_conv_outputs(prepared)
        prepared.eval()
        if not unit:
            prepared.__dict__[QUANTIZERS_ATTR] = {"": quantizer}
            return mark(prepared, example_inputs)
        _set(q, unit, prepared)
        quantizers[unit] = quantizer
    q.__dict__[QUANTIZERS_ATTR] = quantizers
    return mark(q, example_inputs)


def _float_conv_outputs(prepared) -> int:
    """Drop the fake quant that LinearQuantizer puts on a conv's output unless a conv reads it directly
    (then it is that conv's input quantizer), so every conv still reads an 8-bit map; returns how many
    were dropped."""
    from torch import nn

    def is_conv(node) -> bool:
        if node.op == "call_module":
            return isinstance(prepared.get_submodule(node.target), nn.Conv2d)
        return node.op == "call_function" and node.target in (torch.conv2d, torch.nn.functional.conv2d)

    dropped = 0
    for node in list(prepared.graph.nodes):
        if node.op == "call_module" and "activation_post_process" in str(node.target) and \
                isinstance(node.args[0], torch.fx.Node) and is_conv(node.args[0]) and \
                not any(is_conv(user) for user in node.users):  # a conv's input quantizer stays
            node.replace_all_uses_with(node.args[0])
            prepared.graph.erase_node(node)
            dropped += 1
    if dropped:
        prepared.graph.lint()
        prepared.recompile()
    return dropped


def scheme_float_layers(model, float_layers=()) -> tuple:
    """`float_layers` plus the image convs (`IMAGE_LAYERS`) and channel-attention convs the model has."""
    return with_scheme_layers(model, float_layers, IMAGE_LAYERS, POOLED_LAYERS)


@torch.fx.wrap
def _pool_or_own(ctx, key, own):
    """A block's context entry: through the forward pass's Context, or the block's own value without one."""
    return own if ctx is None else ctx.pool(key, own)


class _TracedContext:
    """Stands in for a block's `ctx` while fx traces it: `pool` records one `_pool_or_own` call."""

    def __init__(self, ctx):
        self.ctx = ctx

    def pool(self, key, own):
        return _pool_or_own(self.ctx, key, own)


class _FixedLayout:
    """The context layout of the model before its blocks were traced (stands in for its method)."""

    def __init__(self, layout):
        self.layout = [(str(name), int(size)) for name, size in layout]

    def __call__(self):
        return list(self.layout)


_BLOCK_CLASSES: dict = {}


def _fx_block_class(cls, with_context: bool):
    """`cls` whose forward fx can trace: `ctx` goes through `_TracedContext` (with a context) or is
    left out of the graph (without one). Same parameters and buffers, so the same state keys."""
    cls = getattr(cls, "_datprl_block_base", cls)
    if (cls, with_context) not in _BLOCK_CLASSES:
        base_forward = cls.forward

        def forward(self, x, prompt=None, ctx=None):
            return base_forward(self, x, prompt, _TracedContext(ctx) if with_context else None)

        _BLOCK_CLASSES[(cls, with_context)] = type(cls.__name__, (cls,), {
            "forward": forward, "_datprl_block_base": cls, "__module__": cls.__module__})
    return _BLOCK_CLASSES[(cls, with_context)]


def convert(prepared):
    """A copy with every block finalized (ready for torch.jit.trace + ct.convert)."""
    quantizers = prepared.__dict__.get(QUANTIZERS_ATTR, {})
    if "" in quantizers:
        return quantizers[""].finalize(model=prepared, inplace=False).eval()
    out = copy.deepcopy(prepared)
    for unit, quantizer in quantizers.items():
        _set(out, unit, quantizer.finalize(model=out.get_submodule(unit), inplace=False).eval())
    return out.eval()


def rebuild(model, example_inputs, float_layers=(), backend_state=None):
    return prepare(model, example_inputs, float_layers)


def backend_state(prepared) -> dict:
    return {"blocks": sorted(prepared.__dict__.get(QUANTIZERS_ATTR, {}))}


def _record_calls(model, example_inputs) -> dict:
    """Positional args of the first call of every module during one forward ("" = the model)."""
    import torch

    calls = {"": tuple(example_inputs)}

    def record(name, args):
        if name not in calls:
            calls[name] = tuple(a.detach() if hasattr(a, "detach") else a for a in args)
        # returning None keeps the module's inputs unchanged

    hooks = [mod.register_forward_pre_hook(lambda _m, args, name=name: record(name, args))
             for name, mod in model.named_modules() if name]
    try:
        with torch.no_grad():
            if example_context_size(example_inputs):
                call_with_context(model, *example_inputs)
            else:
                model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _units(model, calls) -> list[str]:
    """Outermost called, fx-traceable modules outside the prompt path (pre-order)."""
    skip = prompt_path_modules(model)
    units: list[str] = []

    def visit(name, mod):
        if any(name == s or name.startswith(s + ".") for s in skip):
            return
        if name in calls and _traceable(mod):
            units.append(name)
            return
        for child_name, child in mod.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return units


def _traceable(mod) -> bool:
    import torch.fx

    try:
        torch.fx.symbolic_trace(mod)
    except Exception:  # any tracing failure means "not as one piece"
        return False
    return True


def _inside(name: str, unit: str) -> bool:
    return not unit or name == unit or name.startswith(unit + ".")


def _relative(name: str, unit: str) -> str:
    return name if not unit else ("" if name == unit else name[len(unit) + 1:])


def _set(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
