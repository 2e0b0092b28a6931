"""OpenVINO target, export side: the toolkit's ONNX graph -> openvino.convert_model -> IR.

Going through ONNX keeps the input-size-dependent padding dynamic (OpenVINO's torch frontend
traces it as constants) and gives one path for every precision: FP32 keeps float32 weights,
FP16 is the same graph saved with `compress_to_fp16=True` (float16 weights, decompressed at load).
INT8 comes from the QAT result: an NNCF-quantized torch module (the OpenVINO quantizer) converts
directly, its quantizers becoming FakeQuantize ops with int8 weight constants; an ONNX (PT2E)
QAT result goes through its QDQ ONNX (OpenVINO cannot convert a PT2E program directly). The float
remainder of an INT8 IR is saved as FP16, as OpenVINO does by default.

A model with a context has the inputs input, context, context_mix and the outputs output,
context_out (names set on every port); OpenVINO has no optional inputs, so sessions feed zeros.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from datprl_edge.core.artifacts import quiet, require
from datprl_edge.core.errors import VerificationError
from datprl_edge.export.onnx import onnx_model
from datprl_edge.runtime.openvino import RT_INFO_KEY

CONVERSION = "torch -> ONNX (dynamo exporter) -> openvino.convert_model"


def export(job, dest: Path) -> dict:
    """Write `job`'s model as OpenVINO IR at `dest` (.xml, with the .bin beside it)."""
    ov = require("openvino", purpose="writing OpenVINO IR")
    if job.precision == "int8" and job.quant.target == "openvino":
        model, notes = _from_nncf(ov, job)
    else:
        model, notes = _from_onnx(ov, job)
    inputs, outputs = job.io_names()
    if len(model.inputs) != len(inputs) or len(model.outputs) != len(outputs):
        raise VerificationError(f"the OpenVINO model has {len(model.inputs)} inputs and {len(model.outputs)} "
                                f"outputs; expected {', '.join(inputs)} and {', '.join(outputs)}")
    for port, name in zip(list(model.inputs) + list(model.outputs), inputs + outputs):
        port.get_tensor().set_names({name})
    for k, v in job.metadata.items():
        model.set_rt_info(str(v), [RT_INFO_KEY, k])
    # INT8 IRs keep their float remainder (prompt path, biases) as FP16 too, OpenVINO's default.
    compress = job.precision in ("fp16", "int8")
    with quiet():
        ov.save_model(model, str(dest), compress_to_fp16=compress)
    if job.precision == "int8":
        fq = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
        if fq == 0:
            raise VerificationError("the INT8 OpenVINO IR has no FakeQuantize ops; quantization was lost")
    if compress:
        notes["fp16_method"] = "openvino.save_model(compress_to_fp16=True): float16 weights"
    return notes


def _from_onnx(ov, job):
    onnx = require("onnx", purpose="writing OpenVINO IR (through ONNX)")
    source = "int8" if job.precision == "int8" else "fp32"
    proto, notes = onnx_model(job, source)
    with tempfile.TemporaryDirectory(prefix="datprl-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(path))
        with quiet():
            model = ov.convert_model(str(path))
    notes = {**notes, "conversion": CONVERSION}
    if job.precision == "int8":
        notes["int8_format"] = "FakeQuantize on activations, int8 weight constants (from the QDQ ONNX)"
    return model, notes


def _from_nncf(ov, job):
    """NNCF-quantized torch module -> OpenVINO (its quantizers become FakeQuantize ops).

    OpenVINO traces the module, so the input-size-dependent padding is baked in at the example
    size (a multiple of the pad multiple, where the padding is empty): the IR takes multiples of
    the pad multiple and the runtime session pads other sizes.
    """
    import torch

    module = job.quant_program()
    shape = [1, job.channels, *job.shapes[0]] if len(job.shapes) == 1 else [1, job.channels, -1, -1]
    shapes = [ov.PartialShape(shape)]
    if job.context_layout:  # context, context_mix
        shapes += [ov.PartialShape([1, job.context_size])] * 2
    example = job.example_inputs()
    with quiet(), torch.no_grad():
        model = ov.convert_model(module, example_input=example if len(example) > 1 else example[0],
                                 input=shapes)
    notes = {"conversion": "NNCF-quantized torch module -> openvino.convert_model (traced)",
             "int8_format": "FakeQuantize on op inputs, int8-compressed weights (NNCF)",
             "input_multiple": str(job.pad_multiple)}
    return model, notes
