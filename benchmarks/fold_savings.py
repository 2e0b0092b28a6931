"""What prompt folding saves: MACs and torch CPU latency before/after, per task (static) and per
model (dynamic), plus one-file-per-task vs a fixed task switch.

    python benchmarks/fold_savings.py [--student bundled:edge-xs] [--images 16] [--rounds 5]
        [--skip-large] [-o benchmarks/results/fold_savings.json]

Static: `fold_static` on each task of the `all` calibration recipe (the recipe's images; prompt =
mean pool weights), and restoration quality on held-out val pairs (`fold_quality.py`).
Switch (`fold_switch.py`): one module holding every task's conv1 weights stacked, selected by an
integer task input (`index_select` on the weights, what an exported graph with a task input does),
timed head to head with one per-task file in torch and in onnxruntime.
Dynamic: `fold_dynamic` on the student and the teachers (random init unless bundled weights exist).
Latency: `measure_latency` with one torch thread, interleaved over rounds so every variant sees the
same machine load; the figure is the median over rounds of each round's median (min also kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "fold_savings.json"
SHAPE = (1, 3, 256, 256)


def _load(spec: str, fallback: str):
    """(model, description): bundled/toolkit weights when they exist, else seeded random init."""
    import torch

    from datprl_edge import create_model, load_model
    from datprl_edge.core.errors import DatprlEdgeError

    if spec:
        try:
            model = load_model(spec)
            return model, f"{spec} (trained weights, sha256 {_sha256(spec)[:12]})"
        except DatprlEdgeError as e:
            print(f"note: {spec} unavailable ({e}); using random init", file=sys.stderr)
    torch.manual_seed(0)
    model = create_model(fallback)
    with torch.no_grad():  # make every path matter: NAFNet zero-inits beta/gamma (blocks are identity),
        for name, p in model.named_parameters():  # random pools hold near-identical prompts
            if name.endswith(("beta", "gamma")) and not p.any():
                p.normal_(0.0, 0.1)
            elif name.endswith("prompt_values"):
                p.normal_()
    return model, f"{fallback} random init (seed 0; pool values ~N(0,1), zero beta/gamma ~N(0,0.1))"


def _sha256(spec: str) -> str:
    from datprl_edge.io.checkpoint import sha256_file
    from datprl_edge.models.loading import BUNDLED_PREFIX, bundled_path

    return sha256_file(bundled_path(spec[len(BUNDLED_PREFIX):]) if spec.startswith(BUNDLED_PREFIX) else spec)


def interleaved_latency(models: dict, shape, rounds: int, iters: int, warmup: int = 2) -> dict:
    from datprl_edge.models.complexity import measure_latency

    per = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            per[name].append(measure_latency(m, shape, warmup=warmup, iters=iters, threads=1)["median_ms"])
    return {k: {"median_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3), "rounds": rounds,
                "iters": iters, "threads": 1} for k, v in per.items()}


def static_part(student, desc, images: int | None, rounds: int, iters: int) -> dict:
    from datprl_edge.data.calib import load_calib_recipe
    from datprl_edge.fold.folding import FoldConfig, fold_static

    tasks = [t.id for t in load_calib_recipe("all").tasks]
    config = FoldConfig(task=tasks, images=images, shape=SHAPE, latency_iters=0)
    t0 = time.perf_counter()
    result = fold_static(student, config, log=lambda m: print(f"  {m}", flush=True))
    fold_s = time.perf_counter() - t0
    variants = {"unfolded (auto-routed)": student, **{t: result.models[t] for t in tasks}}
    lat = interleaved_latency(variants, SHAPE, rounds, iters)
    before = lat["unfolded (auto-routed)"]
    rows = []
    for t in tasks:
        v, after = result.verification[t], result.complexity["after"][t]
        rows.append({"task": t, "macs_before": result.complexity["before"]["macs"],
                     "macs_after": after["macs"],
                     "ms_before": before["median_ms"], "ms_after": lat[t]["median_ms"],
                     "ms_before_min": before["min_ms"], "ms_after_min": lat[t]["min_ms"],
                     "params_before": result.complexity["before"]["params"], "params_after": after["params"],
                     "psnr_folded_vs_fixed_prompt_db": _db(v["psnr_db"]),
                     "psnr_folded_vs_auto_db": _db(v["psnr_vs_auto_db"]), "images": v["images"],
                     "image_size": v["size"], "prompt_top": [result.prompts[t]["domain_top"],
                                                              result.prompts[t]["task_top"]]})
    per_task_ms = [lat[t]["median_ms"] for t in tasks]
    switch = switch_part(student, result.models, rounds, iters)
    switch["per_task_file_ms_median_over_tasks"] = round(statistics.median(per_task_ms), 3)
    switch["per_task_file_ms_range"] = [min(per_task_ms), max(per_task_ms)]
    from fold_quality import quality_part

    quality = quality_part(student, result.models, images)
    return {"model": desc, "shape": list(SHAPE), "fold_seconds": round(fold_s, 1), "rows": rows,
            "switch": switch, "latency": lat, "quality_vs_ground_truth": quality}


def switch_part(student, models: dict, rounds: int, iters: int) -> dict:
    """One file per task vs a task switch: torch and onnxruntime latency head to head, size."""
    from fold_switch import check_switch, onnx_head_to_head, task_switch

    from datprl_edge.models.complexity import count_macs, count_params

    tasks = list(models)
    switch, fixed = task_switch(student, models)
    check_switch(switch, models)
    pair = {"file": models[tasks[0]], "switch": fixed(switch, 0)}
    duel = interleaved_latency(pair, SHAPE, 2 * rounds, iters)
    out = {"tasks": len(tasks), "compared_task": tasks[0],
           "torch": {"file_ms": duel["file"]["median_ms"], "switch_ms": duel["switch"]["median_ms"],
                     "file_min_ms": duel["file"]["min_ms"], "switch_min_ms": duel["switch"]["min_ms"],
                     "rounds": 2 * rounds, "iters": iters, "threads": 1},
           "macs_file": count_macs(pair["file"], SHAPE).total,
           "macs_switch": count_macs(pair["switch"], SHAPE).total,
           "params_file": count_params(models[tasks[0]]), "params_switch": count_params(switch)}
    try:
        out["onnxruntime"] = onnx_head_to_head(models[tasks[0]], switch, SHAPE, 2 * rounds, iters)
    except ImportError as e:
        out["onnxruntime"] = {"skipped": str(e)}
    return out


def dynamic_part(models: list, rounds: int, iters: int) -> list:
    from datprl_edge.fold.folding import FoldConfig, fold_dynamic

    out = []
    for spec, fallback, shape, r, it in models:
        model, desc = _load(spec, fallback)
        print(f"dynamic fold of {desc}", flush=True)
        config = FoldConfig(images=1, crop=64, shape=shape, latency_iters=0)
        result = fold_dynamic(model, config)
        lat = interleaved_latency({"before": model, "after": result.model}, shape, r or rounds, it or iters,
                                  warmup=1)
        c = result.complexity
        v = result.verification["all"]
        out.append({"model": desc, "arch": result.base_arch, "shape": list(shape),
                    "macs_before": c["before"]["macs"], "macs_after": c["after"][""]["macs"],
                    "params_before": c["before"]["params"], "params_after": c["after"][""]["params"],
                    "ms_before": lat["before"]["median_ms"], "ms_after": lat["after"]["median_ms"],
                    "ms_before_min": lat["before"]["min_ms"], "ms_after_min": lat["after"]["min_ms"],
                    "rounds": lat["before"]["rounds"], "iters": lat["before"]["iters"],
                    "psnr_folded_vs_unfolded_db": _db(v["psnr_db"]), "max_abs_diff": v["max_abs_diff"],
                    "images": v["images"], "image_size": v["size"],
                    "simplifications": result.simplifications})
        del model, result
    return out


def _db(v):
    from datprl_edge.fold.support import json_db

    return json_db(v)


def _pct(before, after):
    return f"{100 * (after - before) / before:+.1f} %"


def print_tables(res: dict) -> None:
    s = res["static"]
    print(f"\nstatic fold, {s['model']}, {'x'.join(map(str, s['shape']))}, torch 1 thread")
    print(f"{'task':24} {'GMAC before':>11} {'GMAC after':>10} {'MACs':>8} {'ms before':>9} {'ms after':>8} "
          f"{'latency':>8} {'verify dB':>9} {'vs auto dB':>10}")
    for r in s["rows"]:
        print(f"{r['task']:24} {r['macs_before'] / 1e9:11.4f} {r['macs_after'] / 1e9:10.4f} "
              f"{_pct(r['macs_before'], r['macs_after']):>8} {r['ms_before']:9.2f} {r['ms_after']:8.2f} "
              f"{_pct(r['ms_before'], r['ms_after']):>8} {r['psnr_folded_vs_fixed_prompt_db']!s:>9} "
              f"{r['psnr_folded_vs_auto_db']!s:>10}")
    w = s["switch"]
    lo, hi = w["per_task_file_ms_range"]
    t, o = w["torch"], w.get("onnxruntime", {})
    print(f"per-task files: {w['per_task_file_ms_median_over_tasks']:.2f} ms median over tasks (identical "
          f"graphs range {lo:.2f}-{hi:.2f}); head to head ({w['compared_task']}, {t['rounds']} rounds): "
          f"torch file {t['file_ms']:.2f} ms vs switch {t['switch_ms']:.2f} ms")
    if "file_ms" in o:
        print(f"onnxruntime head to head: file {o['file_ms']:.2f} ms vs switch {o['switch_ms']:.2f} ms; "
              f"session load {o['file_load_ms']:.1f} ms per task file")
    print(f"params: {w['params_file']} per file ({w['tasks']} files) vs {w['params_switch']} in the switch")
    print("\nrestoration PSNR vs ground truth on held-out val pairs (dB): input / auto-routed / fold (mean "
          "pool weights) / fold (mean prompt)")
    for q in s["quality_vs_ground_truth"]:
        print(f"{q['task']:24} {q['psnr_input_db']:6.2f} {q['psnr_auto_db']:6.2f} "
              f"{q['psnr_fold_mean_weights_db']:6.2f} {q['psnr_fold_mean_prompt_db']:6.2f}")
    print("\ndynamic fold (exact, routing kept)")
    for r in res["dynamic"]:
        print(f"{r['model']:44} {'x'.join(map(str, r['shape'])):>11} GMAC {r['macs_before'] / 1e9:.3f} -> "
              f"{r['macs_after'] / 1e9:.3f} ({_pct(r['macs_before'], r['macs_after'])}), ms "
              f"{r['ms_before']:.1f} -> {r['ms_after']:.1f} ({_pct(r['ms_before'], r['ms_after'])}), "
              f"verify {r['psnr_folded_vs_unfolded_db']} dB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="bundled:edge-xs")
    ap.add_argument("--teacher", default="bundled:teacher-ref")
    ap.add_argument("--images", type=int, help="calibration images per task (default: the recipe's 16)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--skip-large", action="store_true", help="skip restormer-6t and nafnet-default")
    ap.add_argument("-o", "--output", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    student, desc = _load(args.student, "edge-xs")
    load = os.getloadavg()
    static = static_part(student, desc, args.images, args.rounds, args.iters)
    models = [("", "edge-xs", SHAPE, 0, 0), (args.teacher, "restormer-ref", SHAPE, 0, 0)]
    if not args.skip_large:
        small = (1, 3, 128, 128)
        models += [("", "nafnet-default", small, 2, 3), ("", "restormer-6t", small, 2, 3)]
    if args.student and not desc.startswith("edge-xs random"):
        models[0] = (args.student, "edge-xs", SHAPE, 0, 0)
    dynamic = dynamic_part(models, args.rounds, args.iters)
    command = " ".join(["python", "benchmarks/fold_savings.py", *sys.argv[1:]])
    from datprl_edge.core.host import isa_block

    res = {"benchmark": "fold_savings", "command": command,
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu_count": os.cpu_count(), "torch_threads": 1, "machine": platform.machine(),
                           **isa_block(),
                           "load_average_at_start": [round(x, 2) for x in load],
                           "note": "2-core machine, possibly shared (see load_average_at_start); latencies "
                                   "interleaved so each variant sees the same load, but absolute ms are "
                                   "noisy"},
           "static": static, "dynamic": dynamic}
    print_tables(res)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
