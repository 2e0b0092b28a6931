"""OpenVINO target, runtime side: a compiled-model session and a structural inspection of IR files.

numpy + openvino only; the exporter is export/openvino.py. Metadata lives in the model's rt_info
under the key "datprl_edge".
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

from datprl_edge.core.artifacts import (
    CONTEXT_MIX_NAME,
    CONTEXT_NAME,
    CONTEXT_OUT_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    artifact_size,
    require,
)
from datprl_edge.core.errors import ArtifactError, ConfigError, InputNotFoundError
from datprl_edge.core.host import cpu_info, default_threads, int8_pairs_saturate
from datprl_edge.runtime.session import ArtifactSession, check_profile_shape, env_threads, time_table

RT_INFO_KEY = "datprl_edge"
# Largest int8 weight magnitude whose product pairs fit int16 on CPUs without VNNI (core.host)
SAFE_INT8_WEIGHT = 64


class OpenVINOSession(ArtifactSession):
    """An OpenVINO IR (.xml + .bin) compiled for `device`.

    `inference_precision` defaults to "f32": some CPUs otherwise run FP32 IRs in bf16, which is
    a device choice, not the artifact's numbers. Pass None to keep the device default.

    `static` (default): an IR with dynamic height/width is reshaped to each input size it meets
    and compiled for it (the last `STATIC_CACHE` sizes are kept; tiles all share one). The CPU
    plugin switches its eltwise fusion off for dynamic shapes: measured on edge-xs INT8 (NNCF) at
    256x256, 1 thread, 2-core EPYC under load, 75.9 -> 40.1 ms p50, Eltwise nodes 53 -> 3,
    Reorders 34 -> 11; FP32 124.8 -> 95.0 ms. `static=False` compiles the dynamic graph once.
    """

    target = "openvino"
    STATIC_CACHE = 4

    def __init__(self, path, device: str = "CPU", inference_precision: str | None = "f32",
                 threads: int | None = None, static: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputNotFoundError(f"OpenVINO artifact not found: {self.path}")
        if not self.path.with_suffix(".bin").is_file():
            weights = self.path.with_suffix(".bin").name
            raise ArtifactError(f"{self.path.name} needs its weights file {weights} beside it")
        ov = require("openvino", purpose="running OpenVINO artifacts")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ArtifactError(f"OpenVINO cannot read {self.path.name}: {first}") from None
        self.metadata = rt_metadata(model)
        flags = cpu_info()["flags"] if self.metadata.get("precision") == "int8" and device == "CPU" else ()
        if int8_pairs_saturate(flags):  # the weight scan only where it matters
            note = saturation_warning(self.path.name, int8_weight_peak(model), flags)
            if note:
                print(f"datprl-edge: warning: {note}", file=sys.stderr)
        inputs, outputs = _port_names(model.inputs), _port_names(model.outputs)
        self._check_io(inputs, outputs)
        self._input = INPUT_NAME if INPUT_NAME in inputs else 0
        self._output = OUTPUT_NAME if OUTPUT_NAME in outputs else 0
        self._context_inputs = [n for n in (CONTEXT_NAME, CONTEXT_MIX_NAME) if n in inputs]
        shape = model.input(self._input).get_partial_shape()
        if shape.is_static:
            dims = [d.get_length() for d in shape]
            self.static_hw = (dims[2], dims[3])
        config = {}
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        threads = threads or env_threads()
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.device = device
        self._core, self._model, self._config = core, model, config
        self.reshapes = bool(static) and not shape.is_static
        self._by_size: dict = {}  # (H, W) -> (compiled model, infer request), most recent last
        if not self.reshapes:
            self._compiled, self._request = self._compile(model)

    def _compile(self, model):
        try:
            compiled = self._core.compile_model(model, self.device, self._config)
        except RuntimeError as e:  # the plugin's graph passes can refuse a graph they read fine
            detail = [ln for ln in str(e).splitlines() if ln.strip()]
            raise ArtifactError(f"OpenVINO cannot compile {self.path.name} for {self.device}: "
                                f"{(detail[-1] if detail else type(e).__name__)[:200]}") from None
        return compiled, compiled.create_infer_request()

    def _for_size(self, x):
        """The compiled model and request for x's size (a static reshape of a dynamic IR)."""
        if not self.reshapes:
            return self._compiled, self._request
        key = tuple(int(d) for d in x.shape)
        if key not in self._by_size:
            model = self._model.clone()
            model.reshape({model.input(self._input): list(key)})
            self._by_size[key] = self._compile(model)
            while len(self._by_size) > self.STATIC_CACHE:
                self._by_size.pop(next(iter(self._by_size)))
        else:
            self._by_size[key] = self._by_size.pop(key)  # most recently used last
        self._compiled, self._request = self._by_size[key]
        return self._compiled, self._request

    def _infer(self, x):
        compiled, request = self._for_size(x)
        feed = {self._input: x}
        feed.update((name, self._zero_context()) for name in self._context_inputs)  # no optional inputs here
        return request.infer(feed)[compiled.output(self._output)].copy()

    def _infer_context(self, x, context, context_mix):
        compiled, request = self._for_size(x)
        result = request.infer({self._input: x, CONTEXT_NAME: context, CONTEXT_MIX_NAME: context_mix})
        return (result[compiled.output(self._output)].copy(),
                result[compiled.output(CONTEXT_OUT_NAME)].copy())

    def runtime_graph(self, shape=None) -> dict:
        """Node types of the graph the plugin runs ({layerType: count}) for an input `shape`
        ((N, C, H, W); needed when the IR is reshaped per size)."""
        if self.reshapes:
            if shape is None:
                raise ConfigError("runtime_graph needs an input shape: this session compiles per size")
            import numpy as np

            compiled, _ = self._for_size(np.zeros(shape, np.float32))
        else:
            compiled = self._compiled
        ops = collections.Counter(op.get_rt_info()["layerType"].astype(str)
                                  for op in compiled.get_runtime_model().get_ops())
        return dict(sorted(ops.items()))


