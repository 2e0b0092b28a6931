"""The main job: `run_pipeline(recipe, run_dir)` runs teacher -> distill -> calib -> fold -> qat ->
export -> bench -> eval -> report into one run folder, each stage through the other stages' own
functions. Stages whose inputs and config are unchanged are skipped (`stages.py`), so a killed
run resumes at the first stage that did not finish."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from datprl_edge.core.errors import MissingBackendError, PlatformError
from datprl_edge.core.targets import TARGETS, target_for_suffix
from datprl_edge.io.atomic import check_output_dir
from datprl_edge.pipeline.recipe import (
    Recipe,
    calibration_recipe_file,
    checkpoint_file,
    is_file_spec,
    load_recipe,
    model_name,
    report_limit,
)
from datprl_edge.pipeline.stages import (
    Outcome,
    Stage,
    StageContext,
    limit_threads,
    run_stages,
    write_json,
)

STAGES = ("teacher", "distill", "calib", "fold", "qat", "export", "bench", "eval", "report")
TEACHER_FILE = "teacher/teacher.safetensors"
STUDENT_FILE = "distill/student.safetensors"
FLOAT_FILE = "fold/student-float.safetensors"
ARTIFACT_SUFFIXES = tuple(spec.suffix for spec in TARGETS.values())


@dataclasses.dataclass
class PipelineResult:
    run_dir: Path
    report: Path
    outcomes: list
    seconds: float


def run_pipeline(recipe, run_dir, *, force=(), until: str | None = None, log=print) -> PipelineResult:
    """Run (or resume) the recipe's pipeline in `run_dir`; returns the report path and stage outcomes."""
    from datprl_edge.core.version import __version__

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    run_dir = check_output_dir(run_dir)
    stages = build_stages(recipe, run_dir)
    t0 = time.perf_counter()
    status = {"schema": "datprl-edge-pipeline/1", "recipe": recipe.name,
              "recipe_path": str(recipe.path) if recipe.path else None, "toolkit_version": __version__,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
              "stages": [{"name": s.name, "deps": list(s.deps)} for s in stages], "outcomes": []}
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe.path is not None:
        shutil.copyfile(recipe.path, run_dir / "recipe.toml")

    def on_stage(o: Outcome):
        status["outcomes"].append({"stage": o.name, "result": o.result, "seconds": o.seconds, "key": o.key})
        write_json(run_dir / "pipeline.json", status)

    with limit_threads(recipe.threads):
        outcomes = run_stages(run_dir, stages, force=force, until=until, log=log, on_stage=on_stage)
    seconds = round(time.perf_counter() - t0, 1)
    status.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=seconds)
    write_json(run_dir / "pipeline.json", status)
    return PipelineResult(run_dir, run_dir / "report" / "report.html", outcomes, seconds)


