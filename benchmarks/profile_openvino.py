"""Where the time goes in an OpenVINO artifact: per-layer performance counters, summed by layer
type and by the kernel OpenVINO picked (exec type, e.g. `brgconv_avx512_I8` vs `..._FP32`).

    python benchmarks/profile_openvino.py ARTIFACT.xml [--shape 256x256] [--iters 5] [--threads N]

numpy + openvino only. Compiled as the benchmark compiles it (INFERENCE_PRECISION_HINT f32) plus
PERF_COUNT. Prints JSON; `profile(...)` returns the same dict for the headline suites.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_common  # noqa: E402

from datprl_edge.runtime.openvino import profile  # noqa: E402,F401  (the headline suites import it from here)


def main(argv=None) -> int:
    return profile_common.main(profile, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
