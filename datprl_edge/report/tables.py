"""The report's tables as plain data (title, caption, header, rows of text), rendered to HTML and
Markdown elsewhere. Every cell is a value from the run folder's JSON files, formatted; a figure that
was not measured is shown as "-" with the reason in the notes column or the caption."""

from __future__ import annotations

import dataclasses

from datprl_edge.core.targets import TARGETS
from datprl_edge.report.collect import RunData


@dataclasses.dataclass
class Table:
    key: str
    title: str
    caption: str
    header: list
    rows: list  # lists of str
    numeric: tuple = ()  # column indices aligned right
    flagged: set = dataclasses.field(default_factory=set)  # (row, column) cells shown in red


def artifacts_table(run: RunData, shape) -> Table:
    where = f"{shape[0]}x{shape[1]}" if shape else "-"
    ref = _reference(run)
    header = ["artifact", "target", "precision", "size", "export check", f"p50 ms @{where}", "p90 ms",
              "img/s", "peak RSS MB", "speed-up, paired", "mean PSNR dB", "mean SSIM",
              f"worst drop dB vs {ref or '-'}", "notes"]
    paired = (run.bench or {}).get("paired") or []
    rows = []
    for a in run.artifacts:
        lat = a.latency(shape) if shape else None
        notes = []
        if lat is None and a.eval is None and _needs_macos(a.target):
            notes.append(f"latency and PSNR not measured: {TARGETS[a.target].label} prediction needs macOS")
        else:
            if lat is None:
                notes.append(f"latency not measured: {a.not_measured_reason()}")
            if a.eval is None:
                notes.append("PSNR: " + _eval_missing(run, a))
        if lat and lat.get("tiled"):
            notes.append(f"tiled {lat['tiled'].get('tiles')}x{lat['tiled'].get('tile')} px")
        mean = (a.eval or {}).get("mean", {})
        rows.append([a.name, a.target, a.precision, _size(a.size_bytes), _check(a.export),
                     _f(lat and lat["latency_ms"]["p50"]), _f(lat and lat["latency_ms"]["p90"]),
                     _f(lat and lat["throughput"]["images_per_s"], 1), _f(lat and lat.get("peak_rss_mb"), 0),
                     _paired_cell(a.paired_speedup(paired, shape) if shape else None),
                     _f(mean.get("psnr")), _f(mean.get("ssim"), 4), _f(a.worst_drop(), 2, signed=True),
                     "; ".join(notes)])
    caption = ("Size: bytes on disk of the artifact's files (export stage). Export check: the artifact run "
               "in its runtime against the torch reference when the export stage verified it (worst-image "
               "PSNR), else a structural check only. Latency: the bench stage. Speed-up, paired: against "
               "the baseline of its runtime (FP32 where exported), both run in one process interleaved run "
               "by run (`bench --paired`): the median of the per-run ratios with its 95% interval, so a "
               "drift in the machine's speed hits both sides of each ratio. PSNR/SSIM: the eval stage, "
               "means over tasks; worst drop: the largest per-task PSNR loss against the eval reference.")
    return Table("artifacts", "Artifacts", caption, header, rows, numeric=tuple(range(3, 13)))


def _paired_cell(found) -> str:
    if found is None:
        return "-"
    baseline, stats = found
    if not baseline:
        return "baseline"
    lo, hi = stats["ci95"]
    return f"{stats['median']:.2f}x ({lo:.2f}-{hi:.2f}) vs {baseline}"


def latency_table(run: RunData) -> Table:
    header = ["artifact", "host", "device", "shape", "load s", "first ms", "min ms", "p50 ms", "p90 ms",
              "p99 ms", "img/s", "peak RSS MB", "iterations", "status"]
    rows = []
    for r in (run.bench or {}).get("results", []):
        device = r.get("device") or r.get("compute_units") or ""
        shape = "x".join(str(v) for v in r.get("shape", []))
        if r.get("status") != "ok":
            what = "failed" if r.get("status") == "error" else "skipped"
            note = f"{what}: {r.get('message', '')}"
            rows.append([r.get("artifact", ""), r.get("host", ""), device, shape] + ["-"] * 9 + [note])
            continue
        lat = r["latency_ms"]
        status = "ok" + (f", tiled {r['tiled']['tiles']} tiles" if r.get("tiled") else "")
        status += ", paired run (RSS of the shared process)" if r.get("paired") else ""
        rows.append([r["artifact"], r.get("host", ""), device, shape, _f(r.get("load_s"), 3),
                     _f(r.get("first_inference_ms"), 1),
                     _f(lat.get("min")), _f(lat.get("p50")), _f(lat.get("p90")), _f(lat.get("p99")),
                     _f(r["throughput"]["images_per_s"], 1), _f(r.get("peak_rss_mb"), 0),
                     str(r.get("iterations", "-")), status])
    return Table("latency", "Latency (every benchmark result)", bench_caption(run), header, rows,
                 numeric=tuple(range(4, 13)))