def build_stages(recipe: Recipe, run_dir: Path) -> list[Stage]:
    r, run = recipe, Path(run_dir)
    teacher_src = checkpoint_file(r.resolve(r["teacher"]["checkpoint"]), "[teacher] checkpoint")
    network = r.resolve(r["teacher"]["network"]) or None
    distill = r["distill"]
    train = distill["mode"] == "train"
    student = r.resolve(distill["student"])
    student_inputs = ({"student": checkpoint_file(student, "[distill] student")}
                      if is_file_spec(student) else {})
    calib_path = calibration_recipe_file(r.resolve(r["calibration"]["recipe"]))
    export_targets = r["export"]["targets"]
    qat_targets = export_targets if "int8" in r["export"]["precisions"] else []
    seed = {"seed": r.seed}
    return [
        Stage("teacher", lambda ctx: teacher_stage(ctx, r), {**r["teacher"]},
              {"checkpoint": teacher_src, **({"network": Path(network)} if network else {})}),
        Stage("distill", lambda ctx: distill_stage(ctx, r), {**distill, **seed},
              {**student_inputs, **({"teacher": run / TEACHER_FILE} if train else {})},
              deps=("teacher",) if train else ()),
        Stage("calib", lambda ctx: calib_stage(ctx, calib_path), {"recipe": r["calibration"]["recipe"]},
              {"recipe": calib_path}),
        Stage("fold", lambda ctx: fold_stage(ctx, r), {**r["fold"]},
              lambda: {"student": run / STUDENT_FILE, "calibration": run / "calib" / "set"},
              deps=("distill", "calib")),
        Stage("qat", lambda ctx: qat_stage(ctx, r, qat_targets), {**r["qat"], **seed, "targets": qat_targets},
              lambda: {"model": run / FLOAT_FILE, "calibration": run / "calib" / "set"},
              deps=("fold", "calib")),
        Stage("export", lambda ctx: export_stage(ctx, r), {**r["export"]},
              lambda: {"model": run / FLOAT_FILE, "qat": run / "qat"}, deps=("fold", "qat", "calib")),
        Stage("bench", lambda ctx: bench_stage(ctx, r), {**r["bench"], "paired": True},
              lambda: {"artifacts": run / "export"}, deps=("export",)),
        Stage("eval", lambda ctx: eval_stage(ctx, r), {**r["eval"], "visuals": r["visuals"]},
              lambda: {"artifacts": run / "export", "teacher": run / TEACHER_FILE,
                       "student": run / FLOAT_FILE},
              deps=("teacher", "fold", "export")),
        Stage("report", lambda ctx: report_stage(ctx, r), {**r["report"]},
              lambda: {k: p for k, p in (("bench", run / "bench" / "bench.json"),
                                         ("paired", run / "bench" / "paired.json"),
                                         ("eval", run / "eval" / "eval.json")) if p.exists()},
              deps=("export", "bench", "eval")),
    ]


# -- stages -----------------------------------------------------------------------------------------

def teacher_stage(ctx: StageContext, r: Recipe) -> dict:
    from datprl_edge.io.checkpoint import (
        CheckpointConfig,
        read_checkpoint_config,
        save_checkpoint,
        sha256_file,
    )
    from datprl_edge.models.registry import model_config
    from datprl_edge.sources import resolve_model

    spec = r.resolve(r["teacher"]["checkpoint"])
    network = r.resolve(r["teacher"]["network"]) or None
    src = checkpoint_file(spec, "[teacher] checkpoint")
    model = resolve_model(spec, network=network)
    arch, options = model_config(model)
    out = ctx.out / "teacher.safetensors"
    if src.suffix == ".safetensors" and network is None and read_checkpoint_config(src):
        shutil.copyfile(src, out)
    else:  # a released .pth: stored once as a toolkit checkpoint that later stages load directly
        save_checkpoint(out, model.state_dict(), CheckpointConfig(
            arch, options, "released", {"source": spec, "source_sha256": sha256_file(src)}))
    params = sum(p.numel() for p in model.parameters())
    return {"summary": f"{spec}: {arch}, {params / 1e6:.2f}M parameters", "source": spec, "arch": arch,
            "params": params, "source_sha256": sha256_file(src)}


def distill_stage(ctx: StageContext, r: Recipe) -> dict:
    cfg = dict(r["distill"])
    mode, student, data = cfg.pop("mode"), r.resolve(cfg.pop("student")), cfg.pop("data")
    out = ctx.out / "student.safetensors"
    if mode == "bundled":
        src = checkpoint_file(student, "[distill] student")
        shutil.copyfile(src, out)
        return {"summary": f"training skipped ([distill] mode = bundled): the shipped student {student} "
                           "is used", "student": student}
    import torch

    from datprl_edge.sources import resolve_model
    from datprl_edge.train.config import DistillConfig
    from datprl_edge.train.distill import distill

    config = DistillConfig(**{"seed": r.seed, **cfg})
    teacher = resolve_model(ctx.stage_dir("teacher") / "teacher.safetensors")
    torch.manual_seed(config.seed)
    model = resolve_model(student, random_init=True)
    result = distill(teacher, model, config, data, ctx.work, resume=True,
                     provenance={"command": "pipeline distill", "teacher": r["teacher"]["checkpoint"]})
    shutil.copyfile(ctx.work / "model.safetensors", out)
    for name in ("metrics.json", "train.jsonl", "val.jsonl"):
        if (ctx.work / name).exists():
            shutil.copyfile(ctx.work / name, ctx.out / name)
    mean = result.metrics.get("mean", {})
    return {"summary": f"distilled {student} for {config.steps} steps on {data} "
                       f"({result.sec_per_step:.2f} s/step); "
                       f"val PSNR {mean.get('psnr', float('nan')):.2f} dB",
            "steps": config.steps, "metrics": result.metrics, "sec_per_step": result.sec_per_step}