def _port_names(ports) -> list[str]:
    return [name for port in ports for name in port.get_names()]


def rt_metadata(model) -> dict:
    info = model.get_rt_info()
    if RT_INFO_KEY not in info:
        return {}
    return {k: model.get_rt_info([RT_INFO_KEY, k]).astype(str) for k in dict(info[RT_INFO_KEY])}


def read_metadata(path) -> dict:
    ov = require("openvino", purpose="reading OpenVINO metadata")
    return rt_metadata(ov.Core().read_model(str(path)))


def available_devices() -> list[str]:
    return list(require("openvino", purpose="listing OpenVINO devices").Core().available_devices)


def bench_options(job: dict) -> dict:
    """OpenVINOSession options for one `bench` measurement (job: threads, device, inference_precision)."""
    precision = job.get("inference_precision", "f32")
    return {"threads": job["threads"], "device": checked_device(str(job.get("device") or "CPU")),
            "inference_precision": None if precision in (None, "default") else precision}


def checked_device(device: str) -> str:
    devices = available_devices()
    key = device.upper()
    if key in devices or any(d.split(".")[0] == key for d in devices) or key.startswith(("AUTO", "HETERO")):
        return key
    raise ConfigError(f"OpenVINO does not list device {device} here; it lists {', '.join(devices)}")


def bench_details(session, options: dict) -> dict:
    """What a `bench` result records about the runtime it ran in, besides its name and version."""
    import openvino as ov

    core, device = ov.Core(), options["device"]
    compiled = getattr(session, "_compiled", None)
    details = {"device": device, "build": ov.get_version(),
               "device_name": _safe(lambda: core.get_property(device.split(":")[0], "FULL_DEVICE_NAME")),
               "inference_precision_hint_requested": options["inference_precision"] or "device default",
               "shapes": ("static: the dynamic IR reshaped to the input size, compiled at its first "
                          "inference" if getattr(session, "reshapes", False) else "as the IR declares them")}
    if compiled is not None:
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
            details[key.lower()] = _safe(lambda k=key: _property_text(compiled.get_property(k)))
    return details


def _property_text(value) -> str:
    # element types (INFERENCE_PRECISION_HINT) print as "<Type: 'float32'>"; their name is "f32"
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _safe(fn):
    try:
        return fn()
    except Exception:  # a property this device or version does not have
        return None


def int8_weight_peak(model) -> int | None:
    """Largest magnitude among the IR's int8 weights of dense convolutions and matmuls (their u8 x s8
    kernels add product pairs; depthwise kernels widen first); None without any."""
    import numpy as np

    peaks = [int(np.abs(op.get_data().astype(np.int16)).max()) for op in model.get_ops()
             if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "i8"
             and op.get_byte_size() and _consumer_kind(op) in ("Convolution", "MatMul")]
    return max(peaks) if peaks else None


