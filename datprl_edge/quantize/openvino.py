"""INT8 quantizer settings of the OpenVINO target: NNCF quantization-aware training.

Stack: `nncf.quantize(torch_module, nncf.Dataset(...))` inserts NNCF's OpenVINO-tuned fake
quantizers (symmetric int8, trainable scales) and initialises them on the calibration images;
QAT then fine-tunes weights and scales together. `openvino.convert_model(converted,
example_input=...)` turns the quantizers into FakeQuantize ops that the OpenVINO CPU plugin runs
in INT8.

Why not torchao PT2E with NNCF's `OpenVINOQuantizer` (checked with the pinned versions): nncf 3.4
no longer ships it; it now lives in executorch's OpenVINO backend, which pulls in executorch and a
dozen more packages (hydra, pandas, tokenizers, ...). With those on the path it imports, but it
is a post-training quantizer (plain observers, no fake quant in training, so `prepare_qat_pt2e`
would train without simulating INT8), and on this model it fails at the first forward: it puts a
per-channel weight observer on the prompt pools' LayerNorm bias. NNCF's own torch QAT is the
path NNCF documents for training.

NNCF compiles a small C++ extension on first use (cached under ~/.cache/torch_extensions; about a
minute on two cores; without a compiler it falls back to plain torch ops). The load timeout is
lifted so a slow first build does not fail.

A model with a context is quantized with its three inputs (image, context, context_mix, passed to
NNCF as keywords). The context arithmetic (`models.context.Context`) and the mappers' global
means are hidden from NNCF's tracer like the rest of the prompt path, and the mapper projections
that the top-level forward then calls itself are an ignored scope: no quantizer touches a (B, K)
context vector. The dense routing weights (`Routing.dense`) stay traced: NNCF's patcher cannot
patch a NamedTuple's method, and a scatter gets no quantizer.
"""

from __future__ import annotations

import copy
import os

from datprl_edge.models.student_blocks import Halves, rewritten_copy
from datprl_edge.quantize.feed import example_context_size, mark
from datprl_edge.quantize.scope import (
    PROMPT_PATH,
    prompt_path_modules,
    with_scheme_layers,
)

TARGET = "openvino"
# NNCF's CPU placement quantizes the output of every add and product too, so the residual stream and
# the gates pass through 8 bits at every block, which costs ~1 dB on a task restored to ~40 dB (CT).
# As an ignored type an add or product keeps a quantizer only where its output is a conv's input
# (NNCF then puts that input quantizer on it); the block outputs stay float
# (benchmarks/results/qat_openvino_float_ops.json: edge-xs PTQ CT drop 0.82 -> 0.29 dB, same speed).
# Float sums would move float data through each SimpleGate's channel split; the exact rewrites below
# remove the split. NNCF also quantizes an up-sampler's conv output before its pixel shuffle (the
# decoder's stream then adds an 8-bit map to the skip) and the input of each channel-attention mean:
# both float too.
FLOAT_OPS = ("add", "__add__", "mul", "__mul__", "pixel_shuffle", "mean")
# The convs that read the image and write the restored residual (3 channels: int8 gains them little)
# stay float; they set the drop on the tasks restored to ~40 dB. So do the channel-attention convs,
# which read a pooled (B, C, 1, 1) vector (a few hundred MACs): an 8-bit pooled mean or attention
# weight rescales whole channels of the image, which cost edge-lat ~0.5 dB on dehazing
# (benchmarks/results/qat_openvino_scheme3.json: worst PTQ drop 0.59 -> 0.05 dB edge-xs, 0.41 -> 0.05
# edge-lat against scheme 2).
IMAGE_LAYERS = ("intro", "ending")
# NNCF's overflow fix on every dense conv weight (7-bit range: |w| <= 64 stored as int8): without VNNI
# (AVX2, AVX-512 without VNNI) the CPU plugin's u8 x s8 kernels add pairs of products in saturating
# int16 (VPMADDUBSW), and 255 * 127 * 2 does not fit where 255 * 64 * 2 does, so every x86 CPU
# computes the same integer sums. With NNCF's default (the first quantized conv only) edge-lat's
# INT8 artifact matched its fake-quant model to 44 dB on an AVX2-only EPYC, and lost 0.31 dB there
# on cloud removal against its FP32 artifact (0.015 dB on an AVX-512 VNNI one):
# benchmarks/results/avx2/frontier_scheme3.json, openvino_overflow.json.
OVERFLOW_FIX = "enable"
POOLED_LAYERS = True
# Bumped whenever the prepared module changes: a QAT checkpoint only loads into the module it was made
# with. 2: float adds and products, gates split and layer scales folded before NNCF. 3: float pixel
# shuffles, means, image and channel-attention convs. 4: 7-bit weights (OVERFLOW_FIX).
SCHEME_VERSION = 4
STACK = "NNCF QAT (nncf.quantize on the torch module, then fine-tuning)"
# what `layer_fake_quants` switches off for the sensitivity ranking
SWITCHED = "one layer's weight and own input quantizers off (NNCF's ignored scope minus shared inputs)"
SCHEME = {
    "target": TARGET,
    "stack": STACK,
    "version": SCHEME_VERSION,
    "quantizer": ("nncf.quantize(preset=PERFORMANCE, target_device=CPU) with adds, products, pixel "
                  "shuffles and means as ignored types and the image and channel-attention convs as ignored "
                  "layers, on the student rewritten exactly (fold_layer_scales, split_gates)"),
    "weights": ("int8 symmetric per output channel (NNCF), scales trained in QAT; 7-bit range on every "
                f"dense conv (overflow_fix={OVERFLOW_FIX!r}: no int16 saturation on CPUs without VNNI; "
                "depthwise convs keep 8 bits, their kernels widen before adding)"),
    "activations": ("8-bit symmetric per tensor on conv inputs (signed or unsigned from the data), "
                    "trainable scales; adds and products (residual stream, gates), pixel shuffles and "
                    "means float"),
    "float_by_design": PROMPT_PATH + "; the image convs " + ", ".join(IMAGE_LAYERS) + " and the "
                       "channel-attention convs (on pooled vectors)",
    "float_layer_semantics": "NNCF ignored scope: the layer's weight and input quantizers are removed",
    "converted": "the NNCF-quantized torch module in eval mode",
    "export": "openvino.convert_model(converted, example_input=x, input=[PartialShape([-1, C, -1, -1])])",
    "input_sizes": "any H and W for the torch module; convert with a dynamic PartialShape",
    "why": ("NNCF's OpenVINOQuantizer for PT2E moved to executorch (not installable beside torch 2.13 "
            "without a dozen extra packages) and is post-training only; NNCF QAT is the supported path"),
}