def calib_stage(ctx: StageContext, recipe_path: Path) -> dict:
    from datprl_edge.data.calib import build_calibration_set

    coverage = build_calibration_set(recipe_path, ctx.out / "set", progress=False)
    totals = coverage["totals"]
    return {"summary": f"calibration set {coverage['recipe']!r}: {totals['pairs']} pairs", "totals": totals}


def fold_stage(ctx: StageContext, r: Recipe) -> dict:
    from datprl_edge.sources import resolve_model

    cfg = r["fold"]
    src = ctx.stage_dir("distill") / "student.safetensors"
    out = ctx.out / "student-float.safetensors"
    if cfg["mode"] == "none":
        shutil.copyfile(src, out)
        return {"summary": "no fold ([fold] mode = none): the student is exported as distilled"}
    from datprl_edge.fold.folding import FoldConfig, fold_dynamic, save_fold

    config = FoldConfig(calibration=str(ctx.stage_dir("calib") / "set"), images=cfg["images"],
                        crop=cfg["crop"], min_psnr_db=cfg["min_psnr_db"], latency_iters=0)
    result = fold_dynamic(resolve_model(str(src)), config, log=ctx.log)
    save_fold(result, out, provenance={"command": "pipeline fold", "source": str(src)})
    check = result.verification["all"]
    before, after = result.complexity["before"], result.complexity["after"][""]
    return {"summary": f"dynamic fold ({result.arch}), verified {_db(check['psnr_db'])} dB against the "
                       f"unfolded model; MACs {before['macs'] / 1e9:.3f} -> {after['macs'] / 1e9:.3f} G at "
                       f"{'x'.join(map(str, result.complexity['shape']))}",
            "verification": check, "complexity": result.complexity, "simplifications": result.simplifications}


def qat_stage(ctx: StageContext, r: Recipe, targets: list) -> dict:
    import json

    from datprl_edge.data.calib import calibration_images
    from datprl_edge.quantize.qat import QATConfig, run_qat, save_qat
    from datprl_edge.sources import resolve_model

    if not targets:
        return {"summary": "no INT8 export in the recipe: QAT not needed"}
    model = resolve_model(str(ctx.stage_dir("fold") / "student-float.safetensors"))
    calib = calibration_images(ctx.stage_dir("calib") / "set").pairs()
    results = {}
    for target in targets:
        path, meta = ctx.work / f"int8-{target}.safetensors", ctx.work / f"int8-{target}.json"
        if not (path.exists() and meta.exists()):  # done before a kill: kept in the work folder
            config = QATConfig(target=target, **{"seed": r.seed, **r["qat"]})
            ctx.log(f"[qat] {target}: {config.steps} steps")
            result = run_qat(model, config, calib, state_dir=ctx.work / f"state-{target}",
                             log=lambda m, t=target: ctx.log(f"[qat] {t}: {m}"))
            save_qat(result, path, {"command": "pipeline qat", "calibration": r["calibration"]["recipe"]})
            meta.write_text(json.dumps({"source": result.source, "metrics": result.metrics,
                                        "float_layers": list(result.float_layers)}, default=str))
        shutil.copyfile(path, ctx.out / path.name)
        results[target] = json.loads(meta.read_text())
    drops = {t: m["metrics"].get("drop_db", {}).get("worst") for t, m in results.items()}
    text = ", ".join(f"{t} {_db(d, signed=True)} dB" for t, d in drops.items() if d is not None)
    return {"summary": f"INT8 for {', '.join(targets)} ({r['qat'].get('steps')} QAT steps)"
                       + (f"; worst-task drop on held-out calibration pairs: {text}" if text else ""),
            "targets": results}


