"""`datprl-edge pipeline [--recipe quick]`: the main job. Teacher, distillation, calibration set, fold,
QAT, export of every target and precision, bench, eval and the report, in one run folder; stages
whose inputs and config are unchanged are skipped, so a killed run resumes where it stopped."""

from __future__ import annotations


def register(subparsers):
    from datprl_edge.pipeline.driver import STAGES  # torch-free

    p = subparsers.add_parser(
        "pipeline",
        help="the main job: teacher -> distill -> fold -> QAT -> export -> bench -> eval -> report",
        description="Run every stage of a recipe (recipes/*.toml) into one run folder: teacher, distill, "
                    "calib (calibration set), fold, qat, export (all targets and precisions the platform "
                    "allows), bench, eval and report. Each stage records a key (sha256 of its config, its "
                    "input files and its dependencies' keys) in RUN/<stage>/stage.json and is skipped on a "
                    "re-run while the key is unchanged, so a killed run resumes at the first unfinished "
                    "stage.")
    p.add_argument("--recipe", default="quick", metavar="NAME|PATH",
                   help="recipe name in recipes/ (quick, full) or a .toml path (default: quick)")
    p.add_argument("-o", "--run-dir", metavar="DIR", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help=f"re-run this stage and the stages after it that depend on it (repeatable, or all); "
                        f"stages: {', '.join(STAGES)}")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from datprl_edge.pipeline.driver import run_pipeline
    from datprl_edge.pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    force = [f.strip() for item in args.force for f in item.split(",") if f.strip()]
    print(f"datprl-edge pipeline: recipe {recipe.name!r} ({recipe.path}), run folder {run_dir}", flush=True)
    result = run_pipeline(recipe, run_dir, force=force, until=args.until,
                          log=lambda msg: print(msg, file=sys.stderr, flush=True))
    ran = [o.name for o in result.outcomes if o.result == "ran"]
    print(f"stages run: {', '.join(ran) or 'none (all up to date)'}; {result.seconds:.0f} s")
    if result.report.exists() and (args.until in (None, "report")):
        print(f"report: {result.report.resolve()}")
    return 0