def _consumer_kind(op, depth: int = 5) -> str | None:
    """The first compute op a constant feeds through its dequantization (Convert, Subtract, Multiply,
    Reshape), or None."""
    frontier = [op]
    for _ in range(depth):
        frontier = [t.get_node() for n in frontier for out in n.outputs() for t in out.get_target_inputs()]
        for node in frontier:
            if node.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
                return node.get_type_name()
    return None


def saturation_warning(name: str, peak: int | None, flags) -> str | None:
    """The warning for an INT8 IR whose weights can clip int16 pair sums on this CPU, or None."""
    if peak is None or peak <= SAFE_INT8_WEIGHT or not int8_pairs_saturate(flags):
        return None
    return (f"{name} has int8 weights up to {peak}; this CPU has no VNNI, so its int8 kernels can clip "
            f"sums (int16 pairs) and the output may differ from what was verified; re-export it with "
            f"7-bit weights (this toolkit's OpenVINO scheme 4 does)")


def profile(path, shape=(256, 256), iters: int = 5, threads: int | None = None, top: int = 12) -> dict:
    """Where the time goes: the CPU plugin's per-layer counters over `iters` runs at `shape` (H, W),
    summed by layer type, by the kernel it picked (e.g. `jit_avx2_I8` vs `brgconv_avx2_f32`) and by
    layer. Compiled as `bench` compiles it (INFERENCE_PRECISION_HINT f32) plus PERF_COUNT; context
    inputs get zeros (the model's own behaviour)."""
    import numpy as np

    ov = require("openvino", purpose="profiling OpenVINO IR")
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"artifact not found: {path}")
    core = ov.Core()
    model = core.read_model(str(path))
    channels = model.inputs[0].get_partial_shape()[1]
    channels = channels.get_length() if channels.is_static else 3
    if model.inputs[0].get_partial_shape().is_dynamic:  # sessions compile per input size (static graph)
        model.reshape({model.inputs[0]: [1, channels, *shape]})
    else:
        dims = [d.get_length() for d in model.inputs[0].get_partial_shape()]
        check_profile_shape(path.name, dims[2:], shape)
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True,
              "INFERENCE_NUM_THREADS": threads or default_threads()}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    feed = {0: np.random.default_rng(0).random((1, channels, *shape), dtype=np.float32)}
    feed.update({i: np.zeros(list(p.get_shape()), np.float32) for i, p in enumerate(compiled.inputs) if i})
    request.infer(feed)  # first run: one-off allocations
    by_type, by_exec, by_layer = collections.Counter(), collections.Counter(), collections.Counter()
    layer_info = {}
    for _ in range(iters):
        request.infer(feed)
        for p in request.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            us = p.real_time.total_seconds() * 1e6
            by_type[p.node_type] += us
            by_exec[p.exec_type] += us
            by_layer[p.node_name] += us
            layer_info[p.node_name] = (p.node_type, p.exec_type)
    total = sum(by_type.values()) or 1
    int8 = sum(v for k, v in by_exec.items() if any(t in k.lower() for t in ("i8", "u8")))
    return {
        "artifact": path.name,
        "shape": list(shape),
        "iterations": iters,
        "sum_of_layers_ms": round(total / iters / 1e3, 3),
        "int8_kernel_time_share": round(int8 / total, 4),
        "by_layer_type": time_table(by_type, iters, total, top),
        "by_kernel": time_table(by_exec, iters, total, top),
        "slowest_layers": [dict(row, type=layer_info[row["name"]][0], kernel=layer_info[row["name"]][1])
                           for row in time_table(by_layer, iters, total, top)],
        "compiled_with": {k: str(v) for k, v in config.items()},
    }


def inspect_openvino(path) -> dict:
    """Structure of an IR: inputs/outputs, op histogram, constant bytes per element type."""
    ov = require("openvino", purpose="inspecting OpenVINO IR")
    path = Path(path)
    model = ov.Core().read_model(str(path))
    ops = collections.Counter(op.get_type_name() for op in model.get_ops())
    const_bytes: dict[str, int] = collections.Counter()
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            et = op.get_output_element_type(0)
            const_bytes[et.get_type_name()] += op.get_byte_size()
    return {
        "format": "openvino-ir",
        "inputs": {next(iter(i.get_names()), "?"): str(i.get_partial_shape()) for i in model.inputs},
        "outputs": {next(iter(o.get_names()), "?"): str(o.get_partial_shape()) for o in model.outputs},
        "ops": dict(sorted(ops.items())),
        "weight_bytes": dict(sorted(const_bytes.items())),
        "int8_weight_peak": int8_weight_peak(model),
        "size_bytes": artifact_size(path),
        "metadata": rt_metadata(model),
    }