def psnr_table(run: RunData) -> Table:
    """PSNR per task and model, with the harm count (images below the input) where the eval has it;
    a model whose task mean is below the input's is flagged (red in HTML)."""
    ev = run.eval or {}
    tasks = ev.get("tasks", [])
    header = ["model"] + list(tasks) + ["mean"]
    inputs = ev.get("input", {}).get("per_task", {}) if ev else {}
    rows, flagged, below = [], set(), []
    for r, (label, entry) in enumerate(model_columns(run)):
        per_task = entry.get("per_task", {})
        row = [label]
        for c, t in enumerate(tasks, start=1):
            m = per_task.get(t, {})
            cell = _f(m.get("psnr"))
            if "harm" in m:
                cell += f" (harm {m['harm']}/{m.get('images', '?')})"
            if r and _below(m, inputs.get(t)):
                flagged.add((r, c))
                below.append(f"{label} on {t}")
            row.append(cell)
        rows.append(row + [_f(entry.get("mean", {}).get("psnr"))])
    classical = (ev.get("baselines") or {}).get("per_task", {})
    if classical:
        cells = []
        for t in tasks:
            c = classical.get(t, {})
            m = c.get("methods", {}).get(c.get("best") or "")
            cells.append(f"{_f(m['psnr'])} ({c['best']})" if m else "-")
        rows.append(["best classical (chosen on train)"] + cells + ["-"])
    caption = eval_caption(run) + (" Harm: images where the model's PSNR is below the degraded input's. "
                                   "Red: the task's mean PSNR is below the input's.")
    if below:
        caption += f" Below the input: {'; '.join(below)}."
    return Table("psnr", "PSNR per task (dB)", caption, header, rows,
                 numeric=tuple(range(1, len(header))), flagged=flagged)


def _below(m: dict, inp: dict | None) -> bool:
    if "below_input" in m:
        return bool(m["below_input"])
    return bool(inp) and m.get("psnr") is not None and m["psnr"] < inp.get("psnr", float("-inf"))


def stages_table(run: RunData) -> Table:
    header = ["stage", "result", "seconds", "CPU s", "finished", "key", "summary"]
    rows = []
    for s in run.stages:
        info = s.get("info") or {}
        summary = info.get("summary") if isinstance(info, dict) else ""
        rows.append([s["stage"], _result(run, s["stage"]), _f(s.get("seconds"), 1),
                     _f(s.get("cpu_seconds"), 1), str(s.get("finished", "")).replace("T", " ")[:19],
                     str(s["key"])[:12], str(summary or "")])
    caption = ("Result: what the latest pipeline run did (a stage is skipped while its key, the sha256 of "
               "its configuration, input files and dependencies, is unchanged). Seconds / CPU s: wall and "
               "CPU time of the stage when it last ran (CPU: this process and its finished child processes).")
    return Table("stages", "Pipeline stages", caption, header, rows, numeric=(2, 3))


def _result(run: RunData, stage: str) -> str:
    outcomes = {o["stage"]: o["result"] for o in (run.pipeline or {}).get("outcomes", [])}
    return {"ran": "ran", "skipped": "skipped (up to date)"}.get(outcomes.get(stage), "done")


def model_columns(run: RunData) -> list:
    """(label, eval entry) for the degraded input, the reference, other torch models and each artifact."""
    ev = run.eval or {}
    if not ev:
        return []
    roles = ev.get("roles", {})
    cols = [("degraded input", ev["input"])]
    ref = ev.get("reference")
    if ref:
        cols.append((_role_label(ref["model"], roles, "reference"), ref))
    for m in run.model_entries():
        cols.append((_role_label(m["model"], roles, m.get("kind", "")), m))
    cols += [(a.name, a.eval) for a in run.artifacts if a.eval is not None]
    return cols


