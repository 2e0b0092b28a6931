"""The report's figures (matplotlib, Agg canvas, no pyplot state) as PNG bytes: the latency-vs-PSNR
Pareto plot and the per-task bars. They plot only values read from the run folder."""

from __future__ import annotations

import io
import math

from datprl_edge.core.targets import TARGETS
from datprl_edge.report.collect import RunData
from datprl_edge.report.tables import model_columns

TARGET_COLORS = {name: spec.color for name, spec in TARGETS.items()}
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}
DPI = 110


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def pareto_points(run: RunData, shape) -> list:
    """(artifact, target, precision, p50 ms, mean PSNR) for artifacts with both measured."""
    pts = []
    for a in run.artifacts:
        lat = a.latency(shape) if shape else None
        if lat is not None and a.mean_psnr() is not None:
            pts.append((a.name, a.target, a.precision, float(lat["latency_ms"]["p50"]), float(a.mean_psnr())))
    return pts


def pareto_front(points) -> list:
    """The points no other point beats on both latency (lower) and PSNR (higher), fastest first."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[3], -p[4])):
        if p[4] > best:
            front.append(p)
            best = p[4]
    return front


def pareto_plot(run: RunData, shape, recommended: str | None = None) -> bytes | None:
    pts = pareto_points(run, shape)
    if not pts:
        return None
    fig = _figure(8.5, 5.2)
    ax = fig.add_subplot()
    offsets = [(6, 6), (6, -12), (-8, 10), (-8, -16)]  # alternate so that neighbouring labels do not overlap
    for i, (_, target, precision, ms, psnr) in enumerate(sorted(pts, key=lambda p: p[3])):
        ax.scatter(ms, psnr, s=70, c=TARGET_COLORS.get(target, "#555555"),
                   marker=PRECISION_MARKERS.get(precision, "D"), edgecolors="black", linewidths=0.6, zorder=3)
        dx, dy = offsets[i % len(offsets)]
        ax.annotate(f"{target} {precision}", (ms, psnr), textcoords="offset points", xytext=(dx, dy),
                    fontsize=8, ha="left" if dx > 0 else "right")
    front = pareto_front(pts)
    if len(front) > 1:
        ax.step([p[3] for p in front], [p[4] for p in front], where="post", color="#888888", lw=1.2,
                ls="--", zorder=2, label="Pareto front")
    if recommended:
        for name, _, _, ms, psnr in pts:
            if name == recommended:
                ax.scatter(ms, psnr, s=260, facecolors="none", edgecolors="#ff9900", linewidths=2.2, zorder=4,
                           label=f"recommended: {name}")
    ev = run.eval or {}
    lines = [("degraded input", ev.get("input"), ":")]
    lines += [(label, entry, "-.") for label, entry in model_columns(run)[1:]
              if entry is not None and entry.get("kind") != "artifact"]
    for label, entry, style in lines:
        if entry and entry.get("mean", {}).get("psnr") is not None:
            ax.axhline(entry["mean"]["psnr"], color="#666666", ls=style, lw=1,
                       label=f"{label}: {entry['mean']['psnr']:.2f} dB (torch, latency not benchmarked)"
                       if label != "degraded input" else f"{label}: {entry['mean']['psnr']:.2f} dB")
    xs = [p[3] for p in pts]
    if max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    for t, color in TARGET_COLORS.items():
        if any(p[1] == t for p in pts):
            ax.scatter([], [], c=color, marker="o", label=t)
    for prec, marker in PRECISION_MARKERS.items():
        if any(p[2] == prec for p in pts):
            ax.scatter([], [], c="white", edgecolors="black", marker=marker, label=prec)
    ax.set_xlabel(f"p50 latency (ms) at {shape[0]}x{shape[1]}, batch 1")
    ax.set_ylabel("mean PSNR over tasks (dB)")
    ax.set_title("Latency vs quality (measured: bench and eval stages)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return png_bytes(fig)


def task_bars(run: RunData) -> bytes | None:
    ev = run.eval or {}
    tasks = ev.get("tasks", [])
    columns = [(label, entry) for label, entry in model_columns(run) if entry]
    if not tasks or not columns:
        return None
    import numpy as np

    ref = ev.get("reference")
    drop_cols = [(label, entry) for label, entry in columns
                 if entry.get("kind") == "artifact"
                 and any("psnr_drop_db" in m for m in entry["per_task"].values())]
    fig = _figure(max(9.0, 1.25 * len(tasks) + 3), 7.6 if drop_cols else 4.4)
    axes = fig.subplots(2 if drop_cols else 1, 1, squeeze=False)[:, 0]
    cmap = _colors(len(columns))
    x = np.arange(len(tasks))
    width = 0.8 / len(columns)
    values = []
    for i, (label, entry) in enumerate(columns):
        ys = [entry["per_task"].get(t, {}).get("psnr", np.nan) for t in tasks]
        values += [y for y in ys if y == y]
        axes[0].bar(x + (i - (len(columns) - 1) / 2) * width, ys, width, label=label, color=cmap[i])
    if values:
        lo, hi = min(values), max(values)
        axes[0].set_ylim(max(0.0, lo - 2.0), hi + 1.0)
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].set_title("PSNR per task (eval stage; the axis does not start at 0)")
    axes[0].set_xticks(x, [t.replace("/", "/\n") for t in tasks], fontsize=8)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(0, -0.22), frameon=False)
    axes[0].grid(True, axis="y", alpha=0.3)
    if drop_cols:
        ax = axes[1]
        w2 = 0.8 / len(drop_cols)
        for i, (label, entry) in enumerate(drop_cols):
            ys = [entry["per_task"].get(t, {}).get("psnr_drop_db", np.nan) for t in tasks]
            ax.bar(x + (i - (len(drop_cols) - 1) / 2) * w2, ys, w2, label=label,
                   color=cmap[columns.index((label, entry))])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("PSNR drop (dB)")
        ax.set_title(f"Drop against the reference {ref['model'] if ref else ''} per task "
                     "(artifacts; positive = worse)")
        ax.set_xticks(x, [t.replace("/", "/\n") for t in tasks], fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.subplots_adjust(hspace=0.9)
    return png_bytes(fig)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def frontier_plot(doc: dict) -> bytes | None:
    """The student family's frontier (benchmarks/frontier.py's JSON): INT8 and FP32 OpenVINO p50
    latency against mean PSNR gain over the input on the held-out val set, one line per member."""
    members = {n: m for n, m in (doc.get("members") or {}).items() if m.get("quality")}
    if not members:
        return None
    fig = _figure(8.0, 4.8)
    ax = fig.add_subplot()
    cmap = _colors(len(members))
    for i, (name, m) in enumerate(members.items()):
        pts = [(m["openvino_ms"][k]["p50"], m["quality"][k]["val"]["mean_gain_db"], k.rsplit("_", 1)[1])
               for k in ("openvino_fp32", "openvino_int8") if k in m["quality"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap[i], lw=1, zorder=2)
        for ms, gain, precision in pts:
            ax.scatter(ms, gain, s=70, color=cmap[i], marker=PRECISION_MARKERS.get(precision, "D"),
                       edgecolors="black", linewidths=0.6, zorder=3)
            ax.annotate(f"{name} {precision}\n{ms:.1f} ms, {gain:+.2f} dB", (ms, gain),
                        textcoords="offset points", xytext=(6, 6) if precision == "fp32" else (6, -24),
                        fontsize=7.5)
    full = (doc.get("latency") or {}).get("full_6t_ms")
    if full:
        ax.axvline(full["p50"] / 500.0, color="#aa3333", ls=":", lw=1,
                   label=f"500x faster than the 6T model ({full['p50'] / 500.0:.1f} ms)")
    for t in doc.get("targets", []):
        if t.get("unit") == "ms":
            ax.axvline(t["target"], color="#333333", ls="--", lw=1, label=f"target {t['target']:g} ms")
    ax.axhline(0, color="#666666", ls="-.", lw=1, label="degraded input")
    for prec in ("fp32", "int8"):
        ax.scatter([], [], c="white", edgecolors="black", marker=PRECISION_MARKERS[prec],
                   label=f"OpenVINO {prec}")
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.15 * (hi - lo))
    h, w = doc.get("shape", [256, 256])
    ax.set_xlabel(f"p50 latency (ms), OpenVINO CPU, {h}x{w}, {doc.get('threads', '?')} threads")
    ax.set_ylabel("mean PSNR gain over the input (dB), held-out val set")
    ax.set_title("Student family: latency vs quality (benchmarks/frontier.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return png_bytes(fig)
