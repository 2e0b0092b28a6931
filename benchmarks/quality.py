"""Do the shipped models restore? Per task, on held-out validation images and on a shifted set:
PSNR/SSIM of the degraded input, every classical baseline, the teacher, the student (and variants),
gains over the input, harm counts and the targets of issue 13.

    python benchmarks/quality.py [--teacher bundled:teacher-ref-v2] [--student bundled:edge-xs]
        [--variant NAME=CKPT ...] [--tasks 9task] [--count 16] [--size 256] [--medical-size 384]
        [--bm3d-images N] [--threads 1] [-o benchmarks/results/quality.json]
    python benchmarks/quality.py --add-to benchmarks/results/quality.json --variant NAME=CKPT ...
    python benchmarks/quality.py --targets-only benchmarks/results/quality.json   # recompute the targets

Data: `data.pairs.fixed_pairs` on the bundled 'val' images (held-out sources, never trained on):
`--size` crops; the stochastic medical tasks (CT, PET) at `--medical-size` (the full 384 px slice);
MRI SR is deterministic, so it uses `--size` crops to vary the content. The shifted set is the same
images (another seed) degraded by `Task.shifted_task()`: a severity outside `Task.train_severity`
and, where given, another degradation model. The best classical method per task is chosen on the
*train* split (`baselines.select_best`), never on these images. Metrics: `core.metrics`
(`image_metrics`, means by `mean_psnr`: its one convention), the same as `datprl-edge eval`.
A variant named `*-int8` is an INT8 version of --student: its drop against the student per task
(mean over the same images, with the paired standard error of that mean) is the issue-16 target
"no INT8 model loses more than 0.1 dB on any task".
Writes the JSON atomically and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality.json"
SCHEMA = "datprl-edge-quality/1"
SR_TASKS = ("natural/sr_x4", "remote/sr_x4")
MEAN_GAIN_DB, SR_GAIN_DB, CT_GAIN_DB, TEACHER_GAP_DB, KD_GAIN_DB = 1.5, 0.8, 2.0, 0.5, 0.2
INT8_DROP_DB, INT8_SUFFIX = 0.1, "-int8"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="bundled:teacher-ref-v2", help="the student's teacher")
    p.add_argument("--student", default="bundled:edge-xs")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CKPT",
                   help="extra model rows; a variant named 'nokd' is the no-KD student of the KD target")
    p.add_argument("--tasks", default="9task")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--medical-size", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select-count", type=int, default=4, help="train pairs to choose the best classical")
    p.add_argument("--select-size", type=int, default=192)
    p.add_argument("--bm3d-images", type=int, default=None, help="score BM3D on the first N images only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-shifted", action="store_true")
    p.add_argument("--add-to", metavar="JSON", default=None,
                   help="score only the --variant models on the sets of an earlier report (same settings) "
                        "and add their rows to it; the input rows are re-made and must match")
    p.add_argument("--targets-only", metavar="JSON", default=None,
                   help="score nothing: recompute the targets of an earlier report "
                        "(written to -o, default the same file)")
    p.add_argument("-o", "--out", default=None,
                   help=f"default {DEFAULT_OUT.relative_to(ROOT)} (or --add-to's / --targets-only's)")
    args = p.parse_args(argv)
    args.out = args.out or args.add_to or args.targets_only or str(DEFAULT_OUT)
    return args


def environment(command: str) -> dict:
    from datprl_edge.core.host import environment as env
    from datprl_edge.core.host import package_versions

    e = env()
    flags = set(e.get("cpu_flags") or [])
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags |= {f for f in ISA_FLAGS if f" {f}" in cpuinfo}
    e["isa"] = {f: f in flags for f in ISA_FLAGS}
    e["versions"].update(package_versions(("scipy", "bm3d", "Pillow", "PyWavelets")))
    e["command"] = command
    return e


def load_models(args, variants_only: bool = False) -> dict:
    from datprl_edge.core.errors import ConfigError
    from datprl_edge.evaluate.driver import open_model

    specs = {} if variants_only else {"teacher": args.teacher, "student": args.student}
    for v in args.variant:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--variant takes NAME=CKPT, got {v!r}")
        specs[f"variant:{name}"] = path
    return {label: (spec, open_model(spec)[0]) for label, spec in specs.items()}


def make_sets(task, args, shifted: bool):
    from datprl_edge.data.pairs import fixed_pairs

    size = args.medical_size if task.grayscale and task.stochastic else args.size
    tk = task.shifted_task() if shifted else task
    return tk, size, fixed_pairs(tk, args.count, size, args.seed + (1 if shifted else 0), split="val")


def evaluate_task(task, args, models, best, bar, shifted: bool) -> dict:
    import numpy as np

    from datprl_edge.core.metrics import mean_psnr
    from datprl_edge.evaluate.baselines import get_method, methods_for, run_baseline
    from datprl_edge.evaluate.harm import harm_stats

    tk, size, pairs = make_sets(task, args, shifted)
    names = [f"{p.source}#{k}" for k, p in enumerate(pairs)]

    def rows(fn, limit=None):
        return _score(pairs[:limit], fn, task.grayscale, bar)

    in_p, in_s, _ = rows(lambda x: x)
    out = {"degradation": tk.description, "severity": tk.default_severity, "size": size, "images": len(pairs),
           "sources": sorted({p.source for p in pairs}),
           "input": {"psnr": _r(mean_psnr(in_p)), "ssim": _r(np.mean(in_s), 5), "per_image_psnr": _rl(in_p)},
           "classical": {}, "models": {}}
    for m in methods_for(task):
        limit = args.bm3d_images if m == "bm3d" and args.bm3d_images else None
        ps, ss, sec = rows(lambda x, m=m: run_baseline(m, x), limit)
        out["classical"][m] = {"psnr": _r(mean_psnr(ps)), "ssim": _r(np.mean(ss), 5), "images": len(ps),
                               "gain_db": _r(mean_psnr(ps) - mean_psnr(in_p[:len(ps)])),
                               "harm": harm_stats(ps, in_p[:len(ps)])["harm"],
                               "seconds_per_image": _r(sec, 3), "uses": get_method(m).uses}
        if limit:
            bar.update(len(pairs) - len(ps))
    out["best_classical"] = best
    out["best_classical_psnr"] = out["classical"][best]["psnr"] if best else None
    for label, (spec, runner) in models.items():
        out["models"][label] = _model_entry(spec, *rows(runner), in_p, names, out["best_classical_psnr"])
    return out


def _score(pairs, fn, grayscale: bool, bar) -> tuple:
    """(per-image PSNR, per-image SSIM, seconds per image) of `fn` on `pairs`."""
    from datprl_edge.core.metrics import image_metrics

    t0 = time.perf_counter()
    ps, ss = [], []
    for p in pairs:
        q = image_metrics(p.gt, fn(p.lq), grayscale)
        ps.append(q[0])
        ss.append(q[1])
        bar.update()
    return ps, ss, (time.perf_counter() - t0) / len(ps)


def _model_entry(spec, ps, ss, sec, in_p, names, best_classical_psnr) -> dict:
    """A model's row of one task: means, gain and harm against the input, timing, per-image PSNR."""
    import numpy as np

    from datprl_edge.core.metrics import mean_psnr
    from datprl_edge.evaluate.harm import harm_stats

    entry = {"spec": spec, "psnr": _r(mean_psnr(ps)), "ssim": _r(np.mean(ss), 5),
             "gain_db": _r(mean_psnr(ps) - mean_psnr(in_p)), **harm_stats(ps, in_p, names),
             "seconds_per_image": _r(sec, 3), "per_image_psnr": _rl(ps)}
    if best_classical_psnr is not None:
        entry["vs_best_classical_db"] = _r(entry["psnr"] - best_classical_psnr)
    return entry


