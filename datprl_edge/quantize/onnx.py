"""INT8 quantizer settings of the ONNX target: torchao PT2E with a QDQ scheme onnxruntime runs in
integer kernels on every x86 CPU, with and without VNNI.

Stack: `torch.export` -> `prepare_qat_pt2e` -> (calibrate / train) -> `convert_pt2e`; the
converted program exports with `torch.onnx.export(dynamo=True)` to QuantizeLinear /
DequantizeLinear pairs, which onnxruntime fuses into QLinearConv / QLinearMul. The annotator is
torchao's XNNPACKQuantizer (conv, linear, mul, cat with their inputs and outputs: the placement
onnxruntime's QDQ fusions match) given this scheme's own specs; residual and skip sums stay float
(scheme 4; rounding the stream to 8 bits at every block cost ~0.5 dB on CT):

- activations uint8 per-tensor affine [0, 255]: onnxruntime's x86 integer kernels are U8S8; int8
  activations are rewritten to uint8 only where a QuantizeLinear has a single consumer, which
  PT2E's duplicated DequantizeLinear nodes defeat, leaving the convolutions in float;
- convs with fewer than 8 output channels (the image-producing last conv) get int8 weights but
  float activations: onnxruntime's int8 kernels are several times slower than float ones at so few
  output channels; the image conv `intro` (3 input channels) stays float, weights and input
  (scheme 5, `IMAGE_LAYERS`); the convs whose output a pixel shuffle turns straight into a term of
  a float sum, the image-producing `ending` (3*s*s outputs at stem s) and the up-samplers' convs,
  keep int8 weights and a float output at any width (scheme 6, `OUTPUT_LAYERS`);
- weights int8 symmetric per output channel in [-63, 63] (7 bits): without VNNI the U8S8 kernels
  add pairs of uint8 x int8 products in saturating int16 (VPMADDUBSW); 255 * 63 * 2 = 32130 fits,
  so every CPU computes the same exact integer sums (255 * 127 * 2 would not).

Before tracing, the student is rewritten exactly (`fold_layer_scales`, `split_gates`): per-channel
layer scales go into the conv weights and each SimpleGate's conv is cut into its two halves, so the
graph has no broadcast multiply and no channel split between quantized ops. Products and sums of a
feature map with a per-channel (B, C, 1, 1) tensor (channel attention, FiLM) stay float: the
runtime's broadcast QLinearMul is slower than float. Pixel (un)shuffle shares its input's
quantization, so it moves uint8 (DepthToSpace).

The prompt path (every node of a query mapper or prompt pool, and every node whose output is not a
spatial feature map, such as the FiLM prompt projections and the pooled channel-attention convs) is
quantized weight-only: its conv / linear weights are int8 symmetric per output channel (int8
initializers feeding DequantizeLinear, so the file shrinks), while its activations stay float, so
the discrete top-k prompt choice sees float queries and cannot flip on an activation rounding step.
The `float_layers` stay fully float (their weights and output; a float layer still reads an
int8 input when its producer is quantized). A block whose every layer is a float layer
(`--float-layers decoders.0.0`) is float as a whole, its gate and attention products too: the 8-bit
gate outputs and conv inputs of a few blocks were the largest error sources on CT and MRI
(`benchmarks/int8_error_sources.py`), and onnxruntime ran the edge-xs graph with four of its seven
blocks float as fast as the all-int8 one (the float blocks' consumers read float maps too).

torchao 0.18 ships XNNPACKQuantizer under `torchao.testing.pt2e` (marked deprecated in favour of
executorch's copy, which needs executorch); the pinned torchao is the one this was checked against.
"""

from __future__ import annotations

import copy
import warnings

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.student_blocks import rewritten_copy
from datprl_edge.quantize.feed import example_context_size, mark
from datprl_edge.quantize.scope import (
    PROMPT_PATH,
    channel_attention_layers,
    float_blocks,
    present_convs,
    prompt_path_modules,
)