_untraced = False


def _nncf():
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf
    import nncf.torch  # noqa: F401

    _untrace_prompt_path()
    return nncf


def _untrace_prompt_path() -> None:
    """Hide the prompt path from NNCF's tracer so that it places no quantizer there.

    `nncf.torch.disable_tracing` patches the class methods once per process; outside NNCF's
    tracing mode the patched methods behave exactly as before.
    """
    global _untraced
    if _untraced:
        return
    from nncf.torch import disable_tracing

    from datprl_edge.models import registry
    from datprl_edge.models.context import Context
    from datprl_edge.models.prompt_pool import PromptPool
    from datprl_edge.models.student_blocks import GatedFiLM, QueryMapper

    registry.list_archs()  # imports every model module, so that subclasses (folded pools) exist
    methods = {QueryMapper: ("forward", "pooled"), PromptPool: ("route", "compose", "compose_dense"),
               GatedFiLM: ("terms",), Context: ("pool", "output")}
    for base, names in methods.items():
        for cls in _with_subclasses(base):
            for name in names:
                if name in vars(cls):  # each override once, where it is defined
                    disable_tracing(getattr(cls, name))
    _untraced = True


def _with_subclasses(cls) -> list:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _with_subclasses(sub)
    return out


def prepare(model, example_inputs, float_layers=(), calib=None):
    """NNCF-quantized copy of `model`, ranges initialised on `calib` (tensors) or the example."""
    import torch

    nncf = _nncf()
    model = rewritten_copy(model)  # no channel split between int8 convs
    float_layers = _split_names(model, scheme_float_layers(model, float_layers))
    images = calib if calib is not None else [example_inputs[0]]
    data = [nncf_input(model, x, example_inputs) for x in images]
    example = nncf_input(model, example_inputs[0], example_inputs)
    ops = weight_ops(model, example)  # one trace serves the ignored scope and the layer switches
    names = nncf_node_names(model, example, float_layers, ops)
    if example_context_size(example_inputs):
        names += nncf_node_names(model, example, traced_prompt_layers(model, example, ops), ops)
    ignored = nncf.IgnoredScope(names=names, types=list(FLOAT_OPS), validate=False)
    with torch.no_grad():
        q = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), ignored_scope=ignored,
                          **nncf_settings())
    q.datprl_weight_ops = ops  # for layer_fake_quants (sensitivity ranking on this scheme itself)
    return mark(q.eval(), example_inputs)


