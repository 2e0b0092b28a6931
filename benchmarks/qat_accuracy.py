"""Per-task PSNR of the bundled student: FP32, PTQ and QAT (torch fake-quant) for each target's scheme.

    .venv/bin/python benchmarks/qat_accuracy.py [--max-drop 0.1] [--ship] [--threads 1]

For every target (onnx, openvino, coreml) it runs `datprl_edge.quantize.qat.run_qat` twice on the same
calibration recipe: 0 steps (PTQ: calibration only) and --steps QAT steps distilled from the FP32
model, then measures PSNR on the fixed validation pairs (`validation_set`, 'val' split) of every
recipe task. Writes benchmarks/results/qat_accuracy.json; --ship also writes the variant with the
smallest worst-task drop (PTQ, QAT or, with --max-drop, QAT with float layers) as
datprl_edge/weights/STUDENT-int8-<target>.safetensors (what `export --precision int8` uses; --student,
default edge-xs). Without bundled:STUDENT the numbers are for a random initialisation, marked so.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WEIGHTS = ROOT / "datprl_edge" / "weights"
OUT = ROOT / "benchmarks" / "results" / "qat_accuracy.json"


def student(path=None, name="edge-xs"):
    """(model, description, placeholder): `path`, else bundled:NAME, else a random NAME."""
    import torch

    from datprl_edge.models.registry import create_model
    from datprl_edge.sources import resolve_model

    if path:
        model = resolve_model(path)
        cmd = getattr(model, "datprl_checkpoint", None)
        cmd = cmd.provenance.get("command", "") if cmd is not None else ""
        return model, f"{path} (NOT the bundled student; made by: {cmd or 'unknown'})", True
    if (WEIGHTS / f"{name}.safetensors").is_file():
        return resolve_model(f"bundled:{name}"), f"bundled:{name}", False
    torch.manual_seed(0)
    return create_model(name), f"{name} random init (PLACEHOLDER: bundled:{name} not shipped yet)", True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="edge-xs", help="the bundled student (default edge-xs)")
    ap.add_argument("--model", help="a student checkpoint instead of bundled:STUDENT (marked as placeholder)")
    ap.add_argument("--targets", default="onnx,openvino,coreml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--gt-weight", type=float, default=None, help="QATConfig.gt_weight (default: its own)")
    ap.add_argument("--routing-weight", type=float, default=None,
                    help="QATConfig.routing_weight (default: its own)")
    ap.add_argument("--distill-loss", default=None,
                    help="QATConfig.distill_loss: l1 or psnr (default: its own)")
    ap.add_argument("--select-every", type=int, default=0,
                    help="QATConfig.select_every: keep the best step on the search pairs (0: the last)")
    ap.add_argument("--freeze-at", type=float, default=None, help="QATConfig.freeze_observers_at")
    ap.add_argument("--seed", type=int, default=0,
                    help="QATConfig.seed: training crops and calibration batches")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--calib", default="all", help="calibration recipe")
    ap.add_argument("--val-count", type=int, default=8)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--max-drop", type=float, default=None, help="also run the sensitivity search")
    ap.add_argument("--float-layers", default=None, metavar="L1,L2",
                    help="also run PTQ and QAT with these layers float (e.g. a --max-drop search's choice)")
    ap.add_argument("--ship", action="store_true", help="write weights/STUDENT-int8-<target>.safetensors: "
                    "the variant with the smallest worst-task drop, or --ship-variant")
    ap.add_argument("--ship-variant", default=None, metavar="NAME",
                    help="with --ship: ship this variant (ptq, qat, ptq_float_layers, qat_float_layers)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="merge per-target result files into --output")
    ap.add_argument("-o", "--output", default=str(OUT))
    args = ap.parse_args(argv)
    names = [name for name, *_ in variant_plan(args)]
    if args.ship_variant is not None and args.ship_variant not in names:
        ap.error(f"--ship-variant must be one of {', '.join(names)} with these options")
    if args.merge:
        return merge(args.merge, args.output)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from datprl_edge.core.host import isa_block
    from datprl_edge.core.metrics import METRIC_CONVENTION
    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.quantize.inputs import calibration_pairs, search_pairs, validation_pairs
    from datprl_edge.quantize.loop import evaluate
    from datprl_edge.quantize.qat import QATConfig, run_qat, save_qat
    from datprl_edge.quantize.routing import routing_agreement

    torch.manual_seed(0)
    model, model_desc, placeholder = student(args.model, args.student)
    calib, tasks = calibration_pairs(args.calib)
    val = validation_pairs(tasks, args.val_count, args.val_size)
    multiple = int(model.pad_multiple)
    fp32 = evaluate(model, val, multiple)
    report = {
        "model": model_desc, "placeholder": placeholder, "calibration": args.calib,
        "calibration_pairs": len(calib), "validation": f"validation_set(task, count={args.val_count}, "
                                                       f"size={args.val_size}, seed=0), 'val' split",
        "metric": "per-task mean PSNR (dB), output clipped to [0, 1] (datprl_edge.quantize.loop.evaluate)",
        "metrics": METRIC_CONVENTION,
        "int8_numerics": "torch fake-quant (the prepared QAT module)",
        "settings": {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "crop": args.crop,
                     "max_drop": args.max_drop, "gt_weight": args.gt_weight,
                     "routing_weight": args.routing_weight, "distill_loss": args.distill_loss,
                     "float_layers": args.float_layers, "freeze_observers_at": args.freeze_at,
                     "select_every": args.select_every, "seed": args.seed},
        "command": "python benchmarks/qat_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "cpu_threads": torch.get_num_threads(), **isa_block()},
        "fp32": fp32, "targets": {},
    }
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        row = {}
        variants = variant_plan(args)
        results = {}
        for name, steps, max_drop in variants:
            extra = {} if args.gt_weight is None else {"gt_weight": args.gt_weight}
            if args.routing_weight is not None:
                extra["routing_weight"] = args.routing_weight
            if args.distill_loss is not None:
                extra["distill_loss"] = args.distill_loss
            if name.endswith("_float_layers"):
                extra["float_layers"] = args.float_layers
            if args.freeze_at is not None:
                extra["freeze_observers_at"] = args.freeze_at
            if args.select_every and steps:
                extra["select_every"] = args.select_every
            # best_effort: a budget the search cannot meet is recorded as missed, not raised
            cfg = QATConfig(target=target, steps=steps, lr=args.lr, batch_size=args.batch_size,
                            crop=args.crop, seed=args.seed, max_drop=max_drop,
                            best_effort=max_drop is not None, **extra)
            t0 = time.time()
            selecting = cfg.max_drop is not None or cfg.select_every
            search = search_pairs(tasks, args.val_count, args.val_size) if selecting else None
            result = results[name] = run_qat(model, cfg, calib, val=val, search_val=search,
                             log=lambda m, t=target, n=name: print(f"[{t} {n}] {m}", flush=True))
            m = result.metrics
            row[name] = {"psnr": m["psnr_int8"], "drop_db": m["drop_db"],
                         "psnr_vs_fp32_output": m["psnr_int8_vs_fp32"],
                         "seconds": round(time.time() - t0, 1), "float_layers": list(result.float_layers)}
            if "sensitivity" in m:
                row[name]["sensitivity"] = m["sensitivity"]
            if "selection" in m:
                row[name]["selection"] = m["selection"]
            routing = routing_agreement(model, result.prepared, val, multiple)
            if routing is not None:
                row[name]["routing"] = routing
            d = m["drop_db"]
            print(f"{target} {name}: worst drop {d['worst']:+.3f} dB, mean {d['mean']:+.3f} dB", flush=True)
        row["stack"], row["scheme"] = result.scheme["stack"], result.scheme
        for name, *_ in variants:
            row[f"{name}_within_0.1db_every_task"] = row[name]["drop_db"]["worst"] <= 0.1
        report["targets"][target] = row
        if args.ship and not placeholder:
            best = args.ship_variant or ship_choice(row, list(results))
            row["shipped_variant"] = best
            path = save_qat(results[best], WEIGHTS / f"{args.student}-int8-{target}.safetensors",
                            {"command": report["command"], "source": f"bundled:{args.student}",
                             "calibration": args.calib})
            row["shipped"] = str(path.relative_to(ROOT))
            update_manifest(path, best, row[best]["drop_db"], args.student)
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def ship_choice(row: dict, names: list) -> str:
    """The variant with the smallest worst-task drop (the later one on a tie), never one whose search
    left every quantizable layer float: that is the FP32 model under another name."""
    int8 = [k for k in names if not row[k].get("sensitivity", {}).get("all_float")]
    return min(reversed(int8), key=lambda k: row[k]["drop_db"]["worst"])


def variant_plan(args) -> list[tuple]:
    """(name, QAT steps, max_drop) of each variant a target runs with these options."""
    variants = [("ptq", 0, None), ("qat", args.steps, None)]
    if args.max_drop is not None:
        variants.append(("qat_mixed", args.steps, args.max_drop))
    if args.float_layers:
        variants += [("ptq_float_layers", 0, None), ("qat_float_layers", args.steps, None)]
    return variants


def results_name(student: str) -> str:
    """Where a student's QAT accuracy is kept in benchmarks/results (run with -o, or merged, there)."""
    return OUT.name if student == "edge-xs" else f"{OUT.stem}_{student}.json"