TARGET = "onnx"
STACK = "torchao PT2E (torch.export + prepare_qat_pt2e + convert_pt2e)"
# what `layer_fake_quants` switches off for the sensitivity ranking
SWITCHED = "one layer's weight and output fake quants off"
# Bumped whenever the prepared graph or its quantization specs change: a QAT checkpoint stores the
# prepared state, which only loads into the graph it was made with.
SCHEME_VERSION = 6
MIN_INT8_OUT_CHANNELS = 8  # convs with fewer outputs stay float (see _is_narrow_conv)
# Residual and skip sums stay float: the stream is not rounded to 8 bits at every block (CT drop after
# QAT 1.03 -> 0.81 dB), at the cost of a dequantize before each sum (onnxruntime node time ~10-20%
# more). Gate products stay QLinearMul: float ones would halve the CT drop again but give back the
# INT8 speed (benchmarks/results/qat_onnx_float_eltwise.json: edge-xs PTQ CT drop 1.77 / 1.30 /
# 0.67 dB for sums and products quantized / sums float / both float).
FLOAT_ELTWISE = ("add",)
# The image conv stays float, weights and input (scheme 5): the image itself is not rounded to 8 bits
# before the first conv (edge-xs PTQ worst drop 1.51 -> 0.71 dB, CT 0.41 -> 0.17), and onnxruntime's
# int8 kernel for its 3 input channels was the slowest conv of the INT8 graph (2.1 of 38.8 ms)
IMAGE_LAYERS = ("intro",)
# Convs (here and under these module paths) whose output a pixel shuffle turns into a term of a float
# sum (the image's residual, a skip sum) get int8 weights and a float output, like a narrow conv,
# whatever their width (scheme 6). Rounding them to 8 bits per tensor was edge-q8's largest error source
# (int8_error_sources.py, PTQ): worst drop 0.225 -> 0.100 dB (MRI SR 0.23 -> 0.09), QAT 0.149 -> 0.100;
# edge-xs all-int8 PTQ 0.71 -> 0.62, QAT 0.27 -> 0.20. Cost in onnxruntime (bench --paired): edge-q8 INT8
# 0.965x the speed of `ending` alone float; edge-xs INT8 1.032x its FP32 against 1.060x (scheme 5).
OUTPUT_LAYERS = ("ending", "ups")
WEIGHT_QMAX = 63  # 7-bit weights: no int16 saturation in U8S8 kernels without VNNI (module docstring)
SCHEME = {
    "target": TARGET,
    "stack": STACK,
    "version": SCHEME_VERSION,
    "quantizer": "torchao XNNPACKQuantizer annotators with this scheme's uint8 / 7-bit specs",
    "weights": f"int8 symmetric per output channel, [-{WEIGHT_QMAX}, {WEIGHT_QMAX}] (no int16 saturation "
               "in x86 U8S8 kernels without VNNI)",
    "activations": "uint8 per-tensor affine, [0, 255], moving-average min/max during QAT",
    # activation ranges from calibration: the mean of the per-batch min/max. The extremes over all
    # batches were chosen while residual sums were QLinearAdd (a clipped sum saturated); with float
    # sums they only coarsen every step for the well-restored tasks: edge-xs PTQ CT drop 1.30 -> 0.39 dB
    # (cloud removal 1.42 -> 1.51), and QAT from there (scheme 4, lr 1e-5) worst 0.23 dB against 0.81
    "calibration": "mean",
    "quantized_ops": ["conv2d", "linear", "mul (same-shape)", "cat", "pixel_shuffle (shared range)"],
    "rewrites": "layer scales folded into convs, SimpleGate convs cut in halves (exact)",
    "float_by_design": f"activations of the {PROMPT_PATH}; residual and skip sums; per-channel broadcast "
                       f"products (channel attention, FiLM); the image conv(s) {', '.join(IMAGE_LAYERS)} "
                       f"(weights and input); output of the convs in {', '.join(OUTPUT_LAYERS)} and of "
                       f"convs with fewer than {MIN_INT8_OUT_CHANNELS} output channels (int8 weights, "
                       "float output)",
    "weight_only": f"conv / linear weights of the {PROMPT_PATH}: int8 symmetric per output channel, "
                   "float activations (the top-k routing sees float queries)",
    "float_layer_semantics": "weights and output stay float; the input is int8 if its producer is quantized",
    "converted": "torch.fx.GraphModule with quantize/dequantize ops and int8 weight constants",
    "export": "torch.onnx.export(converted, dynamo=True) -> QDQ ONNX (uint8 activations, int8 weights)",
    "input_sizes": "H and W multiples of the pad multiple, at least 2x it (shapes are traced symbolically)",
    "why": "the target's own PT2E path; uint8 x 7-bit int8 is what onnxruntime fuses into integer kernels "
           "and computes exactly on every x86 instruction set",
}