def nncf_settings() -> dict:
    """The scheme's `nncf.quantize` keywords besides the data and the ignored scope."""
    nncf = _nncf()
    return {"preset": nncf.QuantizationPreset.PERFORMANCE, "target_device": nncf.TargetDevice.CPU,
            "advanced_parameters": nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix(OVERFLOW_FIX))}


def weight_ops(model, example) -> dict:
    """{weight parameter name: NNCF names of the ops that take it} of an (unquantized) module."""
    _nncf()
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    graph = build_nncf_graph(model, example)
    known = {n.node_name for n in graph.get_all_nodes()}
    return {name: [n.node_name for n in graph.get_next_nodes(graph.get_node_by_name(name))]
            for name, _ in model.named_parameters() if name.endswith(".weight") and name in known}


class _Switch:
    """An NNCF quantizer behind the fake-quant switch interface the sensitivity search toggles."""

    def __init__(self, quantizer):
        self.quantizer = quantizer

    def disable_fake_quant(self):
        self.quantizer.disable_quantization()

    def enable_fake_quant(self):
        self.quantizer.enable_quantization()


def layer_fake_quants(prepared, layer: str) -> list:
    """Switches for one layer's weight quantizer and its own input quantizer (port 0), as NNCF's
    ignored scope would remove them; an input quantizer shared with other consumers (placed on the
    producer's output) stays on. A gate conv cut in halves counts both halves."""
    from nncf.torch.function_hook.wrapper import get_hook_storage

    storage = get_hook_storage(prepared)
    ops = getattr(prepared, "datprl_weight_ops", {})
    out = []
    for weight, names in ops.items():
        owner = weight[: -len(".weight")]
        if owner != layer and not owner.startswith(layer + "."):
            continue
        for op in names:
            for port in (0, 1):
                key = f"{op.replace('.', ':')}__{port}"  # NNCF's hook key of (op, input port)
                hooks = storage.pre_hooks[key].values() if key in storage.pre_hooks else ()
                out += [_Switch(h) for h in hooks if hasattr(h, "disable_quantization")]
    return out


def scheme_float_layers(model, float_layers=()) -> tuple:
    """`float_layers` plus the image convs (`IMAGE_LAYERS`) and channel-attention convs the model has."""
    return with_scheme_layers(model, float_layers, IMAGE_LAYERS, POOLED_LAYERS)


def _split_names(model, layers) -> list:
    """Float layer names on the rewritten model: a split conv stands for both its halves."""
    out = []
    for name in layers:
        mod = model.get_submodule(name)
        out += [f"{name}.a", f"{name}.b"] if isinstance(mod, Halves) else [name]
    return out


def nncf_input(model, image, example_inputs):
    """What NNCF calls `model` with: the image, or keywords with a zero context of the example's width."""
    k = example_context_size(example_inputs)
    if not k:
        return image
    zeros = image.new_zeros(image.shape[0], k)
    return {_image_argument(model): image, "context": zeros, "context_mix": zeros}


def _image_argument(model) -> str:
    import inspect

    return next(iter(inspect.signature(model.forward).parameters))


def traced_prompt_layers(model, example, ops=None) -> list[str]:
    """Prompt-path conv / linear layers whose weights NNCF's tracer sees (the mapper projections the
    context path calls from the top-level forward). `ops`: `weight_ops` of the module, if known."""
    from torch import nn

    known = weight_ops(model, example) if ops is None else ops
    out = []
    for scope in prompt_path_modules(model):
        for name, mod in model.get_submodule(scope).named_modules():
            full = f"{scope}.{name}" if name else scope
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and f"{full}.weight" in known:
                out.append(full)
    return out


def nncf_node_names(model, example, layers, ops=None) -> list[str]:
    """NNCF graph names of the ops that use each layer's weight (found through the weight node).
    `example`: the image, or the keywords of `nncf_input`; `ops`: `weight_ops` of the module, if known."""
    if not layers:
        return []
    ops = weight_ops(model, example) if ops is None else ops
    return [op for layer in layers for op in ops[f"{layer}.weight"]]


def convert(prepared):
    """An eval-mode copy of the quantized module, ready for `openvino.convert_model`."""
    return copy.deepcopy(prepared).eval()


def backend_state(prepared) -> dict:
    """NNCF's own description of the inserted quantizers (JSON), to rebuild before loading state."""
    nncf = _nncf()
    return {"nncf_config": nncf.torch.get_config(prepared)}


def rebuild(model, example_inputs, float_layers=(), backend_state=None):
    nncf = _nncf()
    if not backend_state or "nncf_config" not in backend_state:
        return prepare(model, example_inputs, float_layers)
    model = rewritten_copy(model)  # no channel split between int8 convs
    return mark(nncf.torch.load_from_config(model, backend_state["nncf_config"]).eval(), example_inputs)