def update_manifest(path: Path, variant: str, drop: dict, name: str = "edge-xs") -> None:
    """Record a shipped INT8 checkpoint in weights/MANIFEST.json (sha256, size, how it was made)."""
    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.io.checkpoint import read_checkpoint_config, sha256_file

    cfg = read_checkpoint_config(path)
    qcfg = cfg.extra.get("qat_config", {})
    manifest_path = WEIGHTS / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name] = {
        "arch": cfg.arch, "stage": cfg.stage, "target": cfg.extra.get("target"),
        "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "base": cfg.provenance.get("source"), "base_sha256": sha256_file(WEIGHTS / f"{name}.safetensors"),
        "variant": variant, "steps": cfg.extra.get("steps"), "lr": qcfg.get("lr"),
        "float_layers": cfg.extra.get("float_layers", []), "calibration": cfg.provenance.get("calibration"),
        "stack": cfg.extra.get("scheme", {}).get("stack"), "command": cfg.provenance.get("command"),
        "worst_task_drop_db": round(drop["worst"], 3), "mean_drop_db": round(drop["mean"], 3),
        "drop_measured_on": f"benchmarks/results/{results_name(name)} (fixed val pairs, torch fake-quant)",
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")


def merge(paths, output) -> int:
    """One report from runs of single targets (same model, data and settings) or earlier merged
    reports; a target in a later file replaces the same target in an earlier one."""
    from datprl_edge.io.atomic import write_text_atomic

    reports = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(reports[0], targets={})
    for r in reports:
        for key in ("model", "calibration", "validation"):
            if r[key] != out[key]:
                raise SystemExit(f"cannot merge: {key} differs between runs")
        # the FP32 scores must agree up to the thread count's rounding (0.001 dB)
        if any(abs(r["fp32"][t] - out["fp32"][t]) > 1e-3 for t in out["fp32"]):
            raise SystemExit("cannot merge: the FP32 scores differ between runs (another model or data?)")
        for row in r["targets"].values():  # QAT settings may differ per target: kept in each row
            if isinstance(r["settings"], dict):  # a merged report's rows already carry their own
                row["settings"], row["command"], row["env"] = r["settings"], r["command"], r["env"]
            if "shipped" in row and "shipped_variant" not in row:  # older runs shipped the last variant
                row["shipped_variant"] = "qat_mixed" if "qat_mixed" in row else "qat"
        out["targets"].update(r["targets"])
    out["settings"] = out["env"] = "per target (targets.<name>.settings / .env)"
    out["command"] = list(dict.fromkeys(row["command"] for row in out["targets"].values()))  # the kept rows'
    write_text_atomic(output, json.dumps(out, indent=2) + "\n")
    print(table(out))
    return 0


def table(report) -> str:
    names = {"ptq": "PTQ", "qat": "QAT", "qat_mixed": "QAT+mixed", "ptq_float_layers": "PTQ+float",
             "qat_float_layers": "QAT+float"}
    cols = [(t, k) for t, row in report["targets"].items() for k in names if k in row]
    rows = [["task", "FP32"] + [f"{t} {names[k]}" for t, k in cols]]
    for task in report["fp32"]:
        rows.append([task, f"{report['fp32'][task]:.2f}"]
                    + [f"{report['targets'][t][k]['psnr'][task]:.2f}" for t, k in cols])
    rows.append(["worst drop", ""] + [f"{report['targets'][t][k]['drop_db']['worst']:+.3f}" for t, k in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
