"""`build_report(run_dir, out_html)`: the trade-off report of a run folder as HTML, with the same
content as Markdown and JSON beside it (`report.md`, `report.json` for `-o report.html`)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from datprl_edge.core.errors import ConfigError
from datprl_edge.io.atomic import atomic_path, check_output
from datprl_edge.report import html as H
from datprl_edge.report.collect import RunData, collect
from datprl_edge.report.frontier import frontier_html, frontier_markdown
from datprl_edge.report.headline import load_headline
from datprl_edge.report.plots import pareto_front, pareto_plot, pareto_points, task_bars
from datprl_edge.report.recommend import DEFAULT_MAX_DROP, Recommendation, recommend
from datprl_edge.report.tables import Table, artifacts_table, latency_table, psnr_table, stages_table

SCHEMA = "datprl-edge-report/1"


@dataclasses.dataclass
class ReportResult:
    html: Path
    markdown: Path
    json: Path
    recommendation: Recommendation


def output_paths(out_html) -> tuple[Path, Path, Path]:
    out = Path(out_html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"the report is an .html file (its .md and .json go beside it), got {out.name}")
    return out, out.with_suffix(".md"), out.with_suffix(".json")


def build_report(run_dir, out_html, *, budget_ms: float | None = None,
                 max_drop: float | None = DEFAULT_MAX_DROP, shape=None, bench_files=(),
                 host: str | None = None, overwrite: bool = True) -> ReportResult:
    """Write the report of `run_dir` (plus bench reports from devices, `bench_files`, latencies read
    on `host`); every figure in it is read from those JSON files."""
    from datprl_edge.core.version import __version__

    paths = output_paths(out_html)
    run = collect(run_dir, bench_files, host)
    edge = load_headline(run_dir)
    inputs = [Path(run_dir) / p for files in run.sources.values() for p in files] + edge.files
    for p in paths:
        check_output(p, overwrite=overwrite, inputs=inputs)
    rec = recommend(run, budget_ms, max_drop, shape)
    shape = rec.shape
    tables = [artifacts_table(run, shape), psnr_table(run), latency_table(run), stages_table(run),
              candidates_table(rec)]
    by_key = {t.key: t for t in tables}
    pareto = pareto_plot(run, shape, rec.artifact) if shape else None
    bars = task_bars(run)
    visuals = _visual_pngs(run)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    title = f"datprl-edge trade-off report: {Path(run_dir).resolve().name}"
    meta = [f"Run folder {Path(run_dir).resolve()}; report written {created} by datprl-edge {__version__}.",
            _recipe_line(run)]
    sections = [_sources_html(run), H.table_html(by_key["artifacts"], rec.artifact),
                '<h2 id="pareto">Latency vs PSNR</h2>\n'
                + H.image_html(pareto, "latency vs PSNR Pareto plot",
                               "No artifact has both a measured latency and a measured PSNR.")
                + f'<p class="caption">{H.e(_pareto_caption(run, shape))}</p>\n',
                H.table_html(by_key["psnr"]), _harm_html(run),
                '<h2 id="bars">Per-task PSNR</h2>\n' + H.image_html(bars, "per-task PSNR bars",
                                                                     "No eval report: no per-task PSNR."),
                _visuals_html(run, visuals), H.table_html(by_key["candidates"], rec.artifact), edge.html(),
                frontier_html(edge.docs), H.table_html(by_key["latency"]), H.table_html(by_key["stages"])]
    page = H.page(title=title, meta_lines=[m for m in meta if m], recommendation=rec, sections=sections)
    md = "\n".join(t for t in (_markdown(title, meta, rec, run, tables), edge.markdown(),
                                frontier_markdown(edge.docs)) if t)
    data = {"schema": SCHEMA, "created": created, "run_dir": str(Path(run_dir).resolve()),
            "toolkit_version": __version__, "shape": shape, "recommendation": rec.to_dict(),
            "sources": run.sources, "artifacts": [_artifact_json(a, shape) for a in run.artifacts],
            "pareto_front": [p[0] for p in pareto_front(pareto_points(run, shape))] if shape else [],
            "tables": {t.key: {"title": t.title, "caption": t.caption, "header": t.header, "rows": t.rows}
                       for t in tables},
            "visuals": [v["task"] for v, _ in visuals], "headline": edge.to_dict()}
    for path, text in zip(paths, (page, md, json.dumps(data, indent=2) + "\n")):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return ReportResult(*paths, rec)


def candidates_table(rec: Recommendation) -> Table:
    rows = [[c.artifact, c.target, c.precision, _f(c.p50_ms), _f(c.mean_psnr), _f(c.worst_drop, signed=True),
             "recommended" if c.artifact == rec.artifact else (c.excluded or "eligible, slower")]
            for c in rec.candidates]
    limits = (f"--budget-ms {rec.budget_ms if rec.budget_ms is not None else 'none'}, --max-drop "
              f"{rec.max_drop if rec.max_drop is not None else 'none'} dB")
    return Table("candidates", "How the operating point was chosen",
                 f"Limits: {limits}. The recommended artifact is the fastest (p50) eligible one; ties go to "
                 "the higher mean PSNR. Drops are against the eval reference "
                 f"({rec.reference or 'none'}), worst task.",
                 ["artifact", "target", "precision", "p50 ms", "mean PSNR dB", "worst drop dB", "decision"],
                 rows, numeric=(3, 4, 5))


def _artifact_json(a, shape) -> dict:
    lat = a.latency(shape) if shape else None
    v = (a.export or {}).get("verification")
    return {"artifact": a.name, "target": a.target, "precision": a.precision, "size_bytes": a.size_bytes,
            "verification": v, "latency_ms": lat["latency_ms"] if lat else None,
            "latency_device": (lat.get("device") or lat.get("compute_units")) if lat else None,
            "latency_not_measured": None if lat else a.not_measured_reason(),
            "throughput": lat["throughput"] if lat else None,
            "peak_rss_mb": lat.get("peak_rss_mb") if lat else None,
            "psnr_per_task": {t: m.get("psnr") for t, m in a.per_task.items()} or None,
            "mean": (a.eval or {}).get("mean"), "worst_drop_db": a.worst_drop()}


def _visual_pngs(run: RunData) -> list:
    if not run.visuals:
        return []
    from datprl_edge.report.visuals import render_task

    return [(entry, render_task(entry, run.visuals_dir)) for entry in run.visuals.get("tasks", [])]


def _visuals_html(run: RunData, visuals: list) -> str:
    out = '<h2 id="visuals">Visual comparisons</h2>\n'
    if not visuals:
        return out + ('<p class="caption">This run folder has no visual comparisons (the pipeline\'s eval '
                      "stage writes them to eval/visuals).</p>\n")
    v = run.visuals
    out += (f'<p class="caption">One validation image per task ({v.get("size")}x{v.get("size")} px, seed '
            f'{v.get("seed")}): {H.e(v.get("what", ""))}. Titles: PSNR / SSIM against the ground '
            "truth.</p>\n")
    for entry, png in visuals:
        out += H.image_html(png, f"visual comparison {entry['task']}", "")
    return out


def _harm_html(run: RunData) -> str:
    """Thumbnails of the worst harmed image per model and task, where the eval saved crops of them."""
    from datprl_edge.report.tables import model_columns

    out = []
    for label, entry in model_columns(run)[1:]:
        for task, m in (entry.get("per_task") or {}).items():
            vis = m.get("harm_visual") if isinstance(m, dict) else None
            if not vis:
                continue
            images = []
            for name in ("ground truth", "input", "model"):
                path = run.run_dir / str(vis["files"].get(name, ""))
                if path.is_file() and path.suffix.lower() == ".png":
                    images.append((name, path.read_bytes()))
            if images:
                out.append(H.thumbs_html(images, f"{label}, {task}: harms {m['harm']}/{m.get('images', '?')} "
                                                 f"images; worst {vis.get('image')} "
                                                 f"({m.get('worst_gain_db', 0):+.2f} dB against the input), "
                                                 f"crop {vis.get('crop')} (top, left, side)."))
    if not out:
        return ""
    return ('<h2 id="harm">Harm: images worse than the input</h2>\n<p class="caption">For each model and '
            "task where the output is worse than the degraded input on some image: the crop of the worst "
            "image where the model adds the most error (ground truth, input, model).</p>\n" + "".join(out))


def _sources_html(run: RunData) -> str:
    items = []
    for kind, files in run.sources.items():
        if files:
            items.append(f"<li>{H.e(kind)}: " + ", ".join(f"<code>{H.e(f)}</code>" for f in files) + "</li>")
    from datprl_edge.report.tables import bench_caption, eval_caption

    items.append(f"<li>Latency: {H.e(bench_caption(run))}</li>")
    items.append(f"<li>PSNR/SSIM: {H.e(eval_caption(run))}</li>")
    items.append("<li>Export checks: each artifact's JSON from the export stage (its runtime against the "
                 "torch reference; Core ML off macOS only structurally).</li>")
    return ('<h2 id="sources">Where the numbers come from</h2>\n<p class="caption">Every number in this '
            "report is copied from these files of the run folder; nothing is estimated.</p>\n"
            '<ul class="src">'
            + "".join(items) + "</ul>\n")


def _pareto_caption(run: RunData, shape) -> str:
    if not shape:
        return ""
    pts = pareto_points(run, shape)
    front = [p[0] for p in pareto_front(pts)]
    missing = [a.name for a in run.artifacts if a.name not in {p[0] for p in pts}]
    text = (f"Each point is an artifact: p50 latency at {shape[0]}x{shape[1]} (bench stage) against mean "
            "PSNR over tasks (eval stage). Pareto front (no artifact is both faster and better): "
            f"{', '.join(front)}.")
    if missing:
        text += f" Not plotted (latency or PSNR not measured): {', '.join(missing)}."
    return text


def _recipe_line(run: RunData) -> str:
    p = run.pipeline
    if not p:
        return ""
    return (f"Pipeline recipe {p.get('recipe', '?')} ({p.get('recipe_path', '')}); "
            f"latest pipeline run started {p.get('started', '?')}.")


def _markdown(title, meta, rec, run, tables) -> str:
    lines = [f"# {title}", ""] + [m for m in meta if m] + [""]
    if rec.artifact:
        lines += [f"**Recommended operating point: `{rec.artifact}`**", "", rec.reason, ""]
    else:
        lines += ["**No recommended operating point**", "", rec.reason, ""]
    lines += ["Figures (Pareto plot, per-task bars, visual comparisons) are in the HTML report beside this "
              "file.", ""]
    return "\n".join(lines + [H.table_md(t) for t in tables])


def _f(v, signed=False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"
