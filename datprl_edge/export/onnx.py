"""ONNX target, export side: torch -> ONNX with the dynamo exporter (torch.export based).

FP32: the float model, dynamic H/W unless one static shape is asked for. FP16: the FP32 graph run
through onnxruntime's float16 converter with float32 input/output kept (Cast at both ends).
INT8: the QAT result's converted PT2E program, which exports as QDQ (QuantizeLinear /
DequantizeLinear around int8 weight initializers). The written file then gets the rewrites of
`onnx_runtime_graph` (pixel shuffles and unshuffles as ops onnxruntime runs fast, the weights of
convs that stay float stored dequantized). torch is imported inside the functions.

A model with a context gets the inputs context and context_mix (1, K) and the output context_out;
in the written file both inputs also have an all-zero initializer, ONNX's default value for an
input, so a runtime may feed the image alone (onnxruntime lists them as overridable initializers).
The cached graph has no defaults: OpenVINO would fold such inputs into constants.
"""

from __future__ import annotations

from pathlib import Path

from datprl_edge.core.artifacts import CONTEXT_MIX_NAME, CONTEXT_NAME, METADATA_PREFIX, quiet, require
from datprl_edge.core.errors import ConfigError, VerificationError
from datprl_edge.export.onnx_runtime_graph import REWRITES, optimize_for_onnxruntime

OPSET = 18  # the dynamo exporter's lowest opset; the issue asks for >= 17
FP16_METHOD = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"


def export(job, dest: Path) -> dict:
    """Write `job`'s model as an .onnx file at `dest`; returns notes for the report."""
    onnx = require("onnx", purpose="writing ONNX files")
    proto, notes = runtime_graph(job, job.precision)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # the cache keeps the clean copy
    set_metadata(proto, {**job.metadata, "onnx_graph": REWRITES if job.onnx_rewrites else "as traced"})
    if job.context_layout:
        add_context_defaults(proto, job.context_size)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dest))
    if job.precision == "int8":
        from datprl_edge.runtime.onnx import runtime_kernels

        kernels = runtime_kernels(dest)
        notes = {**notes, "onnxruntime_convs": f"{kernels['integer_convs']} integer (QLinearConv), "
                                                f"{kernels['float_convs']} float"}
    return notes


def runtime_graph(job, precision: str):
    """(ModelProto, notes) of the .onnx file for fp32/fp16/int8: the exported graph rewritten into
    the ops onnxruntime runs fastest (`onnx_runtime_graph`); FP16 converts the rewritten FP32 graph.
    OpenVINO converts the graph before these rewrites (`onnx_model`): its own passes handle it."""
    key = ("onnxruntime", precision)
    if key not in job.cache:
        if precision == "fp16":
            proto, notes = runtime_graph(job, "fp32")
            job.cache[key] = (to_fp16(proto), {**notes, "fp16_method": FP16_METHOD})
        else:
            onnx = require("onnx", purpose="writing ONNX files")
            proto, notes = onnx_model(job, precision)
            if not job.onnx_rewrites:
                job.cache[key] = (proto, {**notes, "onnxruntime_rewrites": "off (--plain-onnx)"})
                return job.cache[key]
            proto = onnx.ModelProto.FromString(proto.SerializeToString())
            rewrites = optimize_for_onnxruntime(proto)
            done = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in rewrites.items() if v)
            job.cache[key] = (proto, {**notes, "onnxruntime_rewrites": done or "none"})
    return job.cache[key]


def onnx_model(job, precision: str):
    """(ModelProto without toolkit metadata, notes) for fp32/int8 as the exporter writes it, cached on
    the job."""
    key = ("onnx", precision)
    if key not in job.cache:
        if precision == "int8":
            proto = trace_to_onnx(job.quant_program(), job)
            counts = _initializer_counts(proto)
            if not counts.get("int8"):
                raise VerificationError("the INT8 ONNX export holds no int8 weights; the QAT program was "
                                        "not converted (expected QuantizeLinear/DequantizeLinear with int8 "
                                        "initializers)")
            job.cache[key] = (proto, {"int8_format": "QDQ (QuantizeLinear/DequantizeLinear, int8 weights)"})
        else:
            job.cache[key] = (trace_to_onnx(job.float_program(), job), {})
    return job.cache[key]


def trace_to_onnx(module, job):
    """torch module or exported program of `job.example_inputs()` -> ModelProto (opset 18), debug
    metadata stripped. Dynamic H/W (when asked) on the image only; the context is (1, K)."""
    import torch

    example = job.example_inputs()
    inputs, outputs = job.io_names()
    kwargs = dict(input_names=inputs, output_names=outputs, opset_version=OPSET, dynamo=True,
                  verbose=False, external_data=False)
    if job.dynamic:
        dyn = torch.export.Dim.DYNAMIC
        kwargs["dynamic_shapes"] = ({2: dyn, 3: dyn},) + (None,) * (len(example) - 1)
    with quiet():
        try:
            program = torch.onnx.export(module, example, None, **kwargs)
        except Exception as e:  # the exporter raises many kinds; say which step failed
            raise ConfigError(f"torch.onnx.export failed for this model: {_first_line(e)}") from None
    proto = program.model_proto
    strip_debug_info(proto)
    return proto


def to_fp16(proto):
    """Float16 weights and compute, float32 graph input/output."""
    onnx = require("onnx", purpose="writing ONNX files")
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    copy = onnx.ModelProto.FromString(proto.SerializeToString())
    with quiet():
        half = convert_float_to_float16(copy, keep_io_types=True)
    # The converter appends its Cast nodes at the end of the node list; ONNX needs them sorted.
    OnnxModel.graph_topological_sort(half.graph)
    return half


def strip_debug_info(proto) -> None:
    """Drop the exporter's per-node stack traces and the intermediate shape annotations
    (`value_info`, which runtimes infer again): they are a third of a small file."""
    g = proto.graph
    for node in g.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for group in (g.value_info, g.input, g.output, g.initializer):
        for item in group:
            del item.metadata_props[:]
    del g.value_info[:]
    del proto.metadata_props[:]
    proto.doc_string = ""


def add_context_defaults(proto, size: int) -> None:
    """Make the context inputs optional: an all-zero (1, size) initializer of the same name each."""
    import numpy as np

    onnx = require("onnx", purpose="writing ONNX files")
    present = {i.name for i in proto.graph.input}
    for name in (CONTEXT_NAME, CONTEXT_MIX_NAME):
        if name not in present:
            raise VerificationError(f"the ONNX graph has no {name} input although the model has a context")
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, size), np.float32), name))


def set_metadata(proto, metadata: dict) -> None:
    del proto.metadata_props[:]
    for k, v in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + k, str(v)
    proto.producer_name = "datprl-edge"
    proto.producer_version = metadata.get("toolkit_version", "")


def _initializer_counts(proto) -> dict:
    onnx = require("onnx")
    out: dict[str, int] = {}
    for init in proto.graph.initializer:
        name = str(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
        out[name] = out.get(name, 0) + 1
    return out


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:240]
