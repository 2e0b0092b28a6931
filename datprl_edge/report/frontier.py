"""The report's "Student family" section: each member's INT8/FP32 OpenVINO latency and held-out
quality (benchmarks/frontier.py's `frontier.json`, found beside the headline suites) as a table and
the frontier plot."""

from __future__ import annotations

from datprl_edge.report import html as H
from datprl_edge.report.plots import frontier_plot
from datprl_edge.report.tables import Table

TITLE = "Student family: latency vs quality"


def frontier_doc(docs: list) -> dict | None:
    return next((d for d in docs if d.get("suite") == "frontier"), None)


def frontier_table(doc: dict | None) -> Table:
    header = ["member", "params", "GMAC @256", "FP32 p50 ms", "INT8 p50 ms", "INT8 vs 6T",
              "FP32 gain dB (val)", "INT8 gain dB (val)", "INT8 gain dB (shifted)", "INT8 tasks above input"]
    if not doc:
        return Table("frontier", TITLE, "No frontier results (benchmarks/results/frontier.json, written by "
                     "benchmarks/frontier.py).", header, [])
    rows = []
    for name, m in doc.get("members", {}).items():
        ms, q = m.get("openvino_ms", {}), m.get("quality", {})
        int8 = q.get("openvino_int8", {})
        above = f"{int8['val']['tasks_above_input']}/{len(int8['val']['tasks'])}" if "val" in int8 else "-"
        rows.append([name, f"{m.get('params', 0) / 1e6:.2f} M", f"{m.get('gmacs', 0):.3f}",
                     _ms(ms.get("openvino_fp32")), _ms(ms.get("openvino_int8")),
                     f"{m.get('speedup_vs_6t_mean', {}).get('openvino_int8', 0):.0f}x",
                     _gain(q.get("openvino_fp32", {}).get("val")), _gain(int8.get("val")),
                     _gain(int8.get("shifted")), above])
    full = doc.get("latency", {}).get("full_6t_ms", {})
    env = doc.get("environment", {})
    caption = (f"From frontier.json ({doc.get('created', '?')}, {doc.get('threads', '?')} threads, "
               f"{env.get('cpu_model', '?')}, {env.get('isa', '?')}): OpenVINO CPU p50 at 256x256, median of "
               f"{len(doc.get('latency', {}).get('rounds', []))} alternating rounds; the 6T full model "
               f"(FP32 OpenVINO, random weights) {full.get('mean', 0):.0f} ms mean in the same run. Gains: "
               "mean PSNR over the degraded input on quality.py's held-out val and shifted sets "
               "(9 tasks x 16 images), scored on the artifacts themselves.")
    return Table("frontier", TITLE, caption, header, rows, numeric=tuple(range(1, 10)))


def frontier_html(docs: list) -> str:
    """The section, or "" where no frontier results were found (the targets table says so)."""
    doc = frontier_doc(docs)
    if not doc:
        return ""
    png = frontier_plot(doc)
    return H.table_html(frontier_table(doc)) + (H.image_html(png, "student family frontier plot", "")
                                               if png else "")


def frontier_markdown(docs: list) -> str:
    doc = frontier_doc(docs)
    return H.table_md(frontier_table(doc)) if doc else ""


def _ms(v) -> str:
    return f"{v['p50']:.1f}" if v else "-"


def _gain(s) -> str:
    return f"{s['mean_gain_db']:+.2f}" if s else "-"
