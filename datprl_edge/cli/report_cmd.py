"""`datprl-edge report RUN_DIR -o report.html`: the trade-off report of a run folder (HTML, with
Markdown and JSON beside it) and the recommended operating point."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser(
        "report",
        help="trade-off report of a run folder: tables, Pareto plot, per-task bars, visuals, recommendation",
        description="Write a self-contained HTML report (figures embedded) of a run folder made by "
                    "`datprl-edge pipeline` (or holding export, bench and eval JSON reports), with report.md "
                    "and report.json beside it. Every number is read from the run folder's JSON files. The "
                    "recommended operating point is the fastest artifact whose p50 latency is within "
                    "--budget-ms and whose worst-task PSNR drop against the eval reference is within "
                    "--max-drop.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run folder (pipeline output, or export/bench/eval JSONs)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html",
                   help="the HTML report; REPORT.md and REPORT.json are written beside it")
    p.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget: p50 at the benchmark shape")
    p.add_argument("--max-drop", type=float, default=None, metavar="DB",
                   help="largest worst-task PSNR drop against the eval reference (default 0.5 dB)")
    p.add_argument("--no-max-drop", action="store_true", help="do not limit the PSNR drop")
    p.add_argument("--shape", metavar="HxW",
                   help="benchmark shape the latency is read at (default: the first)")
    p.add_argument("--bench", nargs="+", default=[], metavar="BENCH.json",
                   help="bench reports from other devices (`datprl-edge bench --json` run there): their "
                        "results join the latency table, labelled by host")
    p.add_argument("--host", "--device", dest="host", metavar="TEXT",
                   help="the benchmark host the artifacts table, the plot and the recommendation use: a part "
                        "of its label (CPU model, ISA, OS, runtime versions; default: this machine if it "
                        "benchmarked, else the first host)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from datprl_edge.core.errors import ConfigError
    from datprl_edge.core.shapes import parse_hw
    from datprl_edge.report import DEFAULT_MAX_DROP, build_report

    if args.no_max_drop and args.max_drop is not None:
        raise ConfigError("give --max-drop DB or --no-max-drop, not both")
    max_drop = None if args.no_max_drop else (DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop)
    result = build_report(args.run_dir, Path(args.output), budget_ms=args.budget_ms, max_drop=max_drop,
                          shape=parse_hw(args.shape, "--shape") if args.shape else None,
                          bench_files=args.bench, host=args.host, overwrite=args.overwrite)
    rec = result.recommendation
    print(f"recommended: {rec.artifact}" if rec.artifact else "recommended: none")
    print(rec.reason)
    print(f"wrote {result.html} (+ {result.markdown.name}, {result.json.name})")
    return 0
