"""`datprl-edge bench`: time exported artifacts in onnxruntime, OpenVINO or Core ML, without torch."""

from __future__ import annotations

import shlex
import sys

from datprl_edge.core.targets import BENCH_COMPUTE_UNITS, COMPUTE_UNITS


def register(subparsers):
    p = subparsers.add_parser(
        "bench",
        help="benchmark exported artifacts: load time, latency percentiles, throughput, peak RSS",
        description="Benchmark exported artifacts (.onnx, OpenVINO .xml, .mlpackage) in their runtimes. "
                    "Each artifact, device and shape runs in a fresh process: load time, first inference, "
                    "latency min/mean/p50/p90/p99, throughput and peak RSS, with an environment "
                    "fingerprint. Needs only numpy and the runtime (no torch). Shapes with a side above "
                    "2048 are tiled with the artifact's recommended tile size.",
    )
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="exported artifacts to time")
    p.add_argument("--shape", action="append", metavar="HxW",
                   help="input size, repeatable (default 256x256), e.g. --shape 512x512 --shape 3840x2160 "
                        "(height x width)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads (onnxruntime intra_op_num_threads, OpenVINO "
                        "INFERENCE_NUM_THREADS); default: all cores")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs after the first (3)")
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--iters", type=int, metavar="N", help="timed iterations")
    loop.add_argument("--seconds", type=float, metavar="S",
                      help="time for S seconds (at least 3 iterations); the default is 3 s")
    p.add_argument("--device", action="append", metavar="D",
                   help="CPU (default), GPU, NPU or all (every device OpenVINO lists); repeatable")
    p.add_argument("--compute-units", action="append", metavar="U",
                   help=f"Core ML compute units: {', '.join(COMPUTE_UNITS)} (default: "
                        f"{', '.join(BENCH_COMPUTE_UNITS)}); repeatable")
    p.add_argument("--inference-precision", default="f32", metavar="P",
                   help="OpenVINO INFERENCE_PRECISION_HINT: f32 (default; the CPU may otherwise run "
                        "FP32 models in bf16), bf16, f16 or default")
    p.add_argument("--tile", default="auto", metavar="N|HxW|auto|off",
                   help="tile size for large inputs (auto: tile sides above 2048 at the artifact's "
                        "recommended size)")
    p.add_argument("--overlap", type=int, metavar="N", help="tile overlap (default: the artifact's)")
    p.add_argument("--paired", action="store_true",
                   help="run the artifacts of each runtime in one process, interleaved run by run, and "
                        "report each one's speed-up over the FIRST of that runtime from paired runs with a "
                        "95%% interval: robust when the machine's speed drifts; peak RSS is then the "
                        "process's, not per artifact")
    p.add_argument("--json", metavar="OUT", help="write the full report (JSON) here")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from datprl_edge.bench.driver import BenchConfig, failures, run_bench, summary_lines, write_report
    from datprl_edge.core.errors import BenchmarkError
    from datprl_edge.io.atomic import check_output

    if args.json:
        check_output(args.json, overwrite=args.overwrite, inputs=args.artifacts, suffix=".json",
                     option="--json")
    config = BenchConfig(
        shapes=tuple(args.shape or ["256x256"]), threads=args.threads, warmup=args.warmup, iters=args.iters,
        seconds=args.seconds if args.seconds is not None else (None if args.iters else 3.0),
        devices=tuple(args.device or ["CPU"]),
        compute_units=tuple(_split(args.compute_units) or BENCH_COMPUTE_UNITS),
        inference_precision=str(args.inference_precision).lower(), tile=args.tile, overlap=args.overlap,
        paired=args.paired)

    def progress(i, total, spec):
        where = spec.get("device") or spec.get("compute_units")
        names = ", ".join(Path(a).name for a in spec.get("artifacts") or [spec["artifact"]])
        print(f"[{i + 1}/{total}] {names} {where} "
              f"{spec['shape'][0]}x{spec['shape'][1]}", file=sys.stderr, flush=True)

    report = run_bench(args.artifacts, config, command=_rebuild_command(args), progress=progress)
    for r in report["results"]:
        if r["status"] == "skipped":
            print(f"datprl-edge: note: {r['artifact']} ({r['compute_units']}): {r['message']}",
                  file=sys.stderr)
    print("\n".join(summary_lines(report)))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    failed = failures(report)
    if failed:
        total = len(report["results"])
        more = (f" ({len(failed)} of {total} measurements failed; the others are in the report)"
                if total > 1 else "")
        raise BenchmarkError(f"{failed[0]['message']}{more}")
    return 0


def _split(values):
    return [v.strip() for item in values or [] for v in str(item).split(",") if v.strip()]


def _rebuild_command(args) -> str:
    parts = ["datprl-edge", "bench", *args.artifacts]
    for s in args.shape or []:
        parts += ["--shape", s]
    for flag in ("threads", "warmup", "iters", "seconds", "inference_precision", "tile", "overlap", "json"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    for d in args.device or []:
        parts += ["--device", d]
    if args.paired:
        parts.append("--paired")
    for u in args.compute_units or []:
        parts += ["--compute-units", u]
    return shlex.join(parts)
