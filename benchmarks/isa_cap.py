"""INT8 vs FP32 of each student in OpenVINO on the CPU's own instruction set and with the kernels capped to a
lower one (oneDNN's ONEDNN_MAX_CPU_ISA and OpenVINO's OV_CPU_MAX_ISA, e.g. AVX2: the int8 kernels of a CPU
without VNNI), paired runs, both in the same session.

    python benchmarks/isa_cap.py [--members edge-xs,edge-lat,edge-q8] [--cap AVX2] [--artifacts DIR]
        [--threads 2] [--seconds 16] [-o benchmarks/results/isa_cap_avx2.json]

An emulation, not another machine: the same cores, clocks and caches run the lower ISA's kernels. Each
INT8 artifact is also profiled under both settings (`profile_openvino.py` in a fresh process, since oneDNN
reads the cap once per process) and the kernel names are recorded, so the JSON shows whether the cap took
effect (`cap_effective`: no kernel of the capped run names a wider ISA). For each member the native and
capped paired runs follow each other, and the order alternates between members, so both see the same
states of a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")
WIDER = {"AVX2": ("avx512", "amx"), "SSE41": ("avx", "amx")}  # kernel-name parts a capped run must not show
SHAPE = (256, 256)


def cap_env(cap: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CAP_VARIABLES}
    if cap:
        env.update({k: cap for k in CAP_VARIABLES})
    return env


def paired(fp32: Path, int8: Path, cap: str | None, threads: int, seconds: float) -> dict:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(cap_env(cap))  # run_bench's workers inherit it
    try:
        rep = run_bench([str(fp32), str(int8)], BenchConfig(shapes=(SHAPE,), threads=threads, warmup=5,
                                                            seconds=seconds, paired=True))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    (comparison,) = rep["paired"]
    rows = {r["artifact"]: r for r in rep["results"] if r["status"] == "ok"}
    return {"rounds": comparison["rounds"], **comparison["speedup_vs_baseline"][int8.name],
            "p50_ms": {name: rows[name]["latency_ms"]["p50"] for name in rows}}


def profile(path: Path, cap: str | None, threads: int) -> dict:
    cmd = [sys.executable, str(HERE / "profile_openvino.py"), str(path), "--shape", f"{SHAPE[0]}x{SHAPE[1]}",
           "--iters", "5", "--threads", str(threads)]
    out = subprocess.run(cmd, env=cap_env(cap), capture_output=True, text=True, check=True).stdout
    doc = json.loads(out[out.index("{"):])
    return {k: doc[k] for k in ("sum_of_layers_ms", "int8_kernel_time_share", "by_kernel")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="edge-xs,edge-lat,edge-q8")
    ap.add_argument("--cap", default="AVX2", choices=sorted(WIDER))
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "frontier"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=16.0, help="per paired run")
    ap.add_argument("-o", "--output", default=None, help="default benchmarks/results/isa_cap_<cap>.json")
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    output = Path(args.output or HERE / "results" / f"isa_cap_{args.cap.lower()}.json")
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    members = {n: build.build_student(Path(args.artifacts), name=n, targets=("openvino",)) for n in names}
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average()
    rows = {}
    for i, (name, m) in enumerate(members.items()):
        fp32, int8 = Path(m["paths"]["openvino_fp32"]), Path(m["paths"]["openvino_int8"])
        order = (None, args.cap) if i % 2 == 0 else (args.cap, None)
        row = {}
        for cap in order:
            key = "capped" if cap else "native"
            print(f"[{name} {key}] paired FP32 / INT8, {args.seconds:g} s", flush=True)
            row[key] = {"int8_vs_fp32": paired(fp32, int8, cap, threads, args.seconds),
                        "int8_profile": profile(int8, cap, threads)}
            print(f"  INT8/FP32 {row[key]['int8_vs_fp32']['median']:.2f}x", flush=True)
        kernels = [k["name"] for k in row["capped"]["int8_profile"]["by_kernel"]]
        row["cap_effective"] = not any(w in k for k in kernels for w in WIDER[args.cap])
        row["sources"] = m["sources"]
        rows[name] = row
    doc = {
        "what": f"OpenVINO INT8 vs FP32 per student at {SHAPE[0]}x{SHAPE[1]}, bench --paired, on this CPU's "
                f"own ISA and with {' and '.join(CAP_VARIABLES)}={args.cap} (an emulation of a CPU "
                "without the wider ISA: same cores, clocks and caches)",
        "command": "python benchmarks/isa_cap.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": started, "load_average_start": load_start, "load_average_end": load_average(),
        "threads": threads, "environment": isa_block(), "cap": args.cap, "members": rows,
    }
    write_text_atomic(output, json.dumps(doc, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name}: native {row['native']['int8_vs_fp32']['median']:.2f}x, {args.cap} "
              f"{row['capped']['int8_vs_fp32']['median']:.2f}x (cap effective: {row['cap_effective']})")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
