"""Core ML target, runtime side: an MLModel session (macOS only) and a structural inspection of
.mlpackage folders that works everywhere (the spec is a protobuf that coremltools reads on Linux).

numpy + coremltools only; the exporter is export/coreml.py. Metadata lives in the model's
`user_defined_metadata` with keys prefixed "datprl_edge.".
"""

from __future__ import annotations

import collections
import platform
from pathlib import Path

from datprl_edge.core.artifacts import (
    CONTEXT_MIX_NAME,
    CONTEXT_NAME,
    CONTEXT_OUT_NAME,
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    artifact_size,
    io_names,
    macos,
    require,
    strip_prefix,
)
from datprl_edge.core.errors import ArtifactError, InputNotFoundError, PlatformError
from datprl_edge.core.targets import COMPUTE_UNITS
from datprl_edge.runtime.session import ArtifactSession

# What check_structure looks at, for the export report when numerics cannot be checked here.
STRUCTURE_CHECKED = ("spec loads, input/output names and shapes (the context inputs and output where the "
                     "model has them), op histogram, weight size")
# Ops that show a quantized mlprogram (iOS 17): int8 weights and quantized activations.
INT8_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
INT8_ACTIVATION_OPS = ("quantize", "dequantize")


def prediction_unavailable() -> PlatformError:
    return PlatformError(f"Core ML prediction needs macOS (this is {platform.system() or 'an unknown OS'}); "
                         "the artifact itself is valid and can be checked structurally here")


class CoreMLSession(ArtifactSession):
    """A .mlpackage. Metadata and shapes load anywhere; `run` needs macOS."""

    target = "coreml"

    def __init__(self, path, compute_units: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise InputNotFoundError(f"Core ML artifact not found: {self.path}")
        self.spec = load_spec(self.path)
        self.metadata = strip_prefix(self.spec.description.metadata.userDefined.items())
        described = self.spec.description
        self._check_io([i.name for i in described.input], [o.name for o in described.output])
        self.static_hw, self.allowed_hw, self.size_range = _input_shapes(self.spec)
        self.compute_units = compute_units or self.metadata.get("compute_units", COMPUTE_UNITS[0])
        self._model = None

    def run(self, x):
        if not macos():
            raise prediction_unavailable()
        return super().run(x)

    def _predict(self, feed: dict) -> dict:
        if self._model is None:
            ct = require("coremltools", purpose="running Core ML artifacts")
            self._model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit[self.compute_units])
        return self._model.predict(feed)

    def _infer(self, x):
        # the context inputs (if any) are optional, with an all-zero default
        return self._predict({self.metadata.get("input_name", INPUT_NAME): x})[
            self.metadata.get("output_name", OUTPUT_NAME)]

    def _infer_context(self, x, context, context_mix):
        out = self._predict({self.metadata.get("input_name", INPUT_NAME): x, CONTEXT_NAME: context,
                             CONTEXT_MIX_NAME: context_mix})
        return out[self.metadata.get("output_name", OUTPUT_NAME)], out[CONTEXT_OUT_NAME]


def bench_options(job: dict) -> dict:
    """CoreMLSession options for one `bench` measurement (job: compute_units)."""
    return {"compute_units": job.get("compute_units") or COMPUTE_UNITS[0]}


def bench_details(session, options: dict) -> dict:
    return {"compute_units": options["compute_units"]}


def load_spec(path):
    ct = require("coremltools", purpose="reading Core ML artifacts")
    try:
        return ct.utils.load_spec(str(path))
    except Exception as e:  # protobuf and coremltools raise several kinds
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"cannot read the Core ML spec of {Path(path).name}: {first}") from None


def read_metadata(path) -> dict:
    return strip_prefix(load_spec(path).description.metadata.userDefined.items())


def inspect_coreml(path) -> dict:
    """Structure of a .mlpackage: inputs/outputs and their flexibility, op histogram, sizes."""
    path = Path(path)
    spec = load_spec(path)
    ops: collections.Counter = collections.Counter()
    elements: collections.Counter = collections.Counter()
    if spec.WhichOneof("Type") == "mlProgram":
        for fn in spec.mlProgram.functions.values():
            for block in fn.block_specializations.values():
                _count_ops(block, ops, elements)
    static_hw, allowed, size_range = _input_shapes(spec)
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    return {
        "format": "mlpackage",
        "model_type": spec.WhichOneof("Type"),
        "specification_version": spec.specificationVersion,
        "inputs": {i.name: _describe(i) for i in spec.description.input},
        "outputs": {o.name: _describe(o) for o in spec.description.output},
        "static_hw": static_hw,
        "enumerated_hw": allowed,
        "size_range": size_range,
        "ops": dict(sorted(ops.items())),
        "weight_elements": dict(sorted(elements.items())),
        "weight_file_bytes": sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
        if weights.is_dir() else 0,
        "size_bytes": artifact_size(path),
        "metadata": strip_prefix(spec.description.metadata.userDefined.items()),
    }