def quantizer(float_layers=(), model=None, context: bool = False):
    """The composed torchao quantizer: float marker, shared-range pass, XNNPACK, float-edge pass.
    `context`: the program takes the context inputs (its channel-attention convs stay float)."""
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer

    scopes = tuple(prompt_path_modules(model)) if model is not None else ()
    float_layers = tuple(float_layers) + float_blocks(model, float_layers)
    float_layers += context_float_layers(model) if context else ()
    image = tuple(n for n in present_convs(model, IMAGE_LAYERS) if n not in float_layers)
    output = tuple(n for n in OUTPUT_LAYERS if n not in float_layers)
    config = quantization_config()
    marker = FloatScopeMarker(scopes, tuple(float_layers), prompt_weight_qspec=config.weight,
                              image_layers=image, output_layers=output)
    with warnings.catch_warnings():  # "XNNPACKQuantizer is deprecated!": see the module docstring
        warnings.simplefilter("ignore")
        xnnpack = XNNPACKQuantizer()
    xnnpack.set_global(config)
    if not _has_batchnorm(model):
        # the conv+BN QAT patterns cost seconds of pattern tracing and match nothing without BN
        xnnpack.STATIC_QAT_ONLY_OPS = []
    return ComposableQuantizer([marker, SharedRangePass(), xnnpack, FloatEdgePass(marker)])


def context_float_layers(model) -> tuple:
    """With a context, each block's channel-attention conv reads the mixed (B, C) context entry
    reshaped to (B, C, 1, 1): it stays float (weights too), because OpenVINO's CPU plugin fails to
    compile that reshape feeding an int8-weight 1x1 conv (ConvertWeightCompressedConv1x1ToMatmul)
    when the QDQ ONNX is converted. A few hundred weights; no effect on speed."""
    from datprl_edge.models.context import supports_context

    if model is None or not supports_context(model):
        return ()
    return channel_attention_layers(model)


def quantization_config():
    """uint8 activations, 7-bit symmetric per-channel int8 weights, both trained (QAT fake quant)."""
    import torch
    from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.testing.pt2e._xnnpack_quantizer_utils import QuantizationConfig

    def fake_quant(observer):
        return FusedMovingAvgObsFakeQuantize.with_args(observer=observer, eps=2 ** -12)

    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=fake_quant(MovingAverageMinMaxObserver))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-WEIGHT_QMAX, quant_max=WEIGHT_QMAX,
                              qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=fake_quant(MovingAveragePerChannelMinMaxObserver))
    return QuantizationConfig(act, act, weight, None, True)


def _has_batchnorm(model) -> bool:
    from torch import nn

    return model is None or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def prepare(model, example_inputs, float_layers=(), calib=None):
    """Fake-quant (QAT-ready) copy of `model` as a PT2E GraphModule; `model` is not changed.

    `calib` is unused here (PT2E calibrates by running the prepared module, see
    `scope.calibrate`).
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = export_graph(model, example_inputs)
    with_context = example_context_size(example_inputs) > 0
    prepared = prepare_qat_pt2e(gm, quantizer(float_layers, model, context=with_context))
    return mark(allow_train_eval(prepared), example_inputs)


def export_graph(model, example_inputs):
    """`torch.export` of an eval-mode copy with dynamic batch, height and width. Three example inputs
    (image, context, context_mix): the program takes them positionally and returns (restored, own
    context); the context arithmetic works on (B, K) vectors, which the scheme keeps float like the
    rest of the prompt path."""
    import types

    import torch
    from torch.export import Dim

    x = example_inputs[0]
    if x.shape[0] < 2:
        raise ConfigError("PT2E examples need a batch of at least 2 (a batch of 1 would be traced as fixed)")
    model = rewritten_copy(model)  # exact rewrites, see the module docstring
    dims = [{0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}]
    if len(example_inputs) == 3:
        # positional (image, context, context_mix); the student's second positional input is an override
        def forward(self, x, context, context_mix):
            return type(self).forward(self, x, context=context, context_mix=context_mix)

        model.forward = types.MethodType(forward, model)
        dims += [{0: Dim.AUTO}, {0: Dim.AUTO}]
    with torch.no_grad():
        ep = torch.export.export(model, tuple(example_inputs), dynamic_shapes=tuple(dims))
    return ep.module()


def convert(prepared):
    """The converted program (int8 weights folded, quantize/dequantize ops); `prepared` is kept."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return allow_train_eval(convert_pt2e(copy.deepcopy(prepared)))  # takes the context as `prepared` does


