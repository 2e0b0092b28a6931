"""`datprl-edge export`: ONNX / OpenVINO / Core ML artifacts at FP32/FP16/INT8, each verified
against PyTorch before it is kept, with metadata embedded and a JSON report beside it."""

from __future__ import annotations

import sys
from pathlib import Path

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.targets import COMPUTE_UNITS
from datprl_edge.export.config import FOLDED_QAT_STEPS
from datprl_edge.sources import DEFAULT_STUDENT as DEFAULT_MODEL

DEFAULT_OUTPUT = "artifacts"


def register(subparsers):
    p = subparsers.add_parser(
        "export",
        help="export to ONNX, OpenVINO or Core ML (fp32/fp16/int8), verified against PyTorch",
        description="Export a model to deployment artifacts. Each one runs in its runtime on a few images "
                    "and is kept only if it matches PyTorch (PSNR >= 60 dB FP32, 45 dB FP16, 40 dB INT8 "
                    "against the fake-quant model); Core ML off macOS is checked structurally only.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="checkpoint, QAT checkpoint, bundled:NAME or registry name (default: the bundled "
                        f"student, {DEFAULT_MODEL}; INT8 from each target's shipped QAT weights)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help=f"output folder (default: ./{DEFAULT_OUTPUT} under the current folder)")
    p.add_argument("--target", metavar="T", help="onnx, openvino, coreml, all, or a comma list")
    p.add_argument("--precision", metavar="P",
                   help="fp32, fp16, int8, a comma list or all (default: fp16 for Core ML, else fp32)")
    p.add_argument("--profile", metavar="NAME", help="target profile from export/*.toml (or a .toml path)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--shape", nargs="+", metavar="HxW",
                       help="static input size; several sizes make Core ML enumerated shapes")
    shape.add_argument("--dynamic", action="store_true", help="dynamic height and width (the default)")
    p.add_argument("--task", metavar="ID", help="fold the prompts for this task (e.g. medical/ct_denoise)")
    p.add_argument("--calibration", metavar="RECIPE",
                   help="calibration recipe (name or .toml) or built set folder: the verification images, "
                        "the INT8 ranges of a float model and the --task fold (default: bundled samples "
                        "for verification, recipe 'all' otherwise)")
    p.add_argument("--qat-steps", type=int, metavar="N",
                   help=f"INT8 from a float model: QAT steps (0 = post-training quantization; default "
                        f"{FOLDED_QAT_STEPS} with --task, else 0)")
    p.add_argument("--max-drop", type=float, metavar="DB",
                   help="INT8 from a float model: keep the most sensitive layers float until its worst-task "
                        "PSNR drop against the float model (held-out pairs) is at most DB; fails otherwise")
    p.add_argument("--tile", type=int, metavar="N", help="recommended tile size stored in the metadata (256)")
    p.add_argument("--overlap", type=int, metavar="N", help="recommended tile overlap (16)")
    p.add_argument("--compute-units", metavar="U", help=f"Core ML: {', '.join(COMPUTE_UNITS)}")
    p.add_argument("--verify-images", type=int, metavar="N", help="images to verify on (default 2)")
    p.add_argument("--verify-size", metavar="HxW", help="their size for dynamic artifacts (default 100x124)")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON with the network_g block of a released .pth")
    p.add_argument("--name", metavar="NAME", help="model name used in artifact names and metadata")
    p.add_argument("--overwrite", action="store_true", help="replace existing artifacts")
    p.add_argument("--plain-onnx", action="store_true",
                   help="ONNX: write the graph as traced, without the rewrites for onnxruntime's kernels")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from datprl_edge.core.shapes import parse_hw
    from datprl_edge.export.config import ExportConfig, load_profile
    from datprl_edge.export.driver import export_model
    from datprl_edge.sources import export_sources

    fields = load_profile(args.profile) if args.profile else {}
    if args.target:
        fields["targets"] = (args.target,)
    if "targets" not in fields:
        raise ConfigError("say what to export: --target onnx|openvino|coreml|all, or --profile NAME")
    if args.shape:
        fields["shapes"] = tuple(parse_hw(s) for s in args.shape)
    elif args.dynamic:
        fields["shapes"] = ()
    for key, value in (("precision", args.precision), ("task", args.task), ("calibration", args.calibration),
                       ("qat_steps", args.qat_steps), ("max_drop", args.max_drop), ("tile_size", args.tile),
                       ("tile_overlap", args.overlap), ("compute_units", args.compute_units),
                       ("verify_images", args.verify_images)):
        if value is not None:
            fields[key] = value
    if args.verify_size:
        fields["verify_size"] = parse_hw(args.verify_size)
    config = ExportConfig(**fields, model_name=args.name, overwrite=args.overwrite,
                          onnx_rewrites=not args.plain_onnx)  # checked before loading
    reports, labels = [], []

    def say(msg):
        print(f"datprl-edge: {msg}", file=sys.stderr, flush=True)

    output = Path(args.output) if args.output else Path.cwd() / DEFAULT_OUTPUT
    if not args.output:
        say(f"writing to {output} (the default; -o DIR picks another folder)")
    for part, model, source in export_sources(args.model, config, args.network):
        reports += export_model(model, part, output, progress=say)
        labels.append(source.label)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    else:
        print("model: " + "; ".join(dict.fromkeys(labels)))
        print(format_reports(reports))
    return 0


def format_reports(reports) -> str:
    from datprl_edge.cli.zoo_cmd import format_table

    rows = [("artifact", "size", "PSNR dB", "max abs diff", "check")]
    notes = []
    for r in reports:
        v = r.verification
        psnr = "-" if v.psnr_db is None else f"{v.psnr_db:.2f}"
        diff = "-" if v.max_abs_diff is None else f"{v.max_abs_diff:.2e}"
        check = f"pass (>= {v.threshold_db:.0f} dB)" if v.numerics_checked else "structural only"
        rows.append((r.path.name, f"{r.size_bytes / 1024:.0f} KiB", psnr, diff, check))
        if not v.numerics_checked:
            notes.append(f"{r.path.name}: {v.note}")
        if r.notes.get("int8_source"):
            notes.append(f"{r.path.name}: INT8 from {r.notes['int8_source']}")
        drop = r.notes.get("int8_drop_db")
        if drop:
            per = ", ".join(f"{t} {d:+.3f}" for t, d in drop["tasks"].items())
            notes.append(f"{r.path.name}: PSNR drop against the float model, {drop['pairs']}: {per} dB")
            if drop.get("fidelity_db"):
                near = ", ".join(f"{t} {d:.1f}" for t, d in drop["fidelity_db"].items())
                notes.append(f"{r.path.name}: PSNR of its outputs against the float model's: {near} dB")
    return format_table(rows) + "".join(f"\n{n}" for n in notes)
