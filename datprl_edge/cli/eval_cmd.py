"""`datprl-edge eval`: PSNR/SSIM per task of artifacts or models, and the drop against a reference."""

from __future__ import annotations

import shlex


def register(subparsers):
    p = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM per task (skimage.metrics), and the drop against a reference model",
        description="Score exported artifacts (.onnx, OpenVINO .xml, .mlpackage on macOS) or models "
                    "(checkpoints, bundled:NAME) per task with PSNR and SSIM from skimage.metrics. Data: "
                    "the fixed validation pairs of each task (--data val, the default) or a folder with "
                    "gt/ and lq/ (or one such pair of folders per task, e.g. DIR/medical/ct_denoise/gt). "
                    "With --reference, each model's drop against it is reported. Artifacts run without "
                    "torch.",
    )
    p.add_argument("models", nargs="+", metavar="ARTIFACT_OR_MODEL", help="artifacts or models to score")
    p.add_argument("--data", default="val", metavar="val|DIR", help="validation pairs (default) or a folder")
    p.add_argument("--task", action="append", metavar="ID",
                   help="task id or set (9task, natural5, all); repeatable. Default: an artifact's folded "
                        "task, else 9task (or every task folder under DIR)")
    p.add_argument("--reference", metavar="MODEL", help="report each model's PSNR/SSIM drop against this one")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON with the network_g block of a released .pth")
    p.add_argument("--count", type=int, default=8, metavar="N", help="validation pairs per task (8)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="validation crop size (256)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="validation seed (0)")
    p.add_argument("--baselines", action="store_true",
                   help="also score each task's classical methods (scikit-image, bm3d, ...; see "
                        "datprl_edge.evaluate.baselines), the best one chosen on the train split")
    p.add_argument("--json", metavar="OUT", help="write the full report (JSON) here")
    p.add_argument("--harm-visuals", action="store_true",
                   help="with --json: save crops of each model's worst harmed image per task (images where "
                        "it is worse than the input) beside OUT, in OUT_harm/, for the report")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from datprl_edge.evaluate.driver import EvalConfig, evaluate, summary_lines
    from datprl_edge.io.atomic import check_output, write_text_atomic

    if args.json:
        inputs = args.models + ([args.reference] if args.reference else [])
        check_output(args.json, overwrite=args.overwrite, inputs=inputs, suffix=".json", option="--json")
    if args.harm_visuals and not args.json:
        from datprl_edge.core.errors import ConfigError

        raise ConfigError("--harm-visuals writes beside the --json report; give --json OUT too")
    tasks = [t.strip() for item in args.task or [] for t in item.split(",") if t.strip()] or None
    config = EvalConfig(data=args.data, tasks=tasks, count=args.count, size=args.size, seed=args.seed,
                        reference=args.reference, network=args.network, baselines=args.baselines)
    harm_dir = None
    if args.harm_visuals:
        from pathlib import Path

        harm_dir = Path(args.json).with_name(Path(args.json).stem + "_harm")
        if harm_dir.exists() and not args.overwrite:
            from datprl_edge.core.errors import OutputExistsError

            raise OutputExistsError(f"{harm_dir} exists; pass --overwrite to replace it")
    report = evaluate(args.models, config, command=_command(args), progress=sys.stderr.isatty(),
                      harm_dir=harm_dir)
    print("\n".join(summary_lines(report)))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _command(args) -> str:
    parts = ["datprl-edge", "eval", *args.models, "--data", args.data]
    for t in args.task or []:
        parts += ["--task", t]
    for flag in ("reference", "network", "count", "size", "seed", "json"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    parts += [f"--{f.replace('_', '-')}" for f in ("baselines", "harm_visuals") if getattr(args, f, False)]
    return shlex.join(parts)