def add_variants(report: dict, args, models: dict, bar) -> None:
    """Score `models` on the sets of an earlier `report` (re-made from its settings) and add their rows."""
    from datprl_edge.core.errors import ConfigError
    from datprl_edge.core.metrics import image_metrics, mean_psnr
    from datprl_edge.data.tasks import resolve_tasks

    st = report["settings"]
    for key in ("count", "size", "medical_size", "seed"):
        setattr(args, key, st[key])
    tasks = resolve_tasks(",".join(st["tasks"]))
    for name, per_task in report["sets"].items():
        for task in tasks:
            row = per_task[task.id]
            _, _, pairs = make_sets(task, args, name == "shifted")
            names = [f"{p.source}#{k}" for k, p in enumerate(pairs)]
            in_p = [image_metrics(p.gt, p.lq, task.grayscale)[0] for p in pairs]
            if abs(mean_psnr(in_p) - row["input"]["psnr"]) > 1e-3:
                raise ConfigError(f"{name}/{task.id}: the re-made inputs score {mean_psnr(in_p):.4f} dB, "
                                  f"the report says {row['input']['psnr']}; the data changed since it was "
                                  "written, run the whole benchmark again")
            best = row["best_classical_psnr"] if row["best_classical"] else None
            for label, (spec, runner) in models.items():
                row["models"][label] = _model_entry(spec, *_score(pairs, runner, task.grayscale, bar),
                                                    in_p, names, best)


