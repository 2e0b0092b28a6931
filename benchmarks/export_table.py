"""Artifact size and parity of the bundled student for every target x precision this platform allows.

    .venv/bin/python benchmarks/export_table.py [--out DIR] [-o benchmarks/results/export_table.json]

Exports what `datprl-edge export --target all --precision all` exports with no MODEL
(`datprl_edge.sources.export_sources`: the float artifacts from bundled:edge-xs and each INT8 artifact
from that target's shipped QAT weights, when installed) and tabulates size, parity PSNR and max abs
diff from the reports the export writes. Core ML off macOS is verified structurally only (the table says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "export_table.json"


def main(argv=None) -> int:
    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.sources import export_sources

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="artifact folder (default: a temporary one)")
    ap.add_argument("-o", "--output", default=str(OUT))
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cmd = ["export", "--target", "all", "--precision", "all", "-o", str(out / "artifacts")]
        t0 = time.time()
        for config, model, _ in export_sources(None, ExportConfig(targets="all", precision="all")):
            export_model(model, config, out / "artifacts")
        order = {p: i for i, p in enumerate(("fp32", "fp16", "int8"))}
        reports = sorted((json.loads(f.read_text()) for f in (out / "artifacts").glob("*.json")),
                         key=lambda r: (r["target"], order[r["precision"]]))
    rows = []
    fp32 = {r["target"]: r["size_bytes"] for r in reports if r["precision"] == "fp32"}
    for r in reports:
        v = r["verification"]
        rows.append({"artifact": r["artifact"], "target": r["target"], "precision": r["precision"],
                     "size_bytes": r["size_bytes"],
                     "size_vs_fp32": round(fp32[r["target"]] / r["size_bytes"], 2) if r["target"] in fp32
                     else None,
                     "parity_psnr_db": v.get("psnr_db"), "max_abs_diff": v.get("max_abs_diff"),
                     "exact_int8_psnr_db": v.get("exact_int8_psnr_db"),
                     "exact_int8_max_abs_diff": v.get("exact_int8_max_abs_diff"),
                     "reference": v.get("reference"), "numerics_checked": r["numerics_checked"],
                     "threshold_db": v.get("threshold_db"), "note": v.get("note", ""),
                     "weights": r["notes"].get("int8_source", "bundled:edge-xs"),
                     "source_sha256": r["metadata"].get("source_sha256")})
    from datprl_edge.core.host import isa_block

    doc = {"suite": "export_table", "command": "python benchmarks/export_table.py",
           "cli": "datprl-edge " + " ".join(cmd[:-1]) + " DIR",
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 1),
           "platform": {"system": platform.system(), "machine": platform.machine(),
                        "python": platform.python_version(), **isa_block()},
           "rows": rows}
    write_text_atomic(Path(args.output), json.dumps(doc, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.output}")
    return 0


def table(rows) -> str:
    lines = ["| artifact | size KiB | vs FP32 | parity PSNR dB | max abs diff | checked against |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        psnr = "-" if r["parity_psnr_db"] is None else f"{r['parity_psnr_db']:.2f}"
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        ratio = "-" if r["size_vs_fp32"] is None else f"{r['size_vs_fp32']:.2f}x"
        ref = r["reference"] if r["numerics_checked"] else "structural only (needs macOS)"
        size = f"{r['size_bytes'] / 1024:.0f}"
        lines.append(f"| {r['artifact']} | {size} | {ratio} | {psnr} | {diff} | {ref} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
