"""What the ONNX INT8 scheme keeps float between convs, and what it costs: same-shape adds and products
quantized (scheme 3, onnxruntime fuses both into QLinearAdd / QLinearMul), residual and skip sums float
(the toolkit's scheme 4, `quantize.onnx.FLOAT_ELTWISE`), and gate products float too; per variant the
PTQ drop per task (torch fake-quant on `qat_accuracy.py`'s validation pairs) and the onnxruntime INT8
latency of the bundled student at 256x256 in alternating rounds.

    python benchmarks/onnx_float_eltwise.py [--student edge-xs] [--rounds 5] [--threads N]

Writes benchmarks/results/qat_onnx_float_eltwise.json.
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
from datprl_edge.core.host import default_threads, isa_block, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402

VARIANTS = {"quantized_add_mul": (), "float_add": ("add",), "float_add_mul": ("add", "mul")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="edge-xs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--val-count", type=int, default=16)
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "onnx_eltwise"))
    ap.add_argument("--out", default=str(HERE / "results" / "qat_onnx_float_eltwise.json"))
    args = ap.parse_args(argv)
    import torch

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.quantize import onnx as Q
    from datprl_edge.quantize.inputs import calibration_pairs, validation_pairs
    from datprl_edge.quantize.qat import QATConfig, run_qat
    from datprl_edge.sources import resolve_model

    torch.set_num_threads(1)
    threads = args.threads or default_threads()
    toolkit = Q.FLOAT_ELTWISE
    calib, tasks = calibration_pairs("all")
    val = validation_pairs(tasks, args.val_count, 128)
    model = resolve_model(f"bundled:{args.student}")
    doc = {"command": shlex.join(["python", "benchmarks/onnx_float_eltwise.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": isa_block(), "threads": threads,
           "load_average_start": load_average(), "student": f"bundled:{args.student}",
           "toolkit_float_eltwise": list(toolkit),
           "accuracy": f"PTQ (0 QAT steps) on calibration recipe 'all', torch fake-quant, "
                       f"validation_pairs({args.val_count} per task, 128 px); drop = FP32 - INT8 PSNR, dB",
           "variants": {}}
    paths = {}
    for name, eltwise in VARIANTS.items():
        Q.FLOAT_ELTWISE = eltwise
        try:
            torch.manual_seed(0)
            res = run_qat(model, QATConfig(target="onnx", steps=0), calib, val=val)
            cfg = ExportConfig(targets=("onnx",), precision="int8", overwrite=True,
                               model_name=f"{args.student}-{name}")
            rep = export_model(res, cfg, Path(args.artifacts) / name)
        finally:
            Q.FLOAT_ELTWISE = toolkit
        drop = res.metrics["drop_db"]
        doc["variants"][name] = {"float_eltwise": list(eltwise), "toolkit": eltwise == toolkit,
                                 "drop_db": {k: round(v, 3) for k, v in drop["tasks"].items()},
                                 "worst_drop_db": round(drop["worst"], 3), "artifact": rep[0].path.name}
        paths[name] = rep[0].path
    config = BenchConfig(shapes=((256, 256),), threads=threads, warmup=5, seconds=3.0)
    rounds = [{k: v["p50"] for k, v in rd.items()}
              for rd in alternating_rounds(list(paths.values()), args.rounds, config)]
    for row in doc["variants"].values():
        row["p50_ms_rounds"] = [rd[row["artifact"]] for rd in rounds]
        row["p50_ms"] = round(statistics.median(row["p50_ms_rounds"]), 3)
    doc["load_average_end"] = load_average()
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for name, row in doc["variants"].items():
        ct = row["drop_db"].get("medical/ct_denoise", float("nan"))
        print(f"{name}: worst drop {row['worst_drop_db']:.3f} dB (CT {ct:.3f}), "
              f"onnxruntime p50 {row['p50_ms']:.2f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
