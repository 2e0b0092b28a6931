"""One benchmark measurement in a fresh process: `python -m datprl_edge.bench.worker SPEC RESULT`.

SPEC is a JSON file (artifact, shape, threads, device, ...), RESULT the JSON file this writes.
A process of its own per artifact and shape keeps peak RSS from mixing between measurements; a paired
spec (`artifacts`: several) interleaves them in this one process instead (`measure_paired`).
numpy + the artifact's runtime only: no torch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError, DatprlEdgeError
from datprl_edge.core.host import cpu_clock, cpu_share_between

PARENT_ENV = "DATPRL_EDGE_BENCH_PARENT"
AUTO_TILE_SIDE = 2048  # longer sides than this are tiled when --tile is auto


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is VmHWM of /proc/self/status: ru_maxrss survives exec and so starts at the
    parent's peak at fork time, which would charge the launcher's memory to the artifact."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


class _Prepared:
    """One artifact opened for timing: its session, the input and the step that runs it."""

    def __init__(self, spec: dict, artifact):
        from datprl_edge.core.targets import stage_module
        from datprl_edge.runtime.sessions import artifact_spec, open_artifact

        self.path = path = Path(artifact)
        self.target = artifact_spec(path)  # its TargetSpec
        self.runtime = stage_module(self.target, "runtime")
        h, w = self.shape = spec["shape"]
        self.rss_start = peak_rss_mb()
        self.options = self.runtime.bench_options(spec)
        t0 = time.perf_counter()
        self.session = session = open_artifact(path, **self.options)
        self.load_s = time.perf_counter() - t0
        self.rss_load = peak_rss_mb()
        rng = np.random.default_rng(spec.get("seed", 0))
        self.x = rng.random((1, session.channels, h, w), dtype=np.float32)
        self.tiling = tile_settings(session, h, w, spec.get("tile", "auto"), spec.get("overlap"))
        if self.tiling:
            from datprl_edge.core.tiling import plan_tiles

            self.tiling["tiles"] = plan_tiles(h, w, self.tiling["tile"], self.tiling["overlap"],
                                              session.pad_multiple).count
        self.first_ms = None

    def step(self):
        if self.tiling:
            from datprl_edge.core.tiling import tile_apply

            return tile_apply(self.session.run, self.x, self.tiling["tile"], self.tiling["overlap"],
                              self.session.pad_multiple)
        return self.session.run(self.x)

    def first(self) -> None:
        """The first inference, timed and checked."""
        t0 = time.perf_counter()
        y = self.step()
        self.first_ms = (time.perf_counter() - t0) * 1e3
        if y.shape[2:] != self.x.shape[2:] or not np.isfinite(y).all():
            raise ConfigError(f"{self.path.name} returned shape {y.shape} (finite: "
                              f"{bool(np.isfinite(y).all())}) for input {self.x.shape}")

    def result(self, spec: dict, times_ms, cpu_share=None) -> dict:
        h, w = self.shape
        times_ms = np.asarray(times_ms, dtype=np.float64)
        mean_ms = float(times_ms.mean())
        return {
            "status": "ok",
            "artifact": self.path.name,
            "path": str(self.path),
            "target": self.target.name,
            "precision": self.session.metadata.get("precision"),
            "model_name": self.session.metadata.get("model_name"),
            "shape": [h, w],
            "batch": 1,
            "tiled": self.tiling or None,
            "runtime": runtime_details(self.target, self.runtime, self.session, self.options),
            "load_s": round(self.load_s, 4),
            "first_inference_ms": round(self.first_ms, 3),
            "warmup": spec.get("warmup", 0),
            "iterations": int(times_ms.size),
            "latency_ms": {
                "min": _r(times_ms.min()), "mean": _r(mean_ms),
                "p50": _r(np.percentile(times_ms, 50)), "p90": _r(np.percentile(times_ms, 90)),
                "p99": _r(np.percentile(times_ms, 99)), "max": _r(times_ms.max()), "std": _r(times_ms.std()),
            },
            "throughput": {"images_per_s": _r(1e3 / mean_ms), "megapixels_per_s": _r(h * w / 1e3 / mean_ms)},
            "peak_rss_mb": peak_rss_mb(),
            "rss_mb": {"before_load": self.rss_start, "after_load": self.rss_load},
            "latencies_ms": [_r(t) for t in times_ms],
            "cpu_share_while_timed": cpu_share,
            "torch_imported": "torch" in sys.modules,
        }


def measure(spec: dict) -> dict:
    """One artifact (spec["artifact"]) at one shape."""
    art = _Prepared(spec, spec["artifact"])
    art.first()
    for _ in range(spec.get("warmup", 0)):
        art.step()
    clock = cpu_clock()
    times = timed_loop(art.step, spec.get("iters"), spec.get("seconds"), spec.get("min_iters", 3))
    return art.result(spec, np.asarray(times) * 1e3, cpu_share_between(clock, cpu_clock()))


def measure_paired(spec: dict) -> dict:
    """Several artifacts (spec["artifacts"]) in this one process, interleaved run by run: round r runs
    each once, in the given order for even r and reversed for odd r, so a drift in the machine's speed
    lands on all of them. `iters` / `seconds` are per artifact. Each artifact's speed-up over the first
    comes from the rounds' paired runs (`paired_ratios`)."""
    arts = [_Prepared(spec, a) for a in spec["artifacts"]]
    for art in arts:
        art.first()
    for _ in range(spec.get("warmup", 0)):
        for art in arts:
            art.step()
    times = [[] for _ in arts]

    def one_round():
        order = range(len(arts)) if len(times[0]) % 2 == 0 else reversed(range(len(arts)))
        for i in order:
            t0 = time.perf_counter()
            arts[i].step()
            times[i].append((time.perf_counter() - t0) * 1e3)

    seconds = spec.get("seconds")
    clock = cpu_clock()
    timed_loop(one_round, spec.get("iters"), None if seconds is None else float(seconds) * len(arts),
               spec.get("min_iters", 3))
    share = cpu_share_between(clock, cpu_clock())
    results = [art.result(spec, t, share) for art, t in zip(arts, times)]
    for r in results:
        r["paired"] = True
        r["rss_note"] = "peak RSS of the one process that ran every paired artifact"
    return {"status": "ok", "paired": True, "results": results,
            "comparison": paired_ratios([a.path.name for a in arts], times)}