def export_stage(ctx: StageContext, r: Recipe) -> dict:
    from datprl_edge.core.artifacts import safe_name
    from datprl_edge.core.shapes import parse_hw
    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.io.checkpoint import sha256_file
    from datprl_edge.quantize.qat import load_qat
    from datprl_edge.sources import resolve_model

    cfg = r["export"]
    model_path = ctx.stage_dir("fold") / "student-float.safetensors"
    name = model_name(r)
    common = dict(model_name=name, source_sha256=sha256_file(model_path), overwrite=True,
                  calibration=str(ctx.stage_dir("calib") / "set"), verify_images=cfg["verify_images"],
                  verify_size=parse_hw(cfg["verify_size"]), tile_size=cfg["tile_size"],
                  tile_overlap=cfg["tile_overlap"])
    floats = [p for p in cfg["precisions"] if p != "int8"]
    float_model = resolve_model(str(model_path)) if floats else None
    exported, skipped = [], []
    for target in cfg["targets"]:
        jobs = [(",".join(floats), float_model)] if floats else []
        if "int8" in cfg["precisions"]:
            jobs.append(("int8", ctx.stage_dir("qat") / f"int8-{target}.safetensors"))
        for precision, source in jobs:
            stems = [f"{safe_name(name)}_{target}_{p}" for p in precision.split(",")]
            if all((ctx.work / f"{s}.json").exists() for s in stems):  # exported before a kill
                exported += stems
                continue
            ctx.log(f"[export] {target} {precision}")
            try:
                src = load_qat(source) if precision == "int8" else source
                export_model(src, ExportConfig(targets=(target,), precision=precision, **common), ctx.work)
                exported += stems
            except (MissingBackendError, PlatformError) as e:
                skipped.append({"target": target, "precision": precision, "reason": str(e)})
                ctx.log(f"[export] {target} {precision} not exported: {e}")
    for p in sorted(ctx.work.iterdir()):
        if not p.name.startswith("."):
            shutil.move(str(p), ctx.out / p.name)
    text = f"{len(exported)} artifacts ({', '.join(cfg['targets'])} x {', '.join(cfg['precisions'])})"
    if skipped:
        text += "; not exported: " + "; ".join(f"{s['target']} {s['precision']} ({s['reason']})"
                                               for s in skipped)
    return {"summary": text, "artifacts": exported, "skipped": skipped}


def bench_stage(ctx: StageContext, r: Recipe) -> dict:
    """`datprl-edge bench` in a fresh, torch-free process: its workers' peak RSS then belongs to them
    (Linux carries a parent's RSS peak into ru_maxrss across fork and exec, and this process holds torch).
    Then, where a runtime has two or more artifacts, `bench --paired` with FP32 first: each artifact's
    speed-up over FP32 from runs interleaved in one process (`paired.json`)."""
    import json

    artifacts = artifact_paths(ctx.stage_dir("export"))
    runnable = macos_runnable(artifacts)
    if not runnable:
        return {"summary": "nothing could be benchmarked here: Core ML prediction needs macOS"}
    out = ctx.out / "bench.json"
    _bench_cli(ctx, r, artifacts, out)
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    ok = [x for x in results if x["status"] == "ok"]
    summary = f"{len(ok)} measurements, {len(results) - len(ok)} skipped (in a torch-free process)"
    pairs = paired_order(runnable)
    if pairs:
        _bench_cli(ctx, r, pairs, ctx.out / "paired.json", "--paired")
        comparisons = json.loads((ctx.out / "paired.json").read_text(encoding="utf-8")).get("paired", [])
        summary += f"; {sum(len(c['speedup_vs_baseline']) for c in comparisons)} paired speed-ups"
    return {"summary": summary}


def paired_order(artifacts) -> list:
    """The artifacts of every runtime that has two or more, each runtime's FP32 first (its baseline in
    `bench --paired`); [] when no runtime has two."""
    rank = {"fp32": 0, "fp16": 1, "int8": 2}
    by_target: dict = {}
    for a in artifacts:
        by_target.setdefault(_target_of(str(a)), []).append(Path(a))
    groups = [sorted(g, key=lambda p: (rank.get(p.stem.rsplit("_", 1)[-1], 3), p.name))
              for g in by_target.values() if len(g) > 1]
    return [p for g in groups for p in g]


