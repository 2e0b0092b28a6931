"""ONNX target, runtime side: an onnxruntime session and a structural inspection of .onnx files.

numpy + onnxruntime only (inspection also needs the `onnx` package); the exporter is `onnx_export`.
"""

from __future__ import annotations

import collections
from pathlib import Path

from ..errors import ArtifactError, InputNotFoundError
from .common import METADATA_PREFIX, ArtifactSession, artifact_size, env_threads, require, strip_prefix


class OnnxSession(ArtifactSession):
    """An .onnx artifact in onnxruntime (CPU unless `providers` says otherwise)."""

    target = "onnx"

    def __init__(self, path, providers=None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputNotFoundError(f"ONNX artifact not found: {self.path}")
        ort = require("onnxruntime", purpose="running ONNX artifacts")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = threads or env_threads()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._sess = ort.InferenceSession(str(self.path), options,
                                              providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ArtifactError(f"onnxruntime cannot load {self.path.name}: {first}") from None
        self.metadata = strip_prefix(self._sess.get_modelmeta().custom_metadata_map.items())
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        dims = list(inp.shape)
        if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
            self.static_hw = (dims[2], dims[3])
        self.providers = self._sess.get_providers()

    def _infer(self, x):
        return self._sess.run(None, {self._input: x})[0]


def inspect_onnx(path) -> dict:
    """Structure of an .onnx file: opset, inputs/outputs, op histogram, initializer bytes per dtype."""
    onnx = require("onnx", purpose="inspecting ONNX files")
    path = Path(path)
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
        checker = "passed"
    except onnx.checker.ValidationError as e:
        checker = f"failed: {str(e).splitlines()[0][:200]}"
    ops = collections.Counter(n.op_type for n in model.graph.node)
    by_type: dict[str, int] = collections.Counter()
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        count = 1
        for d in init.dims:
            count *= d
        by_type[str(dtype)] += count * dtype.itemsize
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "format": "onnx",
        "checker": checker,
        "opset": opset,
        "inputs": {i.name: _dims(i) for i in model.graph.input},
        "outputs": {o.name: _dims(o) for o in model.graph.output},
        "ops": dict(sorted(ops.items())),
        "weight_bytes": dict(sorted(by_type.items())),
        "size_bytes": artifact_size(path),
        "metadata": strip_prefix((p.key, p.value) for p in model.metadata_props),
    }


def read_metadata(path) -> dict:
    onnx = require("onnx", purpose="reading ONNX metadata")
    model = onnx.load(str(path), load_external_data=False)
    return strip_prefix((p.key, p.value) for p in model.metadata_props)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


__all__ = ["OnnxSession", "inspect_onnx", "read_metadata", "METADATA_PREFIX"]
