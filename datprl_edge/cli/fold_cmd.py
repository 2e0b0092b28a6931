"""`datprl-edge fold`: bake task prompts into static weights, or simplify exactly and keep routing."""

from __future__ import annotations

from datprl_edge.core.shapes import format_dims, parse_dims

MODES = ("static", "dynamic")


def register(subparsers):
    p = subparsers.add_parser(
        "fold", help="fold prompts: static per-task weights, or exact simplifications keeping routing",
        description="--mode static: compute each task's prompt from its calibration images (mean pool "
                    "weights) or from --domain-prompt/--task-prompt, and bake it into the student's convs: a "
                    "plain conv net, one checkpoint per task. --mode dynamic: exact algebraic "
                    "simplifications that keep input-adaptive routing (student or DATPRL-IR teacher). "
                    "Verifies folded vs unfolded outputs (PSNR >= --min-psnr, else refuses) and prints MACs "
                    "and torch latency before and after.")
    p.add_argument("model",
                   help="toolkit checkpoint (.safetensors), bundled:NAME, or a released .pth with --network")
    p.add_argument("--mode", required=True, help="static or dynamic")
    p.add_argument("--task", action="append", default=[], metavar="ID",
                   help="task id to fold (repeat for several); with dynamic: verify on these tasks' images")
    p.add_argument("--domain-prompt", metavar="I|W,W,..",
                   help="force the domain prompt (pool index or weights)")
    p.add_argument("--task-prompt", metavar="I|W,W,..", help="force the task prompt (pool index or weights)")
    p.add_argument("--network", metavar="CFG",
                   help="YAML/JSON with network_g, for a released .pth checkpoint")
    p.add_argument("--calib", default="all", metavar="RECIPE|DIR",
                   help="calibration recipe or built set the task images come from (default: all)")
    p.add_argument("--images", type=int, metavar="N",
                   help="images per task (default: the recipe's count; dynamic: 1 per task)")
    p.add_argument("--crop", type=int, metavar="PX", help="image size (default: the recipe's; dynamic: 128)")
    p.add_argument("--min-psnr", type=float, default=60.0, metavar="DB",
                   help="refuse when folded vs unfolded PSNR is below this (default 60)")
    p.add_argument("--shape", default="1x3x256x256",
                   help="input for the MAC count and latency (default 1x3x256x256)")
    p.add_argument("--latency-iters", type=int, default=10,
                   help="timed runs per latency figure (0 skips timing)")
    p.add_argument("--threads", type=int, help="torch threads for the latency measurement")
    p.add_argument("-o", "--output", required=True,
                   help="output .safetensors (one task or dynamic) or folder (several tasks)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    from datprl_edge.core.errors import ConfigError, UnknownChoiceError
    from datprl_edge.io.atomic import check_output

    if args.mode not in MODES:
        raise UnknownChoiceError("fold mode", args.mode, MODES)
    inputs = [p for p in (args.model, args.network) if p and not str(p).startswith("bundled:")]
    out = check_output(args.output, overwrite=args.overwrite, inputs=inputs)
    if args.mode == "static" and not args.task:
        raise ConfigError("--mode static needs --task ID (repeat for several tasks)")
    if (args.domain_prompt is None) != (args.task_prompt is None):
        raise ConfigError("--domain-prompt and --task-prompt go together (a static fold fixes both prompts)")
    if args.domain_prompt is not None and args.mode != "static":
        raise ConfigError("--domain-prompt/--task-prompt fix the prompt: they need --mode static")
    single = args.mode == "dynamic" or len(args.task) == 1
    if single and out.suffix.lower() != ".safetensors":
        raise ConfigError(f"the folded checkpoint is a .safetensors file, got {out.name}")
    if not single and out.suffix:
        raise ConfigError(f"{len(args.task)} tasks write one checkpoint each into a folder: -o names a "
                          f"folder, got {out.name}")

    from datprl_edge.data.tasks import get_task

    for task in args.task:
        get_task(task)  # a typo fails before anything is loaded, with a "did you mean"

    from datprl_edge.fold.folding import FoldConfig, fold_dynamic, fold_static, save_fold
    from datprl_edge.models.student_blocks import PromptOverride
    from datprl_edge.sources import locate_model

    override = None
    if args.domain_prompt is not None:
        override = PromptOverride(domain=_prompt_spec(args.domain_prompt, "--domain-prompt"),
                                  task=_prompt_spec(args.task_prompt, "--task-prompt"))
    config = FoldConfig(task=args.task, override=override, calibration=args.calib, images=args.images,
                        crop=args.crop, min_psnr_db=args.min_psnr, shape=parse_dims(args.shape),
                        latency_iters=args.latency_iters, threads=args.threads)
    source = locate_model(args.model, args.network)
    model = source.load()

    def log(msg):
        print(f"[fold] {msg}", flush=True)

    result = (fold_static if args.mode == "static" else fold_dynamic)(model, config, log=log)
    provenance = {"source": str(args.model), "source_sha256": source.sha256, "calibration": args.calib}
    written = save_fold(result, out, provenance=provenance, overwrite=args.overwrite)
    print(summary(result))
    for p in written:
        print(f"wrote {p}")
    return 0


def _prompt_spec(text: str, flag: str):
    from datprl_edge.core.errors import ConfigError

    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        if len(parts) == 1 and parts[0].lstrip("-").isdigit():
            return int(parts[0])
        return [float(s) for s in parts]
    except ValueError:
        raise ConfigError(f"{flag} takes a pool index or comma-separated weights, got {text!r}") from None


def summary(result) -> str:
    c = result.complexity
    before = c["before"]
    shape = format_dims(c["shape"])
    lines = [f"{result.mode} fold of {result.name} ({result.base_arch}) -> {result.arch}; MACs and torch "
             f"latency at {shape}"]
    rows = [("task", "verify dB", "vs auto dB", "GMAC before", "GMAC after", "ms before", "ms after")]
    for key, after in c["after"].items():
        v = result.verification[key or "all"]
        auto = _db(v["psnr_vs_auto_db"]) if "psnr_vs_auto_db" in v else "-"
        rows.append((key or "(all)", _db(v["psnr_db"]), auto, f"{before['macs'] / 1e9:.4f}",
                     f"{after['macs'] / 1e9:.4f}", _ms(before), _ms(after)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("verify: worst-image PSNR folded vs unfolded (same prompt); vs auto: against the "
                 "auto-routed model (informational)")
    lines += [f"  - {s}" for s in result.simplifications]
    return "\n".join(lines)


def _db(v) -> str:
    return "inf" if v == float("inf") else f"{v:.1f}"


def _ms(m) -> str:
    return "n/a" if m["latency_ms"] is None else f"{m['latency_ms']:.2f}"