def _role_label(name: str, roles: dict, fallback: str) -> str:
    role = next((r for r, n in roles.items() if n == name), None)
    if role:
        return f"{role.replace('_', ' ')} ({name})"
    return f"{name} ({fallback})" if fallback else name


def bench_caption(run: RunData) -> str:
    b = run.bench
    if not b:
        return "No benchmark report in this run folder: no latency was measured."
    env = b.get("environment") or {}
    s = b.get("settings") or {}
    versions = env.get("versions") or {}
    packages = {spec.runtime_package for spec in TARGETS.values()}
    runtimes = ", ".join(f"{k} {v}" for k, v in versions.items() if k in packages and v)
    loop = f"{s.get('iters')} timed iterations" if s.get("iters") else f"{s.get('seconds')} s timed loop"
    isa = env.get("isa") or ", ".join(env.get("cpu_flags") or []) or "ISA unknown"
    return (f"Measured by the bench stage on {env.get('cpu_model') or 'an unknown CPU'} "
            f"({isa}; {env.get('available_cpus')} available CPUs, {s.get('threads')} threads, "
            f"{env.get('os')}), "
            f"{b.get('created', '')}; {s.get('warmup')} warm-up runs then {loop}, batch 1, random input; "
            f"OpenVINO inference precision hint {s.get('inference_precision')}; {runtimes}. "
            f"Load average before/after: {_load(b)}. Each artifact ran in a fresh process." + _busy(b, env)
            + _hosts_note(run))


def _hosts_note(run: RunData) -> str:
    if len(run.hosts) < 2:
        return ""
    return (f" Results from {len(run.hosts)} hosts (the host column); the artifacts table, the plot and the "
            f"recommendation use {run.host} (choose with --host).")


def _busy(b: dict, env: dict) -> str:
    loads = [r["load_average_before"][0] for r in b.get("results", []) if r.get("load_average_before")]
    loads += (b.get("load_average_after") or [])[:1]
    cpus = env.get("available_cpus") or env.get("logical_cpus")
    if not loads or not cpus or max(loads) <= cpus:
        return ""
    return (" Note: the machine was busy while it was measured (1-minute load average up to "
            f"{max(loads):.1f} on {cpus} CPUs), so these latencies are likely higher than when idle.")


def eval_caption(run: RunData) -> str:
    ev = run.eval
    if not ev:
        return "No eval report in this run folder: no PSNR was measured."
    d = ev.get("data", {})
    if d.get("source") == "val":
        data = (f"{d.get('count_per_task')} validation pair(s) per task at {d.get('size')}x{d.get('size')} "
                f"px, seed {d.get('seed')} ({d.get('what', '')})")
    else:
        data = f"pairs from {d.get('source')}"
    m = ev.get("metrics", {})
    return (f"Measured by the eval stage ({ev.get('created', '')}) on {data}. {m.get('psnr', 'PSNR')}; "
            f"{m.get('library', '')}; grayscale tasks {m.get('grayscale_tasks', '')}.")


def _eval_missing(run: RunData, a) -> str:
    if _needs_macos(a.target):
        return f"{TARGETS[a.target].label} prediction needs macOS; not evaluated here"
    return "not in the eval report" if run.eval else "no eval report"


def _needs_macos(target: str) -> bool:
    return target in TARGETS and TARGETS[target].needs_macos


def _reference(run: RunData) -> str | None:
    return ((run.eval or {}).get("reference") or {}).get("model")


def _load(b: dict) -> str:
    before = [r.get("load_average_before") for r in b.get("results", []) if r.get("load_average_before")]
    first = before[0][0] if before else "-"
    after = (b.get("load_average_after") or ["-"])[0]
    return f"{first} / {after} (1-minute)"


def _check(export: dict | None) -> str:
    if not export:
        return "-"
    v = export.get("verification") or {}
    if not v.get("numerics_checked", export.get("numerics_checked")):
        return "structural only"
    psnr = v.get("psnr_db")
    value = "identical" if psnr is None and v.get("passed") else f"{psnr:.1f} dB"
    return f"{'pass' if v.get('passed') else 'FAIL'} {value}"


def _size(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def _f(v, digits: int = 2, signed: bool = False) -> str:
    if v is None or v is False:
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
