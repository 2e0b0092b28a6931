"""`datprl-edge calib`: build, list and check calibration sets for quantization."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("calib", help="build calibration sets from recipes")
    sub = p.add_subparsers(dest="calib_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="build the calibration set of a recipe")
    b.add_argument("recipe", help="recipe name (see `calib list`) or path to a .toml")
    b.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)

    ls = sub.add_parser("list", help="list the known recipes")
    ls.set_defaults(func=run_list)

    s = sub.add_parser("show", help="verify a built set against SHA256SUMS and print its coverage")
    s.add_argument("set_dir", help="a folder written by `calib build`")
    s.set_defaults(func=run_show)


def run_build(args) -> int:
    from datprl_edge.data.calib import build_calibration_set, format_coverage, load_calib_recipe

    recipe = load_calib_recipe(args.recipe)
    coverage = build_calibration_set(recipe, args.output, overwrite=args.overwrite, progress=not args.quiet)
    print(format_coverage(coverage))
    print(f"wrote {args.output} (coverage.json, SHA256SUMS)")
    return 0


def run_list(args) -> int:
    from datprl_edge.cli.zoo_cmd import format_table
    from datprl_edge.data.calib import list_recipes, load_calib_recipe

    rows = [("recipe", "tasks", "pairs", "description")]
    for name in list_recipes():
        r = load_calib_recipe(name)
        rows.append((name, str(len(r.tasks)), str(sum(t.count for t in r.tasks)), r.description))
    print(format_table(rows))
    return 0


def run_show(args) -> int:
    import json
    from pathlib import Path

    from datprl_edge.data.calib import format_coverage, verify_calibration_set

    verify_calibration_set(args.set_dir)
    coverage = json.loads((Path(args.set_dir) / "coverage.json").read_text(encoding="utf-8"))
    print(format_coverage(coverage))
    print("hashes OK")
    return 0
