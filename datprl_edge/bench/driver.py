"""Stage: benchmark exported artifacts in their runtimes, without torch.

`run_bench(artifacts, BenchConfig) -> dict` measures every artifact x device x shape in a fresh
`python -m datprl_edge.bench.worker` process (so peak RSS belongs to one measurement): load time,
first inference, latency min/mean/p50/p90/p99, throughput and peak RSS, plus an environment
fingerprint. Shapes with a side above 2048 (or that a static artifact cannot take) are tiled.
`write_report(report, path)` writes the JSON atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datprl_edge.bench.worker import PARENT_ENV
from datprl_edge.core import errors
from datprl_edge.core.errors import (
    ArtifactError,
    ConfigError,
    DatprlEdgeError,
    InputNotFoundError,
    PlatformError,
)
from datprl_edge.core.host import default_threads, environment, load_average
from datprl_edge.core.interrupt import sigterm_unwinds
from datprl_edge.core.shapes import parse_hw
from datprl_edge.core.targets import BENCH_COMPUTE_UNITS, COMPUTE_UNITS, TargetSpec, stage_module

SCHEMA = "datprl-edge-bench/1"
BUSY_SHARE, STEAL_SHARE = 0.05, 0.02  # summary_lines flags timings taken while the CPUs did more than this
OPENVINO_PRECISIONS = ("f32", "bf16", "f16", "default")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure. `iters` fixes the timed iterations; otherwise the loop runs `seconds`
    (at least `min_iters` times). `tile`: "auto", "off" or a tile size. `devices`: OpenVINO /
    onnxruntime device names, or "all" (every device OpenVINO lists). `compute_units`: Core ML.
    `paired`: the artifacts of each runtime, device and shape run in one worker, interleaved run by
    run, and each one's speed-up over the first of them comes from paired runs (robust to a machine
    whose speed drifts; peak RSS is then the whole process's)."""

    shapes: tuple = ((256, 256),)
    threads: int | None = None
    warmup: int = 3
    iters: int | None = None
    seconds: float | None = 3.0
    min_iters: int = 3
    devices: tuple = ("CPU",)
    compute_units: tuple = BENCH_COMPUTE_UNITS
    inference_precision: str = "f32"
    tile: object = "auto"
    overlap: int | None = None
    seed: int = 0
    timeout_s: float | None = None
    paired: bool = False

    def __post_init__(self):
        for name in ("threads", "warmup", "iters"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"--{name} must be a whole number, got {v!r}")
        sec = self.seconds
        if sec is not None and (isinstance(sec, bool) or not isinstance(sec, (int, float))):
            raise ConfigError(f"--seconds must be a number, got {self.seconds!r}")
        shapes = tuple(parse_hw(s, "--shape") for s in self.shapes)
        if not shapes:
            raise ConfigError("give at least one --shape (e.g. 256x256)")
        object.__setattr__(self, "shapes", shapes)
        threads = default_threads() if self.threads in (None, 0) else int(self.threads)
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        object.__setattr__(self, "threads", threads)
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.iters is not None and self.iters < 1:
            raise ConfigError(f"--iters must be at least 1, got {self.iters}")
        if self.iters is None and (self.seconds is None or self.seconds <= 0):
            raise ConfigError("give --iters N or a positive --seconds S")
        if self.iters is not None:
            object.__setattr__(self, "seconds", None)
        units = tuple(str(u).upper() for u in self.compute_units)
        for u in units:
            if u not in COMPUTE_UNITS:
                raise errors.UnknownChoiceError("Core ML compute units", u, COMPUTE_UNITS)
        object.__setattr__(self, "compute_units", units)
        object.__setattr__(self, "devices", tuple(str(d).upper() for d in self.devices) or ("CPU",))
        if self.inference_precision not in OPENVINO_PRECISIONS:
            raise errors.UnknownChoiceError("inference precision", str(self.inference_precision),
                                            OPENVINO_PRECISIONS)
        object.__setattr__(self, "tile", parse_tile(self.tile))
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"--overlap must be 0 or more, got {self.overlap}")
        if not isinstance(self.paired, bool):
            raise ConfigError(f"paired must be True or False, got {self.paired!r}")


def parse_tile(value):
    """"auto", "off", a size, or [height, width] (from "HxW")."""
    if value in (None, "auto", "off"):
        return value or "auto"
    try:
        hw = list(parse_hw(value, "--tile"))
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"--tile takes auto, off, a size or HxW in pixels, got {value!r}") from None
    if min(hw) < 16:
        raise ConfigError(f"tile size {value} is too small (at least 16)")
    return hw[0] if hw[0] == hw[1] else hw