def allow_train_eval(gm):
    """Make .train()/.eval() work on an exported program (dropout/BN only, like torchao's
    allow_exported_model_train_eval) and return the module, as nn.Module's do."""
    import types

    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    def train(self, mode: bool = True):
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        return self

    def eval_(self):
        move_exported_model_to_eval(self)
        return self

    gm.train = types.MethodType(train, gm)
    gm.eval = types.MethodType(eval_, gm)
    return gm


def rebuild(model, example_inputs, float_layers=(), backend_state=None):
    """The same prepare on a base model, for loading a saved prepared state."""
    return prepare(model, example_inputs, float_layers)


def backend_state(prepared) -> dict:
    return {}


def layer_fake_quants(prepared, layer: str) -> list:
    """Weight and output fake-quant modules of one layer (for sensitivity toggling)."""
    mods = []
    for node in prepared.graph.nodes:
        path = _module_path(node)
        # a layer cut in halves (split_gates) traces as "<layer>.a" / "<layer>.b"
        if node.op != "call_function" or path is None or not (path == layer or path.startswith(layer + ".")):
            continue
        for arg in node.all_input_nodes:
            if arg.op == "call_module" and _feeds_from_get_attr(arg):
                mods.append(prepared.get_submodule(arg.target))
        for user in node.users:
            if user.op == "call_module" and "activation_post_process" in str(user.target):
                mods.append(prepared.get_submodule(user.target))
    return mods


def _feeds_from_get_attr(node) -> bool:
    return any(a.op == "get_attr" for a in node.all_input_nodes)


def _module_path(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def _clean_path(path: str) -> str:
    # export records "L['self'].decoders[0][1].conv1"-style paths in some versions, plain dotted in others
    path = path.replace("L['self'].", "").replace("L__self___", "")
    return path.replace("[", ".").replace("]", "").replace("'", "")


def _in_scope(node, scopes) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [_clean_path(v[0]) for v in stack.values()]
    return any(p == s or p.startswith(s + ".") for p in paths for s in scopes)


def _is_feature_map(node) -> bool:
    """A 4-D output with a spatial extent: pooled (B, C, 1, 1) vectors do not count."""
    val = node.meta.get("val")
    return getattr(val, "dim", lambda: 0)() == 4 and tuple(val.shape[2:]) != (1, 1)


def _is_narrow_conv(node) -> bool:
    """A conv with fewer than MIN_INT8_OUT_CHANNELS outputs (the image-producing `ending`): its
    output is the restored image's residual, and onnxruntime's int8 kernels for so few channels
    are several times slower than its float ones (measured: 3.3 ms of a 22 ms edge-xs run)."""
    import torch

    if node.target != torch.ops.aten.conv2d.default:
        return False
    weight = node.args[1]
    val = getattr(weight, "meta", {}).get("val")
    return val is not None and int(val.shape[0]) < MIN_INT8_OUT_CHANNELS


def _map_operand_shapes(node) -> list:
    """Shapes of a binary op's 4-D operands (traced tensors only)."""
    return [tuple(a.meta["val"].shape) for a in node.args[:2]
            if hasattr(a, "meta") and getattr(a.meta.get("val"), "dim", lambda: 0)() == 4]


def _is_broadcast_product(node) -> bool:
    """A mul / add of a feature map by a per-channel (B, C, 1, 1) tensor (channel attention, FiLM)."""
    import torch

    if node.target not in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor):
        return False
    shapes = _map_operand_shapes(node)
    return len(shapes) == 2 and any(s[2:] == (1, 1) for s in shapes) and any(s[2:] != (1, 1) for s in shapes)


