"""ONNX target, runtime side: an onnxruntime session and a structural inspection of .onnx files.

numpy + onnxruntime only (inspection also needs the `onnx` package); the exporter is export/onnx.py.
"""

from __future__ import annotations

import collections
from pathlib import Path

from datprl_edge.core.artifacts import (
    CONTEXT_MIX_NAME,
    CONTEXT_NAME,
    CONTEXT_OUT_NAME,
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    artifact_size,
    require,
    strip_prefix,
)
from datprl_edge.core.errors import ArtifactError, ConfigError, InputNotFoundError, MissingBackendError
from datprl_edge.core.host import default_threads
from datprl_edge.runtime.session import ArtifactSession, check_profile_shape, env_threads, time_table


class OnnxSession(ArtifactSession):
    """An .onnx artifact in onnxruntime (CPU unless `providers` says otherwise)."""

    target = "onnx"

    # onnxruntime's x86 switch from U8S8 kernels (int16 pair sums without VNNI) to exact U8U8 ones
    EXACT_INT8_OPTION = "session.x64quantprecision"

    def __init__(self, path, providers=None, threads: int | None = None, exact_int8: bool = False,
                 shared_threads: bool = False):
        self.path = Path(path)
        self._threads, self._providers, self.exact_int8 = threads, providers, exact_int8
        if not self.path.is_file():
            raise InputNotFoundError(f"ONNX artifact not found: {self.path}")
        ort = require("onnxruntime", purpose="running ONNX artifacts")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = threads or env_threads()
        if shared_threads:
            # One process-wide pool for every session that asks (paired benchmarks): a session's pool
            # spin-waits after each run and would take the cores from the next session's run.
            _global_pool(ort, threads or default_threads())
            options.use_per_session_threads = False
        elif threads:
            options.intra_op_num_threads = threads
        if exact_int8:
            options.add_session_config_entry(self.EXACT_INT8_OPTION, "1")
        self._sess = _load(ort, self.path, options, providers)
        self.metadata = strip_prefix(self._sess.get_modelmeta().custom_metadata_map.items())
        required = [i.name for i in self._sess.get_inputs()]
        # inputs with a default value (the context of toolkit exports) are overridable initializers
        inputs = required + [i.name for i in self._sess.get_overridable_initializers()]
        outputs = [o.name for o in self._sess.get_outputs()]
        self._check_io(inputs, outputs)
        self._input = INPUT_NAME if INPUT_NAME in inputs else required[0]
        self._output = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self._zero_fed = [n for n in (CONTEXT_NAME, CONTEXT_MIX_NAME) if n in required]
        inp = next(i for i in self._sess.get_inputs() if i.name == self._input)
        dims = list(inp.shape)
        if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
            self.static_hw = (dims[2], dims[3])
        self.providers = self._sess.get_providers()

    def _infer(self, x):
        feed = {self._input: x}
        feed.update((name, self._zero_context()) for name in self._zero_fed)  # inputs without a default
        return self._sess.run([self._output], feed)[0]

    def _infer_context(self, x, context, context_mix):
        feed = {self._input: x, CONTEXT_NAME: context, CONTEXT_MIX_NAME: context_mix}
        out, own = self._sess.run([self._output, CONTEXT_OUT_NAME], feed)
        return out, own

    def exact_int8_twin(self):
        if self.exact_int8:
            return None
        return OnnxSession(self.path, providers=self._providers, threads=self._threads, exact_int8=True)


def _load(ort, path: Path, options, providers=None):
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"onnxruntime cannot load {path.name}: {first}") from None


def bench_options(job: dict) -> dict:
    """OnnxSession options for one `bench` measurement (job: threads, device; `artifacts` when paired:
    the sessions then share one thread pool)."""
    return {"threads": job["threads"], "providers": providers_for(str(job.get("device") or "CPU")),
            "shared_threads": bool(job.get("artifacts"))}


_GLOBAL_POOL: list = []


def _global_pool(ort, threads: int) -> None:
    """Create onnxruntime's global thread pools once per process, with `threads` intra-op threads."""
    if _GLOBAL_POOL:
        if _GLOBAL_POOL[0] != threads:
            raise ConfigError(f"onnxruntime's shared thread pool has {_GLOBAL_POOL[0]} threads; "
                              f"a session asked for {threads}")
        return
    from onnxruntime.capi import _pybind_state

    _pybind_state.set_global_thread_pool_sizes(threads, 1)
    _GLOBAL_POOL.append(threads)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device.upper() == "CPU":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    wanted = {"GPU": ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider"),
              "NPU": ("QNNExecutionProvider", "VitisAIExecutionProvider", "OpenVINOExecutionProvider")}
    for name in wanted.get(device.upper(), ()):
        if name in available:
            return [name, "CPUExecutionProvider"]
    raise ConfigError(f"onnxruntime here has no {device} provider (available: {', '.join(available)}); "
                      "install a GPU/NPU build of onnxruntime or use --device CPU")