def plan_jobs(artifacts, config: BenchConfig) -> tuple[list[dict], list[dict]]:
    """(worker specs to run, entries skipped with the reason) for every artifact x device x shape."""
    from datprl_edge.core.artifacts import macos
    from datprl_edge.runtime.sessions import artifact_spec

    jobs, skipped = [], []
    for art in artifacts:
        path = Path(str(art).rstrip("/\\"))
        spec = artifact_spec(path)
        if not path.exists():
            raise InputNotFoundError(f"artifact not found: {path}")
        if spec.compute_units:
            variants = [{"compute_units": u, "device": None} for u in config.compute_units]
        else:
            variants = [{"device": d, "compute_units": None} for d in _devices(spec, config.devices)]
        if spec.needs_macos and not macos():
            skipped += [{"status": "skipped", "artifact": path.name, "path": str(path), "target": spec.name,
                         **{k: v for k, v in variant.items() if v is not None}, "shape": list(s),
                         "message": f"{spec.label} prediction needs macOS; run this benchmark on a Mac"}
                        for variant in variants for s in config.shapes]
            continue
        for variant in variants:
            for shape in config.shapes:
                jobs.append({"artifact": str(path), "target": spec.name, "shape": list(shape),
                             "threads": config.threads,
                             "warmup": config.warmup, "iters": config.iters, "seconds": config.seconds,
                             "min_iters": config.min_iters, "inference_precision": config.inference_precision,
                             "tile": config.tile, "overlap": config.overlap, "seed": config.seed, **variant})
    return (_paired_jobs(jobs) if config.paired else jobs), skipped


def _paired_jobs(jobs: list[dict]) -> list[dict]:
    """One job per runtime, device and shape holding its artifacts (`artifacts`, in the order given: the
    first is the baseline); an artifact alone in its runtime is timed on its own."""
    groups: dict = {}
    for j in jobs:
        key = (j["target"], j.get("device"), j.get("compute_units"), tuple(j["shape"]))
        groups.setdefault(key, []).append(j)
    if all(len(g) < 2 for g in groups.values()):
        raise ConfigError("--paired compares two or more artifacts of one runtime; name the baseline first")
    return [{**g[0], "artifacts": [j["artifact"] for j in g]} if len(g) > 1 else g[0]
            for g in groups.values()]


def _devices(spec: TargetSpec, devices) -> list[str]:
    if "ALL" not in devices:
        return list(devices)
    if spec.lists_devices:
        return stage_module(spec, "runtime").available_devices()
    return ["CPU"]


def run_bench(artifacts, config: BenchConfig, *, command: str | None = None, progress=None) -> dict:
    """Measure every artifact; returns the report (see SCHEMA). A measurement that fails (a missing
    runtime, a damaged artifact, a timeout) is recorded as a result with status "error" and the
    others go on; `failures(report)` lists them."""
    if not artifacts:
        raise ConfigError("name at least one artifact (.onnx, OpenVINO .xml or .mlpackage)")
    jobs, skipped = plan_jobs(artifacts, config)
    if not jobs and skipped:
        raise PlatformError(skipped[0]["message"])
    env = environment()
    results, comparisons = [], []
    for i, spec in enumerate(jobs):
        if progress:
            progress(i, len(jobs), spec)
        try:
            result = run_worker(spec, timeout_s=config.timeout_s)
        except DatprlEdgeError as e:
            group = spec.get("artifacts")  # one failure stops the whole paired run
            prefix = f"the paired run of {len(group)} artifacts failed: " if group else ""
            results += [_failed({**spec, "artifact": a}, e, prefix) for a in group or [spec["artifact"]]]
            continue
        if result.get("paired"):
            results += result["results"]
            comparisons.append({"shape": list(spec["shape"]), "device": spec.get("device"),
                                "compute_units": spec.get("compute_units"), **result["comparison"]})
        else:
            results.append(result)
    report = {
        "schema": SCHEMA,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": env,
        "settings": {**dataclasses.asdict(config), "shapes": [list(s) for s in config.shapes],
                     "timer": "time.perf_counter", "peak_rss": "VmHWM (Linux; ru_maxrss elsewhere) of a "
                     "fresh worker process per artifact, device and shape"},
        "load_average_after": load_average(),
        "results": results + skipped,
    }
    if config.paired:
        report["paired"] = comparisons
    return report


