"""What the two profilers (profile_onnxruntime.py, profile_openvino.py) share: the command line.
The profiles themselves are `datprl_edge.runtime.{onnx,openvino}.profile` (also `datprl-edge inspect
ARTIFACT`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datprl_edge.core.shapes import parse_hw  # noqa: E402


def main(profile, description: str, argv=None) -> int:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("artifact")
    p.add_argument("--shape", default="256x256")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    h, w = parse_hw(args.shape, "--shape")
    print(json.dumps(profile(args.artifact, (h, w), args.iters, args.threads), indent=2))
    return 0
