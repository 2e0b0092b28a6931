"""Where the time goes in an ONNX artifact: onnxruntime's profiler, summed by op type and by node.

    python benchmarks/profile_onnxruntime.py ARTIFACT.onnx [--shape 256x256] [--iters 5] [--threads N]

numpy + onnxruntime only. Also lists the op types of the optimized graph, which shows whether
QuantizeLinear/DequantizeLinear pairs were fused into integer kernels (QLinearConv, ...) or run
as separate float ops. Prints JSON; `profile(...)` returns the same dict.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_common  # noqa: E402

from datprl_edge.runtime.onnx import profile  # noqa: E402,F401  (the headline suites import it from here)


def main(argv=None) -> int:
    return profile_common.main(profile, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
