"""Core ML target, export side: torch.jit.trace -> coremltools.convert -> mlprogram (.mlpackage).

Minimum deployment target iOS 17 / macOS 14. FP16 (the default) and FP32 come from the float
model; INT8 (W8A8) from the QAT result's finalized coremltools LinearQuantizer model, which
converts to int8 weights (constexpr_affine_dequantize) and quantize/dequantize activations.

The trace runs at a size that is a multiple of the model's pad multiple, so the in-model padding
is a no-op and drops out of the graph: Core ML artifacts take sizes that are multiples of the pad
multiple, and the runtime session pads other sizes (recorded in the metadata as `input_multiple`).

A model with a context gets the inputs context and context_mix, fixed (1, K) and optional (an
all-zero default value, which Core ML uses when the input is not given), and the output context_out.
"""

from __future__ import annotations

from pathlib import Path

from datprl_edge.core.artifacts import INPUT_NAME, METADATA_PREFIX, quiet, require
from datprl_edge.core.errors import ConfigError, VerificationError
from datprl_edge.runtime.coreml import INT8_ACTIVATION_OPS, INT8_WEIGHT_OPS, inspect_coreml

MAX_SIDE = 4096


def export(job, dest: Path) -> dict:
    ct = require("coremltools", purpose="writing Core ML packages")
    import numpy as np
    import torch

    m = job.pad_multiple
    if any(h % m or w % m for h, w in job.shapes):  # export_model says so earlier, with a hint
        raise ConfigError(f"Core ML shapes must be multiples of the model's pad multiple {m}")
    module = job.program()
    example = job.example_inputs()
    input_names, output_names = job.io_names()
    inputs = [ct.TensorType(name=INPUT_NAME, shape=_input_shape(ct, job), dtype=np.float32)]
    zeros = np.zeros((1, job.context_size), np.float32)
    inputs += [ct.TensorType(name=name, shape=zeros.shape, dtype=np.float32, default_value=zeros)
               for name in input_names[1:]]
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        trace_diff = _trace_generalizes(module, traced, example, m)
        mlmodel = ct.convert(
            traced,
            inputs=inputs,
            outputs=[ct.TensorType(name=name, dtype=np.float32) for name in output_names],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16,
            compute_units=ct.ComputeUnit[job.compute_units],
        )
    for k, v in job.metadata.items():
        mlmodel.user_defined_metadata[METADATA_PREFIX + k] = str(v)
    mlmodel.author = "datprl-edge"
    mlmodel.short_description = (f"{job.metadata.get('model_name', 'model')} image restoration, "
                                 f"NCHW float32 in [0,1], {job.precision}")
    mlmodel.version = job.metadata.get("toolkit_version", "")
    with quiet():
        mlmodel.save(str(dest))
    notes = {"conversion": "torch.jit.trace -> coremltools.convert(mlprogram, iOS17)",
             "compute_units": job.compute_units, "minimum_deployment_target": "iOS17 / macOS14",
             "traced_graph_max_abs_diff_at_other_size": trace_diff}
    if job.precision == "int8":
        ops = inspect_coreml(dest)["ops"]
        if not any(ops.get(o) for o in INT8_WEIGHT_OPS):
            raise VerificationError("the INT8 Core ML model has no int8 weights "
                                    "(no constexpr_affine_dequantize)")
        found = [f"{o} x{ops[o]}" for o in INT8_WEIGHT_OPS + INT8_ACTIVATION_OPS if ops.get(o)]
        notes["int8_format"] = "W8A8: " + ", ".join(found)
    return notes


def _trace_generalizes(module, traced, example, multiple: int) -> float:
    """Max abs diff of the traced graph vs the module at another size (a multiple of the pad
    multiple): Core ML cannot run here, but the graph it was converted from can."""
    import torch

    image = example[0]
    h, w = image.shape[2] + 2 * multiple, image.shape[3] + multiple
    x = torch.rand(1, image.shape[1], h, w, generator=torch.Generator().manual_seed(1))
    got, want = traced(x, *example[1:]), module(x, *example[1:])
    if isinstance(got, (tuple, list)):  # (restored, context_out)
        diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    else:
        diff = float((got - want).abs().max())
    if not diff <= 1e-3:
        raise VerificationError(f"the traced graph does not reproduce the model at {h}x{w} "
                                f"(max abs diff {diff:.3g}); it cannot be exported with flexible sizes")
    return diff


def _input_shape(ct, job):
    c = job.channels
    if len(job.shapes) == 1:
        h, w = job.shapes[0]
        return (1, c, h, w)
    if job.shapes:
        return ct.EnumeratedShapes(shapes=[(1, c, h, w) for h, w in job.shapes],
                                   default=(1, c, *job.shapes[0]))
    m, default = job.pad_multiple, job.tile_size
    return ct.Shape(shape=(1, c, ct.RangeDim(lower_bound=m, upper_bound=MAX_SIDE, default=default),
                           ct.RangeDim(lower_bound=m, upper_bound=MAX_SIDE, default=default)))