def paired_ratios(names, times_ms) -> dict:
    """Each artifact's speed-up over the first (baseline latency / its latency, > 1 is faster), per
    round of paired runs: the median over rounds with a distribution-free 95% interval of that median
    (order statistics of the binomial), the quartiles, and the ratio of the two p50 latencies."""
    base = np.asarray(times_ms[0], dtype=np.float64)
    out = {"baseline": names[0], "rounds": int(base.size), "speedup_vs_baseline": {}}
    for name, t in zip(names[1:], times_ms[1:]):
        ratios = np.sort(base / np.asarray(t, dtype=np.float64))
        n = ratios.size
        half = 1.96 * np.sqrt(n) / 2
        lo, hi = max(int(np.floor(n / 2 - half)), 0), min(int(np.ceil(n / 2 + half)), n - 1)
        out["speedup_vs_baseline"][name] = {
            "median": _r(np.median(ratios)), "ci95": [_r(ratios[lo]), _r(ratios[hi])],
            "quartiles": [_r(np.percentile(ratios, 25)), _r(np.percentile(ratios, 75))],
            "p50_ratio": _r(np.percentile(base, 50) / np.percentile(t, 50)),
        }
    return out


def timed_loop(step, iters, seconds, min_iters) -> list[float]:
    times = []
    if iters:
        for _ in range(int(iters)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return times
    deadline = time.perf_counter() + float(seconds)
    while len(times) < min_iters or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def tile_settings(session, h, w, tile, overlap) -> dict | None:
    """{tile, overlap} when the input is tiled: an explicit --tile N, or (auto) a static artifact
    of another size or a side longer than AUTO_TILE_SIDE, with the artifact's recommended tile."""
    meta = session.metadata
    if tile == "off":
        if session.static_hw is not None and tuple(session.static_hw) != (h, w):
            sh, sw = session.static_hw
            raise ConfigError(f"{session.path.name} takes {sh}x{sw} only; {h}x{w} needs tiling "
                              "(drop --tile off)")
        return None
    if tile == "auto":
        static = session.static_hw
        if static is not None and tuple(static) != (h, w):
            if static[0] != static[1]:
                raise ConfigError(f"{session.path.name} has a non-square static size "
                                  f"{static[0]}x{static[1]}: benchmark it at that size")
            tile = static[0]
        elif max(h, w) > AUTO_TILE_SIDE:
            tile = int(meta.get("tile_size") or 512)
        else:
            return None
    tile = [int(v) for v in tile] if isinstance(tile, (list, tuple)) else int(tile)
    if overlap is None:
        overlap = int(meta.get("tile_overlap") or 32)
    overlap = min(int(overlap), (min(tile) if isinstance(tile, list) else tile) // 2 - 1)
    return {"tile": tile, "overlap": overlap}


def runtime_details(target, runtime, session, options: dict) -> dict:
    """The runtime's name and version, and what its module records about this run (device, ...)."""
    from datprl_edge.core.host import package_versions

    name = target.runtime_package
    return {"name": name, "version": package_versions([name])[name],
            **runtime.bench_details(session, options)}


def _r(v) -> float:
    return round(float(v), 4)


def die_with_parent(parent_pid: int | None) -> None:
    """Linux: have the kernel kill this worker when the process that started it ends, even by
    SIGKILL, so that no orphan keeps a core busy; elsewhere a no-op."""
    if not sys.platform.startswith("linux") or not parent_pid:
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent ended before the request took effect
        os._exit(1)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m datprl_edge.bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 64
    die_with_parent(int(os.environ.get(PARENT_ENV, "0") or 0))
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = measure_paired(spec) if spec.get("artifacts") else measure(spec)
        code = 0
    except DatprlEdgeError as e:
        result, code = {"status": "error", "error": {"type": type(e).__name__, "message": str(e)}}, 2
    except Exception as e:  # reported to the parent, which names the artifact
        result, code = {"status": "error", "error": {"type": type(e).__name__, "message": str(e),
                                                     "unexpected": True}}, 1
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
