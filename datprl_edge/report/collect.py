"""Read a run folder's JSON files into one structure: artifacts with their size, verification,
latency and per-task PSNR, plus where each number was measured. Nothing here computes a figure:
every value is copied from a file the bench, eval, export and pipeline stages wrote."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from datprl_edge.core.errors import ConfigError, InputNotFoundError, UnknownChoiceError
from datprl_edge.core.targets import target_names

BENCH_SCHEMA = "datprl-edge-bench/"
EVAL_SCHEMA = "datprl-edge-eval/"
VISUALS_FILE = "visuals.json"
MAX_JSON_BYTES = 20 * 1024 * 1024
SKIP_DIRS = {"report", ".work"}


@dataclasses.dataclass
class Artifact:
    name: str  # file name, the key shared by the export, bench and eval reports
    target: str
    precision: str
    size_bytes: int | None = None
    export: dict | None = None  # the export stage's JSON for this artifact
    bench: list = dataclasses.field(default_factory=list)  # bench results (ok or skipped)
    eval: dict | None = None  # the eval report's entry for this artifact
    host: str | None = None  # the benchmark host whose latency counts (`RunData.host`)

    def latency(self, shape) -> dict | None:
        """The measured bench result at `shape` on the chosen host (CPU first), or None."""
        ok = [r for r in self.bench if r.get("status") == "ok" and list(r.get("shape", [])) == list(shape)
              and (self.host is None or r.get("host") == self.host) and not r.get("paired")]
        ok.sort(key=lambda r: (str(r.get("device") or r.get("compute_units") or "") != "CPU",))
        return ok[0] if ok else None

    def paired_speedup(self, paired: list, shape) -> tuple[str, dict] | None:
        """(baseline artifact, its speed-up stats) from `bench --paired` comparisons at `shape` on the
        chosen host; ("", {}) when this artifact was the baseline; None when it was not paired."""
        for c in paired:
            elsewhere = self.host is not None and c.get("host") != self.host
            if elsewhere or list(c.get("shape", [])) != list(shape):
                continue
            if c.get("baseline") == self.name:
                return "", {}
            stats = (c.get("speedup_vs_baseline") or {}).get(self.name)
            if stats:
                return str(c["baseline"]), stats
        return None

    def not_measured_reason(self) -> str:
        skipped = [r.get("message", "") for r in self.bench if r.get("status") != "ok"]
        if skipped:
            return skipped[0] or "skipped by the benchmark"
        return "not in the benchmark report"

    @property
    def per_task(self) -> dict:
        return (self.eval or {}).get("per_task", {})

    def worst_drop(self) -> float | None:
        drops = [m["psnr_drop_db"] for m in self.per_task.values() if "psnr_drop_db" in m]
        return max(drops) if drops else None

    def mean_psnr(self) -> float | None:
        return (self.eval or {}).get("mean", {}).get("psnr")


@dataclasses.dataclass
class RunData:
    run_dir: Path
    artifacts: list
    bench: dict | None  # merged bench report (environment, settings, results)
    eval: dict | None  # merged eval report
    stages: list  # stage.json contents, in pipeline order when known
    pipeline: dict | None
    visuals: dict | None
    visuals_dir: Path | None
    sources: dict  # kind -> list of files (relative to run_dir) the numbers came from
    hosts: list = dataclasses.field(default_factory=list)  # benchmark hosts, in file order
    host: str | None = None  # the host whose latencies the tables' main columns and the recommendation use

    @property
    def shapes(self) -> list:
        if not self.bench:
            return []
        seen = []
        for r in self.bench.get("results", []):
            s = list(r.get("shape", []))
            if s and s not in seen:
                seen.append(s)
        return seen

    def primary_shape(self, shape=None) -> list | None:
        if shape is not None:
            shape = [int(v) for v in shape]
            if shape not in self.shapes:
                have = ", ".join("x".join(map(str, s)) for s in self.shapes) or "none"
                raise ConfigError(f"the benchmark has no results at {shape[0]}x{shape[1]} (it has {have})")
            return shape
        return self.shapes[0] if self.shapes else None

    def model_entries(self) -> list:
        """Eval entries of models that are not artifacts (teacher, FP32 student in torch)."""
        names = {a.name for a in self.artifacts}
        return [m for m in (self.eval or {}).get("models", []) if m["model"] not in names]


def collect(run_dir, bench_files=(), host: str | None = None) -> RunData:
    """Everything the report shows, read from `run_dir`, plus bench reports from other devices
    (`bench_files`). Each bench result is labelled with its host (`core.host.host_label`); latencies
    are read on `host` (a part of a host label; default: this machine if it benchmarked, else the
    first host in file order: the run folder's files by name, then `bench_files` as given)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputNotFoundError(f"run folder not found: {run_dir}")
    exports, benches, evals, stages, visuals = [], [], [], [], []
    pipeline = None
    for path in _json_files(run_dir):
        data = _read(path)
        if not isinstance(data, dict):
            continue
        rel = path.relative_to(run_dir).as_posix()
        schema = str(data.get("schema", ""))
        if schema.startswith(BENCH_SCHEMA):
            benches.append((rel, data))
        elif schema.startswith(EVAL_SCHEMA):
            evals.append((rel, data))
        elif path.name == "stage.json" and "stage" in data and "key" in data:
            stages.append(data)
        elif path.name == "pipeline.json" and path.parent == run_dir:
            pipeline = data
        elif path.name == VISUALS_FILE and "tasks" in data:
            visuals.append((path, data))
        elif {"artifact", "target", "precision", "verification"} <= set(data):
            exports.append((rel, data))
    for path in map(Path, bench_files):
        if not path.is_file():
            raise InputNotFoundError(f"bench report not found: {path}")
        data = _read(path)
        if not isinstance(data, dict) or not str(data.get("schema", "")).startswith(BENCH_SCHEMA):
            raise ConfigError(f"{path} is not a bench report (no {BENCH_SCHEMA}* schema): write one with "
                              "`datprl-edge bench ... --json`")
        benches.append((str(path), data))
    if not (exports or benches or evals):
        raise InputNotFoundError(f"{run_dir} holds no export, bench or eval reports (JSON); run "
                                 "`datprl-edge pipeline` or the export/bench/eval commands with --json first")
    for rel, data in evals:
        _rebase_harm_files(data, (run_dir / rel).parent.relative_to(run_dir))
    bench = _merge_bench([d for _, d in benches])
    ev = _merge_eval([d for _, d in evals])
    artifacts = _artifacts(exports, bench, ev)
    hosts = list(dict.fromkeys(r["host"] for r in (bench or {}).get("results", [])))
    chosen = choose_host(hosts, host)
    for a in artifacts:
        a.host = chosen
    order = [s["name"] for s in (pipeline or {}).get("stages", [])]
    stages.sort(key=lambda s: (order.index(s["stage"]) if s["stage"] in order else len(order), s["stage"]))
    vis_path, vis = visuals[0] if visuals else (None, None)
    sources = {"export": [r for r, _ in exports], "bench": [r for r, _ in benches],
               "eval": [r for r, _ in evals]}
    if vis_path is not None:
        sources["visuals"] = [vis_path.relative_to(run_dir).as_posix()]
    return RunData(run_dir, artifacts, bench, ev, stages, pipeline, vis,
                   vis_path.parent if vis_path else None, sources, hosts, chosen)


def choose_host(hosts: list, wanted: str | None) -> str | None:
    """The benchmark host the report reads latencies on (see `collect`)."""
    if not hosts:
        if wanted:
            raise ConfigError(f"--host {wanted!r}: the run has no benchmark results")
        return None
    if wanted:
        found = [h for h in hosts if str(wanted).lower() in h.lower()]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UnknownChoiceError("benchmark host", str(wanted), hosts)
        raise ConfigError(f"--host {wanted!r} matches {len(found)} hosts: {'; '.join(found)}")
    from datprl_edge.core.host import environment, host_label

    here = host_label(environment())
    return here if here in hosts else hosts[0]


def _json_files(run_dir: Path):
    for path in sorted(run_dir.rglob("*.json")):
        rel = path.relative_to(run_dir).parts
        if any(p in SKIP_DIRS or p.startswith(".") for p in rel[:-1]) or len(rel) > 4:
            continue
        if path.suffix == ".json" and path.stat().st_size <= MAX_JSON_BYTES and not path.name.startswith("."):
            yield path


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def _rebase_harm_files(report: dict, folder: Path) -> None:
    """Harm thumbnails are named relative to their eval JSON; make them relative to the run folder."""
    entries = list(report.get("models") or []) + [report.get("reference") or {}]
    for entry in entries:
        for m in (entry.get("per_task") or {}).values():
            vis = m.get("harm_visual") if isinstance(m, dict) else None
            if isinstance(vis, dict) and isinstance(vis.get("files"), dict):
                vis["files"] = {k: (folder / str(f)).as_posix() for k, f in vis["files"].items()}


def _merge_bench(reports: list) -> dict | None:
    from datprl_edge.core.host import host_label

    if not reports:
        return None
    merged = dict(reports[0])
    merged["results"] = [{**r, "host": host_label(rep.get("environment") or {})}
                         for rep in reports for r in rep.get("results", []) if isinstance(r, dict)]
    merged["environments"] = [rep.get("environment") for rep in reports]
    merged["paired"] = [{**c, "host": host_label(rep.get("environment") or {})}
                        for rep in reports for c in rep.get("paired") or [] if isinstance(c, dict)]
    return merged


def _merge_eval(reports: list) -> dict | None:
    if not reports:
        return None
    merged = dict(reports[0])
    for rep in reports[1:]:
        if rep.get("tasks") != merged.get("tasks") or rep.get("data") != merged.get("data"):
            raise ConfigError("the run folder holds eval reports on different tasks or data; "
                              "keep one per run")
        known = {m["model"] for m in merged["models"]}
        merged["models"] = merged["models"] + [m for m in rep["models"] if m["model"] not in known]
    return merged


def _artifacts(exports, bench, ev) -> list:
    by_name: dict[str, Artifact] = {}
    for _, data in exports:
        name = str(data["artifact"])
        by_name[name] = Artifact(name, str(data["target"]), str(data["precision"]),
                                 data.get("size_bytes"), export=data)
    for r in (bench or {}).get("results", []):
        name = str(r.get("artifact"))
        art = by_name.get(name) or by_name.setdefault(
            name, Artifact(name, str(r.get("target", "?")), str(r.get("precision") or _precision(name))))
        art.bench.append(r)
    eval_models = {m["model"]: m for m in (ev or {}).get("models", []) if m.get("kind") == "artifact"}
    for name, m in eval_models.items():
        art = by_name.get(name) or by_name.setdefault(name, Artifact(name, _target(name), _precision(name)))
        art.eval = m
    return sorted(by_name.values(), key=lambda a: (_TARGET_ORDER.get(a.target, 9),
                                                   _PRECISION_ORDER.get(a.precision, 9), a.name))


_TARGET_ORDER = {name: i for i, name in enumerate(target_names())}  # the table's order
_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def _precision(name: str) -> str:
    stem = Path(name).stem
    return next((p for p in _PRECISION_ORDER if stem.endswith(f"_{p}")), "?")


def _target(name: str) -> str:
    from datprl_edge.core.targets import target_for_suffix

    spec = target_for_suffix(name)
    return spec.name if spec else "?"