def _failed(spec: dict, error: Exception, prefix: str = "") -> dict:
    path = Path(spec["artifact"])
    entry = {"status": "error", "artifact": path.name, "path": str(path), "target": spec.get("target"),
             "shape": list(spec["shape"]), "error_type": type(error).__name__,
             "message": prefix + " ".join(str(error).split())}
    for key in ("device", "compute_units"):
        if spec.get(key):
            entry[key] = spec[key]
    return entry


def failures(report: dict) -> list[dict]:
    """The results of a report that failed (status "error")."""
    return [r for r in report["results"] if r.get("status") == "error"]


def run_worker(spec: dict, timeout_s: float | None = None) -> dict:
    """Run one measurement in a fresh interpreter; re-raise its error in this process."""
    # Also when the caller is a script rather than the CLI: SIGTERM removes the folder and the worker.
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="datprl-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        load_before = load_average()
        cmd = [sys.executable, "-m", "datprl_edge.bench.worker", str(spec_path), str(result_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_worker_env())
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"benchmark of {Path(spec['artifact']).name} took longer than "
                                f"{timeout_s} s; lower --iters/--seconds") from None
        if not result_path.exists():
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
            raise ArtifactError(f"the benchmark worker for {Path(spec['artifact']).name} died "
                                f"(exit code {proc.returncode}): {tail or 'no message'}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    if result.get("status") == "error":
        raise _rebuild_error(result["error"], spec)
    for entry in result.get("results") or [result]:
        entry["load_average_before"] = load_before
        for key in ("device", "compute_units"):
            if spec.get(key):
                entry.setdefault(key, spec[key])
    return result


def _worker_env() -> dict:
    env = dict(os.environ)
    # The worker must import this very package, also when it is run from a source tree.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env[PARENT_ENV] = str(os.getpid())
    return env


def _rebuild_error(info: dict, spec: dict) -> Exception:
    name = Path(spec["artifact"]).name
    if info.get("unexpected"):
        return ArtifactError(f"benchmark of {name} failed: {info['type']}: {info['message']}")
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.DatprlEdgeError)):
        cls = errors.DatprlEdgeError
    err = cls.__new__(cls)
    Exception.__init__(err, info["message"])
    return err


def write_report(report: dict, path) -> Path:
    from datprl_edge.io.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def summary_lines(report: dict) -> list[str]:
    """A table of the results for the terminal."""
    lines = [f"{'artifact':<34} {'device':<10} {'shape':>11} {'load s':>7} {'first ms':>9} {'p50 ms':>9} "
             f"{'p90 ms':>9} {'img/s':>8} {'RSS MB':>7}"]
    for r in report["results"]:
        shape = "x".join(str(v) for v in r["shape"])
        device = r.get("device") or r.get("compute_units") or ""
        if r["status"] != "ok":
            what = "FAILED" if r["status"] == "error" else "skipped"
            lines.append(f"{r['artifact']:<34} {device:<10} {shape:>11}  {what}: {r['message']}")
            continue
        tiled = f" (tiled {r['tiled']['tiles']}x{r['tiled']['tile']})" if r.get("tiled") else ""
        lat = r["latency_ms"]
        lines.append(f"{r['artifact']:<34} {device:<10} {shape:>11} {r['load_s']:>7.2f} "
                     f"{r['first_inference_ms']:>9.1f} {lat['p50']:>9.2f} {lat['p90']:>9.2f} "
                     f"{r['throughput']['images_per_s']:>8.2f} {r['peak_rss_mb']:>7.0f}{tiled}")
    for r in report["results"]:
        share = r.get("cpu_share_while_timed") or {}
        if share.get("other_processes", 0) > BUSY_SHARE or share.get("steal", 0) > STEAL_SHARE:
            lines.append(f"note: while {r['artifact']} was timed, other processes used "
                         f"{share['other_processes']:.0%} of the CPU time and the hypervisor took "
                         f"{share['steal']:.0%}: its timings are suspect")
    for c in report.get("paired", []):
        shape = "x".join(str(v) for v in c["shape"])
        for name, s in c["speedup_vs_baseline"].items():
            lo, hi = s["ci95"]
            lines.append(f"paired {shape}: {name} vs {c['baseline']}: {s['median']:.3f}x the speed "
                         f"(median of {c['rounds']} paired runs, 95% CI {lo:.3f}-{hi:.3f}; "
                         f"p50 ratio {s['p50_ratio']:.3f}x)")
    return lines