def bench_details(session, options: dict) -> dict:
    """What a `bench` result records about the runtime it ran in, besides its name and version."""
    first = options["providers"][0]
    return {"device": "CPU" if first == "CPUExecutionProvider" else first,
            "providers": list(getattr(session, "providers", options["providers"])),
            "intra_op_num_threads": options["threads"],
            "thread_pool": "global, shared by the paired sessions" if options.get("shared_threads")
            else "per session"}


INTEGER_CONVS = ("QLinearConv", "ConvInteger")
FLOAT_CONVS = ("Conv", "FusedConv", "NchwcConv", "ConvTranspose")


def runtime_kernels(path, threads: int = 1) -> dict:
    """What onnxruntime's CPU provider runs after its graph optimizations (QDQ fusion, layout
    transforms): the op histogram of the optimized graph and its integer vs float convolutions."""
    import tempfile

    require("onnx", purpose="inspecting ONNX files")
    ort = require("onnxruntime", purpose="running ONNX artifacts")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        _load(ort, Path(path), options)
        ops = collections.Counter(_op_histogram(options.optimized_model_filepath))
    return {"ops": dict(sorted(ops.items())),
            "integer_convs": sum(ops[k] for k in INTEGER_CONVS),
            "float_convs": sum(ops[k] for k in FLOAT_CONVS)}


def profile(path, shape=(256, 256), iters: int = 5, threads: int | None = None, top: int = 12) -> dict:
    """Where the time goes: onnxruntime's profiler over `iters` + 1 runs at `shape` (H, W), summed by
    op type and by node, and the op types of the optimized graph (whether QuantizeLinear /
    DequantizeLinear pairs became integer kernels such as QLinearConv). Context inputs get zeros."""
    import json
    import tempfile

    import numpy as np

    ort = require("onnxruntime", purpose="profiling ONNX artifacts")
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"artifact not found: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        sess = _load(ort, path, options)
        inputs = sess.get_inputs()
        check_profile_shape(path.name, inputs[0].shape[2:], shape)
        channels = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else 3
        feed = {inputs[0].name: np.random.default_rng(0).random((1, channels, *shape), dtype=np.float32)}
        feed.update({i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                     for i in inputs[1:]})
        for _ in range(iters + 1):
            sess.run(None, feed)
        with open(sess.end_profiling(), encoding="utf-8") as f:
            trace = json.load(f)
        optimized = _op_histogram(options.optimized_model_filepath)
    by_type, by_node = collections.Counter(), collections.Counter()
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        by_type[event.get("args", {}).get("op_name", "?")] += event["dur"]
        by_node[event["name"][: -len("_kernel_time")]] += event["dur"]
    total, runs = sum(by_type.values()) or 1, iters + 1
    return {"artifact": path.name, "shape": list(shape), "iterations": runs,
            "sum_of_nodes_ms": round(total / runs / 1e3, 3),
            "by_op_type": time_table(by_type, runs, total, top),
            "slowest_nodes": time_table(by_node, runs, total, top), "optimized_graph_ops": optimized,
            "threads": options.intra_op_num_threads}


def _op_histogram(path) -> dict:
    """{op type: count} of an .onnx file, most frequent first; {} without the onnx package."""
    try:
        import onnx
    except ImportError:  # a device install: onnxruntime without the onnx package
        return {}
    model = onnx.load(path, load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def inspect_onnx(path) -> dict:
    """Structure of an .onnx file: opset, inputs/outputs, op histogram, initializer bytes per dtype.
    Without the `onnx` package (a device install) onnxruntime gives inputs, outputs and metadata."""
    path = Path(path)
    try:
        onnx = require("onnx", purpose="inspecting ONNX files")
    except MissingBackendError:
        return _inspect_with_onnxruntime(path)
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


def _inspect_with_onnxruntime(path: Path) -> dict:
    ort = require("onnxruntime", purpose="inspecting ONNX files")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = _load(ort, path, options)
    return {
        "format": "onnx",
        "inputs": {i.name: list(i.shape) for i in sess.get_inputs()},
        "outputs": {o.name: list(o.shape) for o in sess.get_outputs()},
        "ops": {},
        "note": "op histogram and weight bytes need the onnx package (pip install onnx)",
        "size_bytes": artifact_size(path),
        "metadata": strip_prefix(sess.get_modelmeta().custom_metadata_map.items()),
    }


def read_metadata(path) -> dict:
    onnx = require("onnx", purpose="reading ONNX metadata")
    model = onnx.load(str(path), load_external_data=False)
    return strip_prefix((p.key, p.value) for p in model.metadata_props)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


__all__ = ["OnnxSession", "inspect_onnx", "read_metadata", "METADATA_PREFIX"]
