"""Where the time goes in an ONNX artifact: onnxruntime's profiler, summed by op type and by node.

    python benchmarks/profile_onnxruntime.py ARTIFACT.onnx [--shape 256x256] [--iters 5] [--threads N]

numpy + onnxruntime only. Also lists the op types of the optimized graph, which shows whether
QuantizeLinear/DequantizeLinear pairs were fused into integer kernels (QLinearConv, ...) or run
as separate float ops. Prints JSON; `profile(...)` returns the same dict.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_common  # noqa: E402


def profile(path: str, shape=(256, 256), iters: int = 5, threads: int | None = None, top: int = 12) -> dict:
    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.intra_op_num_threads = threads or profile_common.default_threads()
        options.log_severity_level = 3
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).random((1, 3, *shape), dtype=np.float32)
        sess.run(None, {name: x})
        for _ in range(iters):
            sess.run(None, {name: x})
        trace = json.load(open(sess.end_profiling()))
        optimized_ops = _graph_ops(options.optimized_model_filepath)
    by_type: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        by_type[op] += event["dur"]
        by_node[event["name"][: -len("_kernel_time")]] += event["dur"]
    total = sum(by_type.values()) or 1
    runs = iters + 1

    def table(counter):
        return profile_common.time_table(counter, runs, total, top)

    return {"artifact": os.path.basename(path), "shape": list(shape), "iterations": runs,
            "sum_of_nodes_ms": round(total / runs / 1e3, 3), "by_op_type": table(by_type),
            "slowest_nodes": table(by_node), "optimized_graph_ops": optimized_ops,
            "threads": options.intra_op_num_threads}


def _graph_ops(path) -> dict:
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load(path, load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())



def main(argv=None) -> int:
    return profile_common.main(profile, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
