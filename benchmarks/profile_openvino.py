"""Where the time goes in an OpenVINO artifact: per-layer performance counters, summed by layer
type and by the kernel OpenVINO picked (exec type, e.g. `brgconv_avx512_I8` vs `..._FP32`).

    python benchmarks/profile_openvino.py ARTIFACT.xml [--shape 256x256] [--iters 5] [--threads N]

numpy + openvino only. Compiled as the benchmark compiles it (INFERENCE_PRECISION_HINT f32) plus
PERF_COUNT. Prints JSON; `profile(...)` returns the same dict for the headline suites.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_common  # noqa: E402


def profile(path: str, shape=(256, 256), iters: int = 5, threads: int | None = None, top: int = 12) -> dict:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    if model.inputs[0].get_partial_shape().is_dynamic:  # sessions compile per input size (static graph)
        model.reshape({model.inputs[0]: [1, 3, *shape]})
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True,
              "INFERENCE_NUM_THREADS": threads or profile_common.default_threads()}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, *shape), dtype=np.float32)
    feed = {0: x}  # context inputs (routing, statistics): zeros, as a tile with no given context
    feed.update({i: np.zeros(list(p.get_shape()), np.float32) for i, p in enumerate(compiled.inputs) if i})
    request.infer(feed)  # first run: one-off allocations
    by_type: collections.Counter = collections.Counter()
    by_exec: collections.Counter = collections.Counter()
    by_layer: collections.Counter = collections.Counter()
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
    total = sum(by_type.values())

    def table(counter, n):
        return profile_common.time_table(counter, iters, total, n)

    int8_share = sum(v for k, v in by_exec.items() if any(t in k.lower() for t in ("i8", "u8"))) / total
    return {
        "artifact": os.path.basename(path),
        "shape": list(shape),
        "iterations": iters,
        "sum_of_layers_ms": round(total / iters / 1e3, 3),
        "int8_kernel_time_share": round(int8_share, 4),
        "by_layer_type": table(by_type, top),
        "by_kernel": table(by_exec, top),
        "slowest_layers": [dict(row, type=layer_info[row["name"]][0], kernel=layer_info[row["name"]][1])
                           for row in table(by_layer, top)],
        "compiled_with": {k: str(v) for k, v in config.items()},
    }



def main(argv=None) -> int:
    return profile_common.main(profile, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