def targets(per_task: dict, has_nokd: bool) -> dict:
    """The issue-13 targets for the student on one set (booleans, with the values behind them)."""
    import numpy as np

    s = {t: v["models"]["student"] for t, v in per_task.items()}
    below = [t for t, m in s.items() if m["gain_db"] <= 0]
    classical = {t: v for t, v in per_task.items() if v["best_classical"]}
    not_beaten = [t for t, v in classical.items() if s[t]["psnr"] <= v["best_classical_psnr"]]
    mean_gain = float(np.mean([m["gain_db"] for m in s.values()]))
    out = {"above_input_all_tasks": {"met": not below, "below_input": below},
           "beats_best_classical": {"met": not not_beaten, "not_beaten": not_beaten},
           "mean_gain_ge_1.5_db": {"met": mean_gain >= MEAN_GAIN_DB, "value_db": _r(mean_gain)}}
    sr = {t: s[t]["gain_db"] for t in SR_TASKS if t in s}
    if sr:
        out["sr_ge_0.8_db_over_bicubic"] = {"met": all(g >= SR_GAIN_DB for g in sr.values()), "value_db": sr}
    if "medical/ct_denoise" in s:
        g = s["medical/ct_denoise"]["gain_db"]
        out["ct_ge_2_db"] = {"met": g >= CT_GAIN_DB, "value_db": g}
    if all("teacher" in v["models"] for v in per_task.values()):
        gap = float(np.mean([v["models"]["teacher"]["psnr"] - s[t]["psnr"] for t, v in per_task.items()]))
        out["within_0.5_db_of_teacher"] = {"met": gap <= TEACHER_GAP_DB, "teacher_minus_student_db": _r(gap)}
    if has_nokd:
        kd = float(np.mean([s[t]["psnr"] - v["models"]["variant:nokd"]["psnr"] for t, v in per_task.items()]))
        out["ge_0.2_db_over_nokd"] = {"met": kd >= KD_GAIN_DB, "student_minus_nokd_db": _r(kd)}
    drops = int8_drops(per_task)
    if drops:
        over = sorted(lab for lab, d in drops.items() if d["worst_drop_db"] > INT8_DROP_DB)
        out[f"int8_within_{INT8_DROP_DB}_db"] = {"met": not over, "over": over, "variants": drops}
    return out


def int8_drops(per_task: dict) -> dict:
    """For each `*-int8` variant present on every task: the student's mean PSNR minus the variant's per
    task, the paired standard error of that difference (per-image differences, same images), and the
    worst task."""
    labels = [lab for lab in next(iter(per_task.values()))["models"]
              if lab.startswith("variant:") and lab.endswith(INT8_SUFFIX)
              and all(lab in v["models"] for v in per_task.values())]
    out = {}
    for lab in labels:
        tasks = {t: paired_drop(v["models"]["student"]["per_image_psnr"], v["models"][lab]["per_image_psnr"])
                 for t, v in per_task.items()}
        worst = max(tasks, key=lambda t: tasks[t]["drop_db"])
        out[lab] = {"spec": next(iter(per_task.values()))["models"][lab]["spec"], "tasks": tasks,
                    "worst_task": worst, "worst_drop_db": tasks[worst]["drop_db"],
                    "worst_se_db": tasks[worst]["se_db"]}
    return out


def paired_drop(ref, got) -> dict:
    """The mean-PSNR drop of `got` against `ref` (per-image PSNRs of the same images), the paired
    standard error of that drop and the worst image's drop, each image capped at PSNR_CAP_DB."""
    import numpy as np

    from datprl_edge.core.metrics import PSNR_CAP_DB, mean_psnr

    d = np.minimum(ref, PSNR_CAP_DB) - np.minimum(got, PSNR_CAP_DB)
    se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return {"drop_db": _r(mean_psnr(ref) - mean_psnr(got)), "se_db": _r(se),
            "worst_image_drop_db": _r(np.max(d), 3)}


