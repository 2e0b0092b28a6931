"""Does the OpenVINO INT8 artifact compute what its fake-quant model computes on this CPU? NNCF's
overflow fix (7-bit weights) on the first quantized conv only (NNCF's default) against every conv
(`quantize.openvino.OVERFLOW_FIX`), post-training quantization of each student, exported with
`datprl-edge export` and checked against the fake-quant torch model on val images.

    python benchmarks/openvino_overflow.py [--members edge-lat,edge-xs] [--images 8] [--size 256]
        [--threads 2] [-o benchmarks/results/openvino_overflow.json]

Without VNNI the CPU plugin's u8 x s8 kernels add pairs of products in saturating int16, so an
artifact with full-range int8 weights can differ from its fake-quant model where one with 7-bit
weights cannot; with VNNI both should match to the same PSNR. The torch-side worst-task drop against
the FP32 model (PTQ, `--val-count` pairs per task) shows what the 7-bit weights cost. Records the ISA.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from datprl_edge.core.host import isa_block  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402

SETTINGS = ("first_layer_only", "enable")


def run(member: str, setting: str, work: Path, args) -> dict:
    from datprl_edge.cli.main import main as cli
    from datprl_edge.quantize import openvino as ov
    from datprl_edge.quantize.qat import load_qat

    ov.OVERFLOW_FIX = setting
    ckpt, out = work / f"{member}-{setting}.safetensors", work / f"{member}-{setting}"
    t0 = time.perf_counter()
    rc = cli(["qat", f"bundled:{member}", "--target", "openvino", "--calib", "all", "--steps", "0",
              "--val-count", str(args.val_count), "-o", str(ckpt)])
    if rc:
        raise SystemExit(f"qat {member} {setting} failed ({rc})")
    metrics = load_qat(str(ckpt)).metrics
    rc = cli(["export", str(ckpt), "--target", "openvino", "--precision", "int8", "--verify-images",
              str(args.images), "--verify-size", f"{args.size}x{args.size}", "-o", str(out)])
    if rc:
        raise SystemExit(f"export {member} {setting} failed ({rc})")
    report = json.loads(next(out.glob("*_openvino_int8.json")).read_text())
    v = report["verification"]
    return {"overflow_fix": setting, "vs_fake_quant_psnr_db_worst": v["psnr_db"],
            "vs_fake_quant_psnr_db_mean": v["psnr_db_mean"], "max_abs_diff": v["max_abs_diff"],
            "images": v["images"], "ptq_drop_db": _drops(metrics),
            "seconds": round(time.perf_counter() - t0, 1)}


def _drops(metrics: dict) -> dict | None:
    drops = (metrics.get("drop_db") or {}).get("tasks")
    if not drops:
        return None
    worst = max(drops, key=drops.get)
    return {"worst_task": worst, "worst_db": round(drops[worst], 4),
            "tasks": {t: round(d, 4) for t, d in drops.items()},
            "int8_vs_fp32_output_psnr_db": {t: round(v, 2) for t, v in metrics["psnr_int8_vs_fp32"].items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="edge-lat,edge-xs")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--val-count", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=str(HERE / "results" / "openvino_overflow.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/openvino_overflow.py", *(argv or sys.argv[1:])])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for member in args.members.split(","):
            rows[member] = [run(member, s, Path(tmp), args) for s in SETTINGS]
    doc = {"suite": "openvino_overflow", "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "environment": isa_block(), "settings": vars(args), "members": rows}
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for member, rs in rows.items():
        for r in rs:
            print(f"{member:9} {r['overflow_fix']:17} vs fake-quant worst "
                  f"{r['vs_fake_quant_psnr_db_worst']} dB (mean {r['vs_fake_quant_psnr_db_mean']}), "
                  f"PTQ drop {r['ptq_drop_db']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