def _bench_cli(ctx: StageContext, r: Recipe, artifacts, out: Path, *extra: str) -> None:
    import subprocess
    import sys

    cfg = r["bench"]
    cmd = [sys.executable, "-m", "datprl_edge", "bench", *map(str, artifacts), "--json", str(out),
           "--warmup", str(cfg["warmup"]), *extra]
    cmd += ["--iters", str(cfg["iters"])] if cfg["iters"] else ["--seconds", str(cfg["seconds"])]
    for shape in cfg["shapes"]:
        cmd += ["--shape", str(shape)]
    for unit in cfg["compute_units"]:
        cmd += ["--compute-units", str(unit)]
    if cfg["threads"]:
        cmd += ["--threads", str(cfg["threads"])]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if r.threads:  # the pipeline's own thread limit; the benchmark uses [bench] threads
        env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stderr.splitlines():
        if line.startswith("["):
            ctx.log(f"[bench] {line}")
    if proc.returncode != 0 or not out.exists():
        from datprl_edge.core.errors import ArtifactError

        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ArtifactError(f"the bench stage failed (exit code {proc.returncode}): {tail}")


def macos_runnable(artifacts) -> list:
    """The artifacts this machine can run (Core ML only on macOS)."""
    from datprl_edge.core.artifacts import macos

    return [a for a in artifacts if macos() or not getattr(target_for_suffix(a), "needs_macos", False)]


def eval_stage(ctx: StageContext, r: Recipe) -> dict:
    from datprl_edge.evaluate.driver import EvalConfig, evaluate
    from datprl_edge.report.visuals import compute_visuals

    cfg = r["eval"]
    artifacts = artifact_paths(ctx.stage_dir("export"))
    runnable = [str(a) for a in macos_runnable(artifacts)]
    not_run = [{"artifact": a.name, "reason": "Core ML prediction needs macOS"}
               for a in artifacts if str(a) not in runnable]
    teacher = str(ctx.stage_dir("teacher") / "teacher.safetensors")
    student = str(ctx.stage_dir("fold") / "student-float.safetensors")
    config = EvalConfig(tasks=tuple(cfg["tasks"]), count=cfg["count"], size=cfg["size"], seed=cfg["seed"],
                        reference=student)
    report = evaluate(runnable + [teacher], config, command="datprl-edge pipeline (eval stage)",
                      harm_dir=ctx.out / "harm")
    report["roles"] = {"teacher": report["models"][-1]["model"], "student_fp32": report["reference"]["model"]}
    report["not_evaluated"] = not_run
    write_json(ctx.out / "eval.json", report)
    int8 = [a for a in runnable if Path(a).stem.endswith("_int8")]
    panels = [("teacher", teacher), ("student FP32", student)]
    panels += [(f"student INT8 ({_target_of(a)})", a) for a in int8]
    vis = r["visuals"]
    compute_visuals(ctx.out / "visuals", report["tasks"], panels, size=vis["size"], seed=vis["seed"])
    mean = {m["model"]: m["mean"]["psnr"] for m in report["models"]}
    return {"summary": f"{len(report['models'])} models on {len(report['tasks'])} tasks; reference "
                       f"{report['reference']['model']} {report['reference']['mean']['psnr']:.2f} dB",
            "mean_psnr": mean, "not_evaluated": not_run}


def report_stage(ctx: StageContext, r: Recipe) -> dict:
    from datprl_edge.report import build_report

    cfg = r["report"]
    result = build_report(ctx.run_dir, ctx.out / "report.html", budget_ms=report_limit(cfg["budget_ms"]),
                          max_drop=report_limit(cfg["max_drop"]))
    rec = result.recommendation
    return {"summary": f"recommended {rec.artifact}" if rec.artifact else "no artifact meets the limits",
            "recommendation": rec.artifact, "reason": rec.reason}


# -- helpers ----------------------------------------------------------------------------------------

def artifact_paths(export_dir: Path) -> list[Path]:
    return sorted(p for p in Path(export_dir).iterdir() if p.suffix in ARTIFACT_SUFFIXES)


def _target_of(artifact: str) -> str:
    from datprl_edge.runtime.sessions import artifact_target

    return artifact_target(artifact)


def _db(v, signed: bool = False) -> str:
    if isinstance(v, str) or v is None:
        return str(v)
    return f"{v:+.2f}" if signed else f"{v:.2f}"
