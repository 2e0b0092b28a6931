"""INT8 quantizer settings of the Core ML target: coremltools' LinearQuantizer (W8A8 QAT).

Stack: `coremltools.optimize.torch.quantization.LinearQuantizer` with its Core ML defaults
(int8 symmetric per-channel weights, 8-bit activations with zero point 0 or 128), prepare ->
train -> `finalize`; `torch.jit.trace` + `ct.convert(minimum_deployment_target=iOS17)` then gives
int8 `constexpr_affine_dequantize` weights and quantize/dequantize activations.

Why not torchao PT2E with coremltools' `CoreMLQuantizer`: it fails to import with torch 2.13
(it needs `torch.ao.quantization.quantizer`, which torch removed when PT2E moved to torchao).

LinearQuantizer traces with `torch.fx.symbolic_trace`, which cannot follow the student's
top-level forward (input checks and padding branch on tensor shapes). So it quantizes the largest
traceable pieces that the forward calls: each encoder/decoder/middle block, down/up sampler and
the intro/ending convs (a whole folded plain-conv model when that traces). The joins between
pieces (skip additions, global residual) and the prompt path stay float (FP16 in Core ML).
"""

from __future__ import annotations

import copy

from datprl_edge.quantize.scope import PROMPT_PATH, film_modules, prompt_path_modules

TARGET = "coreml"
STACK = "coremltools.optimize.torch LinearQuantizer (torch.fx QAT) per traceable block"
SCHEME = {
    "target": TARGET,
    "stack": STACK,
    "quantizer": ("LinearQuantizer(LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig("
                  "quantization_scheme='symmetric')))"),
    "weights": "int8 symmetric per output channel, moving-average min/max",
    "activations": "quint8 symmetric (zero point 0 for non-negative tensors, 128 otherwise), per tensor",
    "float_by_design": PROMPT_PATH + "; joins between traced blocks",
    "float_layer_semantics": "LinearQuantizer module_name_configs[layer] = None",
    "converted": "eager module whose blocks are LinearQuantizer.finalize()d torch.fx GraphModules",
    "export": "torch.jit.trace(converted) -> coremltools.convert(mlprogram, minimum_deployment_target=iOS17)",
    "input_sizes": "any H and W (the top-level padding stays eager)",
    "why": "CoreMLQuantizer (PT2E) needs torch.ao.quantization.quantizer, removed in torch 2.13",
}

QUANTIZERS_ATTR = "_datprl_coreml_quantizers"


def _config(float_names=(), leaves=()):
    from coremltools.optimize.torch.quantization import (
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    return LinearQuantizerConfig(
        global_config=ModuleLinearQuantizerConfig(quantization_scheme="symmetric"),
        module_name_configs={n: None for n in float_names},
        non_traceable_module_names=list(leaves))


def prepare(model, example_inputs, float_layers=(), calib=None):
    """Copy of `model` whose traceable blocks are LinearQuantizer-prepared (fake quant on)."""
    import torch
    from coremltools.optimize.torch.quantization import LinearQuantizer

    q = copy.deepcopy(model).eval()
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
        prepared.eval()
        if not unit:
            prepared.__dict__[QUANTIZERS_ATTR] = {"": quantizer}
            return prepared
        _set(q, unit, prepared)
        quantizers[unit] = quantizer
    q.__dict__[QUANTIZERS_ATTR] = quantizers
    return q


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
