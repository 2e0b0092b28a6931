"""What keeping whole blocks float costs in onnxruntime: the shipped ONNX INT8 weights against the
all-int8 graph of the same student (PTQ, same scheme) and the FP32 export, timed at 256x256 in
alternating rounds (latency does not depend on QAT steps, so the all-int8 graph is a PTQ one).

    python benchmarks/onnx_float_blocks.py [--rounds 6] [--threads 2]

Writes benchmarks/results/onnx_float_blocks_latency.json (p50 per round, ratios per round, medians).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run_headline import alternating_rounds  # noqa: E402

from datprl_edge.bench.driver import BenchConfig  # noqa: E402
from datprl_edge.core.host import isa_block, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="edge-xs")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "onnx_float_blocks"))
    ap.add_argument("--out", default=str(HERE / "results" / "onnx_float_blocks_latency.json"))
    args = ap.parse_args(argv)
    import torch

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.models.loading import WEIGHTS_DIR
    from datprl_edge.quantize.inputs import calibration_pairs, validation_pairs
    from datprl_edge.quantize.qat import QATConfig, load_qat, run_qat
    from datprl_edge.sources import resolve_model

    torch.set_num_threads(args.threads)
    model = resolve_model(f"bundled:{args.student}")
    shipped_path = WEIGHTS_DIR / f"{args.student}-int8-onnx.safetensors"
    shipped = load_qat(shipped_path)
    calib, tasks = calibration_pairs("all")
    all_int8 = run_qat(model, QATConfig(target="onnx", steps=0), calib,
                       val=validation_pairs(tasks[:1], 2, 64))
    out = Path(args.artifacts)
    paths = {}
    for name, source, precision in (("shipped", shipped, "int8"), ("all_int8", all_int8, "int8"),
                                    ("fp32", model, "fp32")):
        cfg = ExportConfig(targets=("onnx",), precision=precision, overwrite=True,
                           model_name=f"{args.student}-{name}")
        paths[name] = export_model(source, cfg, out / name)[0].path
    doc = {"command": shlex.join(["python", "benchmarks/onnx_float_blocks.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": isa_block(),
           "threads": args.threads,
           "load_average_start": load_average(), "shape": "256x256",
           "shipped": {"weights": shipped_path.name, "float_layers": list(shipped.float_layers)},
           "bytes": {k: p.stat().st_size for k, p in paths.items()}}
    config = BenchConfig(shapes=((256, 256),), threads=args.threads, warmup=5, seconds=3.0)
    names = {p.name: k for k, p in paths.items()}
    rounds = []
    for rd in alternating_rounds(list(paths.values()), args.rounds, config):
        ms = {names[a]: round(v["p50"], 3) for a, v in rd.items()}
        rounds.append({"p50_ms": ms, "shipped_over_all_int8": round(ms["shipped"] / ms["all_int8"], 3),
                       "fp32_over_shipped": round(ms["fp32"] / ms["shipped"], 3),
                       "fp32_over_all_int8": round(ms["fp32"] / ms["all_int8"], 3)})
    doc["rounds"] = rounds
    doc["median_of_rounds"] = {k: statistics.median(r[k] for r in rounds)
                               for k in ("shipped_over_all_int8", "fp32_over_shipped", "fp32_over_all_int8")}
    doc["load_average_end"] = load_average()
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["median_of_rounds"]), f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