def summary_lines(report: dict) -> list:
    lines = []
    for set_name, per_task in report["sets"].items():
        labels = list(next(iter(per_task.values()))["models"])
        lines.append(f"[{set_name}] PSNR dB (harm = images below the input)")
        lines.append(f"{'task':<22} {'input':>6} {'best classical':>20} "
                     + " ".join(f"{lab[-14:]:>18}" for lab in labels))
        for t, v in per_task.items():
            b = v["best_classical"]
            bc = f"{b}={v['best_classical_psnr']:.2f}" if b else "-"
            cells = [f"{v['models'][lab]['psnr']:6.2f} ({v['models'][lab]['gain_db']:+.2f},"
                     f"h{v['models'][lab]['harm']:>2})" for lab in labels]
            lines.append(f"{t:<22} {v['input']['psnr']:6.2f} {bc:>20} " + " ".join(f"{c:>18}" for c in cells))
        for name, tgt in report["targets"][set_name].items():
            detail = {k: x for k, x in tgt.items() if k not in ("met", "variants")}
            detail.update({lab: f"{d['worst_drop_db']:+.3f} +- {d['worst_se_db']:.3f} dB ({d['worst_task']})"
                           for lab, d in tgt.get("variants", {}).items()})
            lines.append(f"  target {name}: {'met' if tgt['met'] else 'MISSED'} {detail}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.targets_only:
        return retarget(args)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(ROOT))
    import torch
    from tqdm import tqdm

    from datprl_edge.core.metrics import METRIC_CONVENTION
    from datprl_edge.data.tasks import resolve_tasks
    from datprl_edge.evaluate.baselines import select_best
    from datprl_edge.io.atomic import write_text_atomic

    torch.set_num_threads(args.threads)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    t_start = time.perf_counter()
    env = environment(command)
    if args.add_to:
        return extend_report(args, command, t_start)
    tasks = resolve_tasks(args.tasks)
    models = load_models(args)
    selection = {}
    for t in tqdm(tasks, desc="select classical (train split)", leave=False):
        selection[t.id] = select_best(t, count=args.select_count, size=args.select_size, seed=args.seed)
    set_names = ["val"] + ([] if args.no_shifted else ["shifted"])
    from datprl_edge.evaluate.baselines import methods_for

    total = len(set_names) * len(tasks) * args.count * (1 + len(models)) \
        + len(set_names) * args.count * sum(len(methods_for(t)) for t in tasks)
    sets = {}
    with tqdm(total=total, desc="quality", unit="img") as bar:
        for name in set_names:
            shifted = name == "shifted"
            sets[name] = {t.id: evaluate_task(t, args, models, selection[t.id]["best"], bar, shifted)
                          for t in tasks}
    report = {
        "schema": SCHEMA, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": None, "environment": env,
        "settings": {"tasks": [t.id for t in tasks], "count": args.count, "size": args.size,
                     "medical_size": args.medical_size, "seed": args.seed, "threads": args.threads,
                     "bm3d_images": args.bm3d_images, "select_count": args.select_count,
                     "select_size": args.select_size},
        "data": {"val": "bundled 'val' images (sources never used in training), data.pairs.fixed_pairs at "
                        "the task's default severity; CT/PET whole 384 px slices, others --size crops",
                 "shifted": "the same images, seed+1, degraded by Task.shifted_task(): severity outside "
                            "Task.train_severity and, where given, another degradation model (see each "
                            "task's 'degradation')"},
        "metrics": {**METRIC_CONVENTION, "function": "datprl_edge.core.metrics.image_metrics (the one "
                    "`datprl-edge eval` uses)", "harm": "images whose PSNR is below the degraded input's",
                    "gain_db": "mean PSNR minus the input's mean PSNR, same images"},
        "selection": selection, "sets": sets,
    }
    set_targets(report)
    report["environment"]["load_average_end"] = env_load()
    report["wall_seconds"] = _r(time.perf_counter() - t_start, 1)
    import json

    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"wrote {args.out} ({report['wall_seconds']} s)")
    return 0


def read_report(path: str) -> dict:
    import json

    from datprl_edge.core.errors import ConfigError

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the report {path}: {err}") from None
    if report.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is not a {SCHEMA} report")
    return report


def set_targets(report: dict) -> None:
    has_nokd = all("variant:nokd" in v["models"] for per in report["sets"].values() for v in per.values())
    report["targets"] = {name: targets(per_task, has_nokd) for name, per_task in report["sets"].items()}
    report["targets_all_met"] = all(t["met"] for tg in report["targets"].values() for t in tg.values())


def retarget(args) -> int:
    import json

    from datprl_edge.io.atomic import write_text_atomic

    report = read_report(args.targets_only)
    set_targets(report)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"wrote {args.out} (targets recomputed)")
    return 0


def extend_report(args, command: str, t_start: float) -> int:
    import json

    from tqdm import tqdm

    from datprl_edge.core.errors import ConfigError
    from datprl_edge.io.atomic import write_text_atomic

    if not args.variant:
        raise ConfigError("--add-to adds --variant NAME=CKPT rows; give at least one")
    report = read_report(args.add_to)
    models = load_models(args, variants_only=True)
    st = report["settings"]
    total = len(report["sets"]) * len(st["tasks"]) * st["count"] * len(models)
    with tqdm(total=total, desc="quality (added rows)", unit="img") as bar:
        add_variants(report, args, models, bar)
    set_targets(report)
    report.setdefault("added", []).append({
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": _r(time.perf_counter() - t_start, 1), "models": sorted(models),
        "load_average_end": env_load()})
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"wrote {args.out} (added {', '.join(sorted(models))})")
    return 0


def env_load():
    from datprl_edge.core.host import load_average

    return load_average()


def _r(v, digits: int = 4) -> float:
    return round(float(v), digits)


def _rl(values) -> list:
    return [_r(v, 3) for v in values]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from datprl_edge.core.errors import DatprlEdgeError

    try:
        sys.exit(main())
    except DatprlEdgeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