def _is_float_eltwise(node) -> bool:
    """An add (residual or skip sum) or product (gate) of two feature maps of one shape, where the
    scheme keeps them float (`FLOAT_ELTWISE`)."""
    import torch

    ops = {"add": torch.ops.aten.add.Tensor, "mul": torch.ops.aten.mul.Tensor}
    if node.target not in [ops[k] for k in FLOAT_ELTWISE]:
        return False
    shapes = _map_operand_shapes(node)
    return len(shapes) == 2 and shapes[0] == shapes[1] and _is_feature_map(node)


def _weight_input(node):
    """The parameter (get_attr) weight of a conv2d / linear node, else None."""
    import torch

    if node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
        return None
    weight = node.args[1] if len(node.args) > 1 else None
    return weight if getattr(weight, "op", None) == "get_attr" else None


def _base_quantizer():
    from torchao.quantization.pt2e.quantizer import Quantizer

    return Quantizer


class FloatScopeMarker(_base_quantizer()):
    """Marks prompt-path, narrow-conv and float-layer nodes as handled so that the XNNPACK quantizer,
    which skips annotated nodes, leaves their activations in float. Prompt-path and narrow conv /
    linear nodes get a weight-only annotation (`prompt_weight_qspec` on the weight input, nothing
    else); all other marked nodes get an empty one. Narrow convs and float layers also keep their
    output float (`float_nodes`, see FloatEdgePass), so the runtime cannot fuse them into int8. The
    `image_layers` are float (weights and input) but their consumers still quantize what they read,
    so the convs after them stay integer. The `output_layers` are treated as narrow convs."""

    def __init__(self, scopes=(), float_layers=(), prompt_weight_qspec=None, image_layers=(),
                 output_layers=()):
        super().__init__()
        self.scopes, self.float_layers = tuple(scopes), tuple(float_layers)
        self.image_layers, self.output_layers = tuple(image_layers), tuple(output_layers)
        self.prompt_weight_qspec = prompt_weight_qspec
        self.float_nodes: set = set()

    def annotate(self, model):
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        self.float_nodes = set()
        for node in model.graph.nodes:
            if node.op != "call_function":
                continue
            prompt = not _is_feature_map(node) or _in_scope(node, self.scopes)
            float_layer = _in_scope(node, self.float_layers)
            if not prompt and not float_layer and _in_scope(node, self.image_layers):
                node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
                continue
            narrow = not float_layer and (_is_narrow_conv(node) or (
                _weight_input(node) is not None and _in_scope(node, self.output_layers)))
            if not (prompt or float_layer or narrow) and (_is_broadcast_product(node) or
                                                           _is_float_eltwise(node)):
                node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            elif prompt or float_layer or narrow:
                weight_only = (prompt or narrow) and not float_layer and self.prompt_weight_qspec is not None
                weight = _weight_input(node) if weight_only else None
                qspecs = {weight: self.prompt_weight_qspec} if weight is not None else {}
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=qspecs, _annotated=True)
                if not prompt:
                    self.float_nodes.add(node)
        return model

    def validate(self, model) -> None:
        pass


class SharedRangePass(_base_quantizer()):
    """Pixel (un)shuffle only moves values: its output shares its input's scale and zero point, so the
    runtime drops the dequantize / quantize around it and moves uint8 (DepthToSpace, SpaceToDepth)."""

    def annotate(self, model):
        import torch
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        movers = (torch.ops.aten.pixel_shuffle.default, torch.ops.aten.pixel_unshuffle.default)
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in movers:
                continue
            if "quantization_annotation" in node.meta:
                continue
            src = node.args[0]
            if getattr(src, "target", None) != torch.ops.aten.conv2d.default or \
                    "quantization_annotation" in src.meta:
                continue  # only a conv that the XNNPACK pass will quantize (not a float layer)
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={}, output_qspec=SharedQuantizationSpec(src), _annotated=True)
        return model

    def validate(self, model) -> None:
        pass


class FloatEdgePass(_base_quantizer()):
    """Runs last: consumers must not quantize what a float layer outputs (edge dropped in place)."""

    def __init__(self, marker: FloatScopeMarker):
        super().__init__()
        self.marker = marker

    def annotate(self, model):
        float_nodes = self.marker.float_nodes
        for node in model.graph.nodes:
            ann = node.meta.get("quantization_annotation")
            if ann is None or not ann.input_qspec_map:
                continue
            for src in [s for s in ann.input_qspec_map if s in float_nodes]:
                del ann.input_qspec_map[src]
        return model

    def validate(self, model) -> None:
        pass
