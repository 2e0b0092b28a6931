"""The headline benchmark suites; each writes benchmarks/results/<suite>.json.

    python benchmarks/run_headline.py [--suite NAME ...] [--artifacts DIR] [--out DIR] [--wait-quiet S]

Suites (targets are figures to report, never test assertions):
  speedup_256   student INT8 (OpenVINO) vs the released 6T full model in OpenVINO FP32, 256x256,
                measured in the same run; target: at least 500x faster
  int8_vs_fp32  the student at FP32 and INT8 in onnxruntime and OpenVINO, 256x256;
                target (OpenVINO): INT8 at least 1.8x faster
  ct_512        a 512x512 CT slice; target: at most 60 ms
  frame_4k      a 3840x2160 frame, tiled; target: at most 2.5 s with peak RSS at most 1 GB
Timing runs through `datprl_edge.bench.run_bench` (the `datprl-edge bench` engine: a fresh process
per measurement, no torch). A missed target gets OpenVINO per-layer counters (profile_openvino.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import artifacts as build  # noqa: E402
from profile_onnxruntime import profile as profile_ort  # noqa: E402
from profile_openvino import profile  # noqa: E402

from datprl_edge.bench import BenchConfig, run_bench, summary_lines  # noqa: E402
from datprl_edge.bench_env import default_threads, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402

SUITES = ("speedup_256", "int8_vs_fp32", "ct_512", "frame_4k")
SETTINGS = {"seconds": 10.0, "full_iters": 3, "frame_iters": 3, "frame_tiles": (256, 512, (1088, 1296))}
QUICK = {"seconds": 1.0, "full_iters": 1, "frame_iters": 1, "frame_tiles": (512,)}


def bench(paths, config: BenchConfig, label: str) -> dict:
    cmd = ["datprl-edge", "bench", *[Path(p).name for p in paths]]
    for h, w in config.shapes:
        cmd += ["--shape", f"{h}x{w}"]
    cmd += ["--threads", str(config.threads), "--warmup", str(config.warmup)]
    cmd += ["--iters", str(config.iters)] if config.iters else ["--seconds", str(config.seconds)]
    if config.tile != "auto":
        tile = config.tile
        cmd += ["--tile", f"{tile[0]}x{tile[1]}" if isinstance(tile, list) else str(tile)]
    if config.overlap is not None:
        cmd += ["--overlap", str(config.overlap)]
    print(f"[{label}] {shlex.join(cmd)}", flush=True)
    report = run_bench([str(p) for p in paths], config, command=shlex.join(cmd))
    print("\n".join(summary_lines(report)), flush=True)
    return report


def timed(shape, threads, warmup, iters=None, **kw) -> BenchConfig:
    """Fixed iterations, or SETTINGS["seconds"] of timing."""
    return BenchConfig(shapes=(shape,), threads=threads, warmup=warmup, iters=iters,
                       seconds=None if iters else SETTINGS["seconds"], **kw)


def by_artifact(report: dict) -> dict:
    return {r["artifact"]: r for r in report["results"] if r["status"] == "ok"}


def target(name: str, measured: float, limit: float, unit: str, higher_is_better: bool) -> dict:
    met = measured >= limit if higher_is_better else measured <= limit
    entry = {"name": name, "target": limit, "measured": round(measured, 3), "unit": unit, "met": met}
    if not met:
        entry["missed_by"] = (f"{limit / measured:.2f}x short ({measured:.3g} vs {limit:.3g} {unit})"
                              if higher_is_better else
                              f"{measured / limit:.2f}x over ({measured:.3g} vs {limit:.3g} {unit})")
    return entry


def suite_speedup(arts, threads) -> dict:
    student, full = Path(arts["student"]["paths"]["openvino_int8"]), Path(arts["full"]["path"])
    fast = bench([student], timed((256, 256), threads, warmup=5), "student")
    slow = bench([full], timed((256, 256), threads, warmup=1, iters=SETTINGS["full_iters"]), "6T")
    s, f = by_artifact(fast)[student.name], by_artifact(slow)[full.name]
    ratio_mean = f["latency_ms"]["mean"] / s["latency_ms"]["mean"]
    ratio_p50 = f["latency_ms"]["p50"] / s["latency_ms"]["p50"]
    return {
        "figures": {"student_int8_openvino_ms": s["latency_ms"], "full_6t_fp32_openvino_ms": f["latency_ms"],
                    "speedup_mean": round(ratio_mean, 1), "speedup_p50": round(ratio_p50, 1)},
        "targets": [target("student INT8 OpenVINO vs 6T FP32 OpenVINO speed-up at 256x256 (mean latency)",
                           ratio_mean, 500, "x", True)],
        "bench": [fast, slow],
        "profile_paths": [student],
    }


def suite_int8(arts, threads) -> dict:
    p = {k: Path(v) for k, v in arts["student"]["paths"].items()}
    report = bench([p["onnx_fp32"], p["onnx_int8"], p["openvino_fp32"], p["openvino_int8"]],
                   timed((256, 256), threads, warmup=5), "int8 vs fp32")
    r = by_artifact(report)
    mean = {k: r[v.name]["latency_ms"]["mean"] for k, v in p.items()}
    ratios = {rt: mean[f"{rt}_fp32"] / mean[f"{rt}_int8"] for rt in ("onnx", "openvino")}
    return {
        "figures": {f"{rt}_int8_speedup_mean": round(v, 3) for rt, v in ratios.items()}
        | {f"{k}_ms": r[v.name]["latency_ms"] for k, v in p.items()},
        "targets": [target("INT8 vs FP32, same student, OpenVINO, 256x256 (mean latency)", ratios["openvino"],
                           1.8, "x", True)],
        "bench": [report],
        "profile_paths": [p["openvino_int8"], p["openvino_fp32"]],
        # onnxruntime has no target here, but its INT8/FP32 ratio needs the why: which Q/DQ pairs
        # were fused into integer kernels and which run as separate float ops
        "onnxruntime_profiles": [profile_ort(str(p[k]), (256, 256), iters=3, threads=threads)
                                 for k in ("onnx_int8", "onnx_fp32")],
    }


def suite_ct(arts, threads) -> dict:
    p = {k: Path(v) for k, v in arts["student"]["paths"].items()}
    report = bench([p["openvino_int8"], p["openvino_fp32"], p["onnx_int8"], p["onnx_fp32"]],
                   timed((512, 512), threads, warmup=3), "ct 512")
    r = by_artifact(report)
    best = min(r.values(), key=lambda e: e["latency_ms"]["mean"])
    main = r[p["openvino_int8"].name]
    return {
        "figures": {"student_int8_openvino_ms": main["latency_ms"], "fastest_artifact": best["artifact"],
                    "fastest_mean_ms": best["latency_ms"]["mean"]},
        "targets": [target("512x512 CT slice, student INT8 OpenVINO (mean latency)",
                           main["latency_ms"]["mean"], 60, "ms", False)],
        "bench": [report],
        "profile_paths": [p["openvino_int8"]],
        "profile_shape": (512, 512),
    }


def suite_4k(arts, threads) -> dict:
    p = {k: Path(v) for k, v in arts["student"]["paths"].items()}
    reports, rows = [], []
    for tile in SETTINGS["frame_tiles"]:
        config = timed((2160, 3840), threads, warmup=1, iters=SETTINGS["frame_iters"], tile=tile, overlap=16)
        report = bench([p["openvino_int8"], p["openvino_fp32"]], config, f"4k tile {tile}")
        reports.append(report)
        rows += list(by_artifact(report).values())
    int8 = [r for r in rows if r["artifact"] == p["openvino_int8"].name]
    best = min(int8, key=lambda e: e["latency_ms"]["mean"])
    return {
        "figures": {"rows": [{"artifact": r["artifact"], "tile": r["tiled"],
                              "mean_ms": r["latency_ms"]["mean"], "p50_ms": r["latency_ms"]["p50"],
                              "peak_rss_mb": r["peak_rss_mb"]} for r in rows],
                    "best_int8": {"tile": best["tiled"], "latency_ms": best["latency_ms"],
                                  "peak_rss_mb": best["peak_rss_mb"]}},
        "targets": [target("3840x2160 frame, tiled, student INT8 OpenVINO (mean latency)",
                           best["latency_ms"]["mean"] / 1e3, 2.5, "s", False),
                    target("3840x2160 frame peak RSS", best["peak_rss_mb"], 1024, "MB", False)],
        "bench": reports,
        "profile_paths": [p["openvino_int8"]],
        "profile_shape": tuple(best["tiled"]["tile"]) if isinstance(best["tiled"]["tile"], list)
        else (best["tiled"]["tile"],) * 2,
    }


RUNNERS = {"speedup_256": suite_speedup, "int8_vs_fp32": suite_int8, "ct_512": suite_ct, "frame_4k": suite_4k}


def wait_quiet(max_wait: float, threshold: float) -> None:
    deadline = time.time() + max_wait
    while (load_average() or [0])[0] > threshold and time.time() < deadline:
        print(f"waiting for a quiet machine: load {load_average()} > {threshold}", flush=True)
        time.sleep(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", action="append", choices=SUITES, help="suite(s) to run (default: all)")
    ap.add_argument("--artifacts", default=str(HERE.parent / "runs" / "benchmarks"),
                    help="where artifacts are built or reused (default runs/benchmarks, git-ignored)")
    ap.add_argument("--out", default=str(HERE / "results"), help="where results JSON go")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="short runs to check the script (not for results)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="wait up to S seconds for the 1-minute load to drop below half the cores")
    args = ap.parse_args(argv)
    threads = args.threads or default_threads()
    if args.quick:
        SETTINGS.update(QUICK)
    art_dir, out_dir = Path(args.artifacts), Path(args.out)
    arts = {"student": build.build_student(art_dir)}
    suites = args.suite or list(SUITES)
    if "speedup_256" in suites:
        arts["full"] = build.build_full_model(art_dir)
    for name in suites:
        wait_quiet(args.wait_quiet, threshold=max(0.5, default_threads() / 2))
        load_start = load_average()
        result = RUNNERS[name](arts, threads)
        profiles = []
        if not all(t["met"] for t in result["targets"]):
            shape = result.get("profile_shape", (256, 256))
            profiles = [profile(str(p), shape, iters=3, threads=threads) for p in result["profile_paths"]]
        doc = {
            "suite": name,
            "command": shlex.join(["python", "benchmarks/run_headline.py", "--suite", name]
                                  + (["--threads", str(args.threads)] if args.threads else [])
                                  + (["--quick"] if args.quick else [])),
            "settings": {k: v for k, v in SETTINGS.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "cpus": os.cpu_count(),
            "artifacts": {"student": arts["student"]["sources"],
                          **({"full_6t": arts["full"]["source"]} if name == "speedup_256" else {})},
            "targets": result["targets"],
            "figures": result["figures"],
            "profiles": profiles,
            "onnxruntime_profiles": result.get("onnxruntime_profiles", []),
            "bench": result["bench"],
        }
        path = out_dir / f"{name}.json"
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
        for t in result["targets"]:
            print(f"{name}: {t['name']}: {t['measured']} {t['unit']} (target {t['target']}) "
                  f"{'met' if t['met'] else 'MISSED ' + t['missed_by']}", flush=True)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
