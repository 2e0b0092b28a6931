"""`datprl-edge export`: ONNX / OpenVINO / Core ML artifacts at FP32/FP16/INT8, each verified
against PyTorch before it is kept, with metadata embedded and a JSON report beside it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError, InputNotFoundError

DEFAULT_MODEL = "bundled:edge-xs"
DEFAULT_OUTPUT = "artifacts"
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


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
                        "student, bundled:edge-xs)")
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
                   help="INT8 from a float model: QAT steps (0 = post-training quantization, the default)")
    p.add_argument("--tile", type=int, metavar="N", help="recommended tile size stored in the metadata (256)")
    p.add_argument("--overlap", type=int, metavar="N", help="recommended tile overlap (16)")
    p.add_argument("--compute-units", metavar="U", help="Core ML: ALL, CPU_AND_NE, CPU_AND_GPU or CPU_ONLY")
    p.add_argument("--verify-images", type=int, metavar="N", help="images to verify on (default 2)")
    p.add_argument("--verify-size", metavar="HxW", help="their size for dynamic artifacts (default 100x124)")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON with the network_g block of a released .pth")
    p.add_argument("--name", metavar="NAME", help="model name used in artifact names and metadata")
    p.add_argument("--overwrite", action="store_true", help="replace existing artifacts")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..export import export_model
    from ..export_config import ExportConfig, load_profile, parse_hw

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
                       ("qat_steps", args.qat_steps), ("tile_size", args.tile),
                       ("tile_overlap", args.overlap), ("compute_units", args.compute_units),
                       ("verify_images", args.verify_images)):
        if value is not None:
            fields[key] = value
    if args.verify_size:
        fields["verify_size"] = parse_hw(args.verify_size)
    probe = ExportConfig(**fields)  # validates options before any model is loaded
    reports, labels = [], []

    def say(msg):
        print(f"datprl-edge: {msg}", file=sys.stderr, flush=True)

    output = Path(args.output) if args.output else Path.cwd() / DEFAULT_OUTPUT
    if not args.output:
        say(f"writing to {output} (the default; -o DIR picks another folder)")
    for fields_part, source in _export_plan(args, fields, probe):
        model, info = source if isinstance(source, tuple) else load_source(source, args.network, probe)
        config = ExportConfig(**fields_part, model_name=args.name or info["name"],
                              source_sha256=info["sha256"], overwrite=args.overwrite)
        reports += export_model(model, config, output, progress=say)
        labels.append(info["label"])
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    else:
        print("model: " + "; ".join(dict.fromkeys(labels)))
        print(format_reports(reports))
    return 0


def _export_plan(args, fields: dict, probe) -> list:
    """[(config fields, model spec or loaded (model, info))]: one export of MODEL, except that with
    no MODEL every target's INT8 artifact comes from that target's shipped QAT weights (when they
    are installed) and the other precisions from the bundled float student."""
    if args.model is not None or probe.task or "int8" not in (probe.precision or "").split(","):
        return [(fields, args.model)]  # --task folds the float student first, then quantizes it
    shipped = {t: _bundled_int8(t) for t in probe.targets}
    shipped = {t: p for t, p in shipped.items() if p is not None}
    if not shipped:
        return [(fields, args.model)]
    plan = []
    for target, path in shipped.items():
        model, info = _load_qat(path, f"{DEFAULT_MODEL} (shipped QAT weights {path.name})")
        info["name"] = DEFAULT_MODEL.partition(":")[2]  # edge-xs_<target>_int8 beside its fp32/fp16 files
        plan.append((dict(fields, targets=(target,), precision="int8"), (model, info)))
    rest_targets = [t for t in probe.targets if t not in shipped]
    if rest_targets:
        plan.append((dict(fields, targets=tuple(rest_targets)), None))
    others = [p for p in (probe.precision or "").split(",") if p and p != "int8"]
    if others:
        plan.append((dict(fields, targets=tuple(shipped), precision=",".join(others)), None))
    return plan


def load_source(spec, network, config):
    """(model or QAT result, info) for the MODEL argument; info has name, sha256 and a label."""
    from ..checkpoint import read_checkpoint_config, sha256_file
    from ..models.loading import BUNDLED_PREFIX, WEIGHTS_DIR, bundled_path, load_model

    if spec is None:
        if not (WEIGHTS_DIR / f"{DEFAULT_MODEL[len(BUNDLED_PREFIX):]}.safetensors").is_file():
            raise InputNotFoundError("no bundled student in this install (bundled:edge-xs is missing); "
                                     "pass a checkpoint, bundled:NAME or a registry name such as edge-xs")
        spec = DEFAULT_MODEL
    spec = str(spec)
    if spec.startswith(BUNDLED_PREFIX):
        path = bundled_path(spec[len(BUNDLED_PREFIX):])
        model = load_model(spec)
        return model, {"name": spec[len(BUNDLED_PREFIX):], "sha256": sha256_file(path), "label": spec}
    path = Path(spec)
    if path.exists():
        if network is None and path.suffix == ".safetensors" and read_checkpoint_config(path).stage == "qat":
            return _load_qat(path, str(path))
        model = load_model(path, network=network)
        return model, {"name": path.stem, "sha256": sha256_file(path), "label": str(path)}
    if os.sep in spec or "/" in spec or spec.lower().endswith(_CHECKPOINT_SUFFIXES):
        raise InputNotFoundError(f"model file not found: {spec}")
    from ..models.registry import create_model

    model = create_model(spec)  # unknown names raise with a "did you mean"
    return model, {"name": spec, "sha256": "random-init",
                   "label": f"{spec} (random init: registry name, no trained weights)"}


def _bundled_int8(target: str):
    """The shipped QAT weights of the bundled student for `target`, if installed."""
    from ..models.loading import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"edge-xs-int8-{target}.safetensors"
    return path if path.is_file() else None


def _load_qat(path, label):
    from ..checkpoint import sha256_file
    from ..qat import load_qat

    result = load_qat(path)
    return result, {"name": Path(path).stem, "sha256": sha256_file(path),
                    "label": f"{label} (QAT checkpoint)"}


def format_reports(reports) -> str:
    from .zoo_cmd import format_table

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
    return format_table(rows) + "".join(f"\n{n}" for n in notes)
