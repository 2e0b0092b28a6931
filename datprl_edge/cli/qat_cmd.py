"""`datprl-edge qat`: INT8 quantization-aware training (or PTQ with --steps 0) for one target."""

from __future__ import annotations

from datprl_edge.core.targets import target_names

TARGETS = target_names()


def register(subparsers):
    p = subparsers.add_parser(
        "qat", help="INT8 quantization-aware training for a target (distilled from the FP32 model)",
        description="Quantize MODEL to INT8 with TARGET's quantizer (ONNX: torchao PT2E QDQ; OpenVINO: "
                    "NNCF; Core ML: coremltools LinearQuantizer), calibrate on a recipe, then fine-tune "
                    "against the FP32 model's (or --teacher's) output. --steps 0 gives the PTQ baseline.")
    p.add_argument("model", help="toolkit checkpoint (.safetensors) or bundled:NAME")
    p.add_argument("--target", required=True, help="onnx, openvino or coreml")
    p.add_argument("--calib", required=True, metavar="RECIPE",
                   help="calibration recipe (all, drone, medical-scanner, a .toml) or a built set folder")
    p.add_argument("--teacher", metavar="CKPT", help="distil from this model instead of the FP32 input model")
    p.add_argument("--steps", type=int, default=300,
                   help="QAT steps (0 = post-training quantization); default 300")
    p.add_argument("--max-drop", type=float, metavar="DB",
                   help="keep the most sensitive layers in float until the worst-task PSNR drop is <= DB")
    p.add_argument("--best-effort", action="store_true",
                   help="with --max-drop: save the closest result when the budget is not met (default: fail, "
                        "write nothing)")
    p.add_argument("--float-layers", default="", metavar="L1,L2",
                   help="layers to keep in float (module names; a block's name means all its layers, "
                        "e.g. decoders.0.0)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=64, help="training crop size (multiple of 8); default 64")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--routing-weight", type=float, default=0.0, metavar="W",
                   help="weight of matching the FP32 model's prompt-routing logits; default 0 (off)")
    p.add_argument("--distill-loss", default="l1", metavar="{l1,psnr}",
                   help="match to the FP32 output: l1 (default), or psnr (each image's dB gap counts alike, "
                        "so well-restored tasks such as CT are not outweighed)")
    p.add_argument("--select-every", type=int, default=0, metavar="N",
                   help="score the worst-task drop on separate training-image pairs every N steps and keep "
                        "the best step; default 0 (keep the last step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-count", type=int, default=4,
                   help="validation pairs per recipe task for the PSNR report and --max-drop "
                        "(0: held-out calibration pairs)")
    p.add_argument("--val-size", type=int, default=128, help="validation crop size; default 128")
    p.add_argument("--resume-dir", metavar="DIR", help="save resumable state here and resume from it")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="steps between resumable saves (with --resume-dir)")
    p.add_argument("-o", "--output", required=True, help="output QAT checkpoint (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from datprl_edge.core.errors import ConfigError, UnknownChoiceError
    from datprl_edge.io.atomic import check_output

    if args.target not in TARGETS:
        raise UnknownChoiceError("target", args.target, TARGETS)
    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise ConfigError(f"the QAT output is a .safetensors checkpoint, got {out.name}")
    inputs = [p for p in (args.model, args.teacher) if p and not str(p).startswith("bundled:")]
    check_output(out, overwrite=args.overwrite, inputs=inputs)

    from datprl_edge.quantize.inputs import calibration_pairs, search_pairs, validation_pairs
    from datprl_edge.quantize.qat import QATConfig, run_qat, save_qat
    from datprl_edge.sources import locate_model, resolve_model

    config = QATConfig(target=args.target, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                       lr=args.lr, float_layers=args.float_layers, max_drop=args.max_drop, seed=args.seed,
                       best_effort=args.best_effort, routing_weight=args.routing_weight,
                       distill_loss=args.distill_loss, select_every=args.select_every,
                       checkpoint_every=args.checkpoint_every)
    source = locate_model(args.model)
    model = source.load()
    teacher = resolve_model(args.teacher) if args.teacher else None
    calib, tasks = calibration_pairs(args.calib)
    val = validation_pairs(tasks, args.val_count, args.val_size) if args.val_count else None
    searching = (args.max_drop is not None and val) or (config.select_every and config.steps)
    search = search_pairs(tasks, max(args.val_count, 4), args.val_size) if searching else None
    result = run_qat(model, config, calib, teacher=teacher, val=val, search_val=search,
                     state_dir=args.resume_dir,
                     log=lambda msg: print(f"[qat] {msg}", flush=True))
    provenance = {"command": "qat", "source": str(args.model), "source_sha256": source.sha256,
                  "calibration": args.calib, "teacher": args.teacher or ""}
    save_qat(result, out, provenance)
    print(summary(result, out))
    return 0


def summary(result, out) -> str:
    m = result.metrics
    lines = [f"wrote {out}", f"target {result.target}: {result.scheme['stack']}; {result.source}",
             f"float layers: {', '.join(result.float_layers) or 'none'} (plus the prompt path, by design)"]
    if "psnr_fp32" in m:
        rows = [("task", "FP32 dB", "INT8 dB", "drop dB")]
        for task, ref in m["psnr_fp32"].items():
            q = m["psnr_int8"][task]
            rows.append((task, f"{ref:.2f}", f"{q:.2f}", f"{ref - q:+.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"worst-task drop {m['drop_db']['worst']:+.3f} dB ({m.get('val_source', '')})")
    sens = m.get("sensitivity")
    if sens is not None:
        verdict = "met" if sens.get("met") else "NOT met (--best-effort: the closest result was kept)"
        lines.append(f"--max-drop {sens['budget_db']:g} dB: {verdict}")
    return "\n".join(lines)
