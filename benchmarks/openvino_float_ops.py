"""Where NNCF's activation quantizers go, and what it costs: the OpenVINO INT8 scheme with NNCF's own
CPU placement (a quantizer on every add and product output too), with adds float, with adds and
products float (scheme 2), and the toolkit's (`quantize.openvino.FLOAT_OPS`: also pixel shuffles and
means; then also the image convs `IMAGE_LAYERS`; then also the channel-attention convs), each on the
exactly rewritten student the scheme quantizes (gates split, layer scales folded), per student: PTQ
drop per task (torch fake-quant on `qat_accuracy.py`'s validation pairs) and OpenVINO INT8 latency at
256x256 in alternating rounds.

    python benchmarks/openvino_float_ops.py [--students edge-xs,edge-lat] [--rounds 2] [--threads N]
        [--placements P1,P2] [--out JSON]

Writes benchmarks/results/qat_openvino_float_ops.json by default.
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

ADD, MUL = ("add", "__add__"), ("mul", "__mul__")
# name: (NNCF ignored types, image convs float, channel-attention convs float); None: the toolkit's own
PLACEMENTS = {"nncf_default": ((), False, False), "float_add": (ADD, False, False),
              "float_add_mul": (ADD + MUL, False, False), "float_add_mul_shuffle_mean": (None, False, False),
              "float_image_convs": (None, True, False), "toolkit": (None, True, True)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", default="edge-xs,edge-lat")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--placements", default=",".join(PLACEMENTS),
                    help="a comma list of " + ", ".join(PLACEMENTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "float_ops"))
    ap.add_argument("--out", default=str(HERE / "results" / "qat_openvino_float_ops.json"))
    args = ap.parse_args(argv)
    import torch

    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.quantize import openvino as Q
    from datprl_edge.quantize.inputs import calibration_pairs, validation_pairs
    from datprl_edge.quantize.qat import QATConfig, run_qat
    from datprl_edge.sources import resolve_model

    torch.set_num_threads(1)
    threads = args.threads or default_threads()
    toolkit_ops, toolkit_image, toolkit_pooled = Q.FLOAT_OPS, Q.IMAGE_LAYERS, Q.POOLED_LAYERS
    calib, tasks = calibration_pairs("all")
    val = validation_pairs(tasks, 8, 128)
    doc = {"command": shlex.join(["python", "benchmarks/openvino_float_ops.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": isa_block(), "threads": threads,
           "load_average_start": load_average(), "toolkit_float_ops": list(toolkit_ops),
           "toolkit_image_layers": list(toolkit_image),
           "accuracy": "PTQ (0 QAT steps) on calibration recipe 'all', torch fake-quant, "
                       "validation_pairs(8 per task, 128 px); drop = FP32 - INT8 PSNR, dB", "students": {}}
    paths = []
    for name in [n for n in args.students.split(",") if n]:
        model = resolve_model(f"bundled:{name}")
        entry = doc["students"][name] = {}
        for placement in [p for p in args.placements.split(",") if p]:
            ops, image, pooled = PLACEMENTS[placement]
            ops = toolkit_ops if ops is None else ops
            Q.FLOAT_OPS, Q.IMAGE_LAYERS, Q.POOLED_LAYERS = ops, (toolkit_image if image else ()), pooled
            try:
                torch.manual_seed(0)
                cfg = QATConfig(target="openvino", steps=0, batch_size=4, crop=64)
                res = run_qat(model, cfg, calib, val=val)
                out = Path(args.artifacts) / f"{name}-{placement}"
                rep = export_model(res, ExportConfig(targets=("openvino",), precision="int8", overwrite=True,
                                                     model_name=f"{name}-{placement}"), out)
            finally:
                Q.FLOAT_OPS, Q.IMAGE_LAYERS, Q.POOLED_LAYERS = toolkit_ops, toolkit_image, toolkit_pooled
            drop = res.metrics["drop_db"]
            entry[placement] = {"float_ops": list(ops),
                                "float_image_layers": list(toolkit_image if image else ()),
                                "float_channel_attention": pooled,
                                "drop_db": {k: round(v, 3) for k, v in drop["tasks"].items()},
                                "worst_drop_db": round(drop["worst"], 3), "artifact": rep[0].path.name}
            paths.append(rep[0].path)
    config = BenchConfig(shapes=((256, 256),), threads=threads, warmup=5, seconds=4.0)
    rounds = [{k: v["p50"] for k, v in rd.items()} for rd in alternating_rounds(paths, args.rounds, config)]
    for entry in doc["students"].values():
        for row in entry.values():
            row["p50_ms_rounds"] = [rd[row["artifact"]] for rd in rounds]
            row["p50_ms"] = round(statistics.median(row["p50_ms_rounds"]), 3)
    doc["load_average_end"] = load_average()
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for name, entry in doc["students"].items():
        for placement, row in entry.items():
            ct = row["drop_db"].get("medical/ct_denoise", float("nan"))
            print(f"{name} {placement}: worst drop {row['worst_drop_db']:.3f} dB (CT {ct:.3f}), "
                  f"p50 {row['p50_ms']:.2f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
