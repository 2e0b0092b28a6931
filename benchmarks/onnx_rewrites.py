"""What the ONNX export's rewrites for onnxruntime gain: each student's FP32 and INT8 ONNX files as
`export` writes them and as traced (`export --plain-onnx`), timed together in one paired run.

    python benchmarks/onnx_rewrites.py [--members edge-xs,edge-lat,edge-q8] [--artifacts DIR]
        [--threads 2] [--seconds 12] [-o benchmarks/results/onnx_rewrites.json]

The four files of a member run in one `bench --paired` session (round-robin, so all four see the same
machine states); the JSON gives each file's p50 and the paired speed-ups against the traced FP32 file,
from which the rewrites' gain at each precision and INT8 vs FP32 with and without them follow. INT8 comes
from the shipped QAT weights of the ONNX target where there are some (benchmarks/artifacts.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import artifacts as build  # noqa: E402

from datprl_edge.bench.driver import BenchConfig, run_bench  # noqa: E402
from datprl_edge.core.host import default_threads, isa_block, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402

SHAPE = (256, 256)


def member_files(root: Path, name: str) -> dict:
    """{"files": {label: path} of the four files, copied under names of their own; "sources": where the
    weights came from}."""
    rewritten = build.build_student(root / "rewritten", name=name, targets=("onnx",))
    traced = build.build_student(root / "traced", name=name, targets=("onnx",), onnx_rewrites=False)
    files = {}
    for label, built in (("rewritten", rewritten), ("traced", traced)):
        for precision in ("fp32", "int8"):
            src = Path(built["paths"][f"onnx_{precision}"])
            dest = root / "bench" / f"{name}_{precision}_{label}.onnx"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            files[f"{precision}_{label}"] = dest
    return {"files": files, "sources": rewritten["sources"]}


def measure(files: dict, threads: int, seconds: float) -> dict:
    order = ["fp32_traced", "fp32_rewritten", "int8_traced", "int8_rewritten"]  # the first is the baseline
    rep = run_bench([str(files[k]) for k in order], BenchConfig(shapes=(SHAPE,), threads=threads, warmup=5,
                                                                 seconds=seconds, paired=True))
    (comparison,) = rep["paired"]
    rows = {r["artifact"]: r for r in rep["results"] if r["status"] == "ok"}
    speed = {k: comparison["speedup_vs_baseline"][files[k].name]["median"] for k in order[1:]}
    speed["fp32_traced"] = 1.0
    return {
        "rounds": comparison["rounds"],
        "p50_ms": {k: rows[files[k].name]["latency_ms"]["p50"] for k in order},
        "speed_vs_fp32_traced": {k: comparison["speedup_vs_baseline"][files[k].name] for k in order[1:]},
        "rewrite_gain_fp32": round(speed["fp32_rewritten"], 3),
        # ratios of the paired medians against the traced FP32 file (one baseline for all three)
        "rewrite_gain_int8": round(speed["int8_rewritten"] / speed["int8_traced"], 3),
        "int8_vs_fp32_traced": round(speed["int8_traced"], 3),
        "int8_vs_fp32_rewritten": round(speed["int8_rewritten"] / speed["fp32_rewritten"], 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="edge-xs,edge-lat,edge-q8")
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "onnx_rewrites"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=12.0, help="per artifact in the paired run")
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "onnx_rewrites.json"))
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    members = {n: member_files(Path(args.artifacts) / n, n) for n in names}
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average()
    rows = {}
    for name, m in members.items():
        print(f"[{name}] paired: FP32 / INT8, traced / rewritten, {args.seconds:g} s each", flush=True)
        r = rows[name] = {**measure(m["files"], threads, args.seconds), "sources": m["sources"]}
        print(f"  rewrites: FP32 {r['rewrite_gain_fp32']:.2f}x, INT8 {r['rewrite_gain_int8']:.2f}x; "
              f"INT8/FP32 {r['int8_vs_fp32_traced']:.2f}x traced -> {r['int8_vs_fp32_rewritten']:.2f}x "
              "rewritten", flush=True)
    doc = {
        "what": f"onnxruntime at {SHAPE[0]}x{SHAPE[1]}: each student's ONNX files as export writes them "
                "(rewritten for onnxruntime) and as traced (--plain-onnx), FP32 and INT8, one bench --paired "
                "session per student",
        "command": "python benchmarks/onnx_rewrites.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": started, "load_average_start": load_start, "load_average_end": load_average(),
        "threads": threads, "environment": isa_block(), "members": rows,
    }
    write_text_atomic(Path(args.output), json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
