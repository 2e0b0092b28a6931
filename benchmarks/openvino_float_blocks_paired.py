"""What the OpenVINO INT8 weights' float blocks cost in speed, and how far INT8 gets without them.

The shipped OpenVINO INT8 weights keep `encoders.0.0` and `decoders.0.0` float for accuracy (README,
"Measured results"). This times, per student, three artifacts in `bench --paired` runs (one process,
interleaved run by run, so a drift in this shared machine's speed hits every artifact of a round):

- FP32 (the export stage's default FP32 artifact, the baseline),
- the shipped INT8 (QAT weights, scheme 4, two float blocks),
- an all-int8 artifact: post-training quantization of the float student with the same scheme and no
  float blocks (`benchmarks/artifacts.py`'s PTQ settings), timing only: what it costs in accuracy is
  in `qat_accuracy.json` and the README.

at each thread count given. Writes one JSON with every paired report.

    python benchmarks/openvino_float_blocks_paired.py [--members edge-xs,edge-lat] [--threads 2,1]
        [--seconds 10] [--artifacts DIR] [--out benchmarks/results/openvino_float_blocks_paired.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import artifacts as build  # noqa: E402

from datprl_edge.bench.driver import BenchConfig, run_bench, summary_lines  # noqa: E402
from datprl_edge.core.host import isa_block, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402

ALL_INT8 = ("post-training quantization of the float student, OpenVINO scheme 4, no float blocks "
            "(benchmarks/artifacts.py PTQ settings)")


def all_int8(name: str, out: Path) -> Path:
    """The all-int8 OpenVINO artifact of `name` (PTQ, scheme 4, no float blocks), built once."""
    from datprl_edge.data.calib import calibration_images
    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.quantize.qat import QATConfig, run_qat

    path = out / f"{name}-allint8_openvino_int8.xml"
    if path.exists():
        return path
    model, _ = build.student(name)
    calib = calibration_images(build.PTQ_RECIPE, count=build.PTQ_PAIRS, crop=build.PTQ_CROP).pairs()
    config = QATConfig(target="openvino", steps=0, calib_batches=2, batch_size=4, val_images=0, crop=64)
    qat = run_qat(model, config, calib)
    export_model(qat, ExportConfig(targets=("openvino",), precision="int8", verify_images=2,
                                   verify_size=(96, 128), model_name=f"{name}-allint8"), out)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default="edge-xs,edge-lat")
    p.add_argument("--threads", default="2,1", help="comma list of thread counts")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per artifact and run")
    p.add_argument("--artifacts", default=str(HERE.parent / "runs" / "float_blocks"))
    p.add_argument("--out", default=str(HERE / "results" / "openvino_float_blocks_paired.json"))
    args = p.parse_args(argv)
    out = Path(args.artifacts)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/openvino_float_blocks_paired.py " + shlex.join(argv or sys.argv[1:])
    doc = {"command": command,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": isa_block(),
           "load_average_start": load_average(), "members": {}}
    for name in [m for m in args.members.split(",") if m]:
        shipped = build.build_student(out, name=name, targets=("openvino",))
        paths = [shipped["paths"]["openvino_fp32"], shipped["paths"]["openvino_int8"],
                 str(all_int8(name, out))]
        names = " ".join(Path(x).name for x in paths)
        runs = {}
        for threads in [int(t) for t in args.threads.split(",") if t]:
            config = BenchConfig(shapes=((256, 256),), threads=threads, warmup=5, seconds=args.seconds,
                                 paired=True)
            report = run_bench(paths, config, command=f"datprl-edge bench {names} --paired --threads "
                                                      f"{threads} --seconds {args.seconds:g} --warmup 5")
            print("\n".join(summary_lines(report)), flush=True)
            (comparison,) = report["paired"]
            runs[str(threads)] = {"speedup_vs_fp32": comparison["speedup_vs_baseline"], "report": report}
        doc["members"][name] = {"sources": shipped["sources"], "all_int8": ALL_INT8, "runs": runs}
    doc["load_average_end"] = load_average()
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