def _count_ops(block, ops, elements) -> None:
    """Op histogram, and constant tensor elements per data type (weights: const values and the
    int8 data of constexpr dequantize ops)."""
    from coremltools.proto import MIL_pb2

    for op in block.operations:
        ops[op.type] += 1
        for key, value in op.attributes.items():
            ttype = value.type.tensorType
            if key == "name" or not ttype.dimensions:
                continue
            count = 1
            for d in ttype.dimensions:
                count *= d.constant.size
            elements[MIL_pb2.DataType.Name(ttype.dataType)] += count
        for inner in op.blocks:
            _count_ops(inner, ops, elements)


def _input_shapes(spec):
    """(static (h, w) or None, enumerated [(h, w)] or None, range {'h': [lo, hi], 'w': [...]} or None)."""
    image = next((i for i in spec.description.input if i.name == INPUT_NAME), spec.description.input[0])
    arr = image.type.multiArrayType
    kind = arr.WhichOneof("ShapeFlexibility")
    if kind == "enumeratedShapes":
        return None, [tuple(int(v) for v in s.shape[2:4]) for s in arr.enumeratedShapes.shapes], None
    if kind == "shapeRange":
        r = arr.shapeRange.sizeRanges
        return None, None, {"h": [int(r[2].lowerBound), int(r[2].upperBound)],
                            "w": [int(r[3].lowerBound), int(r[3].upperBound)]}
    dims = [int(d) for d in arr.shape]
    return (tuple(dims[2:4]) if len(dims) == 4 else None), None, None


def _describe(feature) -> dict:
    arr = feature.type.multiArrayType
    info = {"shape": [int(d) for d in arr.shape], "dtype": type(arr).ArrayDataType.Name(arr.dataType)}
    if arr.WhichOneof("defaultOptionalValue"):
        info["default"] = float(getattr(arr, arr.WhichOneof("defaultOptionalValue")))
    return info


__all__ = ["CoreMLSession", "inspect_coreml", "read_metadata", "load_spec", "METADATA_PREFIX"]


def _context_problems(info: dict) -> list[str]:
    """Names of the inputs/outputs; with a context (metadata context_size K), the (1, K) context
    inputs with their all-zero default and the context_out output."""
    text = str(info.get("metadata", {}).get("context_size", "0"))
    k = int(text) if text.isdigit() else 0
    inputs, outputs = io_names(k > 0)
    if list(info["inputs"]) != inputs or list(info["outputs"]) != outputs:
        return [f"inputs/outputs are {list(info['inputs'])}/{list(info['outputs'])}, expected "
                f"{'/'.join([', '.join(inputs), ', '.join(outputs)])}"]
    problems = []
    for name in inputs[1:]:
        feature = info["inputs"][name]
        if feature["shape"] != [1, k] or feature.get("default") != 0.0:
            problems.append(f"input {name} is {feature}, expected shape [1, {k}] with default 0")
    return problems


# Weight data type of each precision, and the share of constant elements it must hold at least
# (INT8 keeps the prompt path and the joins between quantized blocks in FP16 by design).
WEIGHT_DTYPE = {"fp32": ("FLOAT32", 0.9), "fp16": ("FLOAT16", 0.9), "int8": ("INT8", 0.5)}


def check_structure(info: dict, precision: str, params: int, shapes) -> list[str]:
    """Problems found in an inspected .mlpackage (empty when it looks right)."""
    problems = []
    if info["model_type"] != "mlProgram":
        problems.append(f"model type is {info['model_type']}, expected mlProgram")
    if info["specification_version"] < 8:
        problems.append(f"specification version {info['specification_version']} is below iOS 17's (8)")
    problems += _context_problems(info)
    shapes = [tuple(s) for s in shapes]
    if len(shapes) == 1 and info["static_hw"] != shapes[0]:
        problems.append(f"input size {info['static_hw']} differs from the requested {shapes[0]}")
    if len(shapes) > 1 and sorted(info["enumerated_hw"] or []) != sorted(shapes):
        problems.append(f"enumerated sizes {info['enumerated_hw']} differ from the requested {shapes}")
    if not shapes and not info["size_range"]:
        problems.append("the input has no flexible size range")
    ops = info["ops"]
    if precision == "int8":
        if not any(ops.get(o) for o in INT8_WEIGHT_OPS):
            problems.append("no int8 weight ops (constexpr_affine_dequantize)")
        if not ops.get("quantize"):
            problems.append("no quantized activations (quantize ops)")
    elements = info.get("weight_elements", {})
    total = sum(elements.values())
    dtype, least = WEIGHT_DTYPE[precision]
    if params and total < 0.9 * params:
        problems.append(f"the package holds {total} constant elements for a {params}-parameter model")
    if total and elements.get(dtype, 0) < least * total:
        problems.append(f"only {elements.get(dtype, 0)} of {total} weight elements are {dtype} "
                        f"(expected at least {least:.0%} for {precision})")
    return problems
