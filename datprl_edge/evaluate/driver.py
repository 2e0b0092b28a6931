"""Stage: PSNR/SSIM per task for exported artifacts and torch models, and the drop against a reference.

`evaluate(models, EvalConfig) -> dict`. Data is the fixed validation pairs of each task (bundled
'val' images, seeded degradations) or a folder of pairs (`gt/` + `lq/`, or one such folder per
task). Metrics come from `core.metrics` (skimage PSNR/SSIM, one convention). Artifacts run without
torch; torch is imported only to run a checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from datprl_edge.core import limits
from datprl_edge.core.errors import ConfigError, InputNotFoundError
from datprl_edge.core.metrics import METRIC_CONVENTION, image_metrics, mean_psnr
from datprl_edge.evaluate.harm import add_harm, score_baselines, write_harm_crops

SCHEMA = "datprl-edge-eval/1"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
LARGE_SIDE = 2048  # images with a longer side are restored in tiles


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`data`: "val" or a folder. `tasks`: ids or set names (None: the artifact's folded tasks, else
    the 9-task set; for a folder of pairs, its own task folders). `count`/`size`/`seed`: the
    validation pairs per task. `reference`: model whose scores the others are compared with."""

    data: str = "val"
    tasks: tuple | None = None
    count: int = 8
    size: int = 256
    seed: int = 0
    reference: str | None = None
    network: str | None = None
    baselines: bool = False  # also score the classical methods (datprl_edge.evaluate.baselines) of each task

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"--count must be at least 1, got {self.count}")
        if self.size < 16:
            raise ConfigError(f"--size must be at least 16 (SSIM needs an 11x11 window), got {self.size}")
        limits.check_image(self.size, self.size, "--size")
        limits.check("pixels", self.count * self.size * self.size,
                     f"--count {self.count} x --size {self.size}^2 per task")
        if self.data != "val" and not Path(self.data).is_dir():
            raise InputNotFoundError(f"--data must be 'val' or a folder of pairs; {self.data} is neither")
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))


@dataclasses.dataclass
class EvalSet:
    task: str  # task id, or the folder's name for pairs of an unnamed task
    grayscale: bool
    pairs: list  # (name, gt (H, W, 3), lq (H, W, 3)) float32 in [0, 1]


def load_sets(config: EvalConfig, default_tasks=None) -> list[EvalSet]:
    if config.data == "val":
        from datprl_edge.data.pairs import fixed_pairs
        from datprl_edge.data.tasks import resolve_tasks

        tasks = resolve_tasks(list(config.tasks or default_tasks or ("9task",)))
        return [EvalSet(t.id, t.grayscale,
                        [(f"{p.source}#{k}", p.gt, p.lq)
                         for k, p in enumerate(fixed_pairs(t, config.count, config.size, config.seed))])
                for t in tasks]
    return folder_sets(Path(config.data), config.tasks)


def folder_sets(root: Path, tasks=None) -> list[EvalSet]:
    """Pairs from `root/gt` + `root/lq` (one set) or from every `<sub>/gt` + `<sub>/lq` below root,
    named by the sub path (e.g. medical/ct_denoise)."""
    from datprl_edge.data.tasks import TASKS

    if (root / "gt").is_dir() and (root / "lq").is_dir():
        if tasks and len(tasks) > 1:
            raise ConfigError(f"{root} holds one set of pairs; give at most one --task for it")
        dirs = {(tasks[0] if tasks else root.name): root}
    else:
        dirs = {p.parent.relative_to(root).as_posix(): p.parent for p in sorted(root.rglob("gt"))
                if p.is_dir() and (p.parent / "lq").is_dir()}
        if tasks:
            missing = [t for t in tasks if t not in dirs]
            if missing:
                raise ConfigError(f"{root} has no pairs for {', '.join(missing)} (it has {', '.join(dirs)})")
            dirs = {t: dirs[t] for t in tasks}
    if not dirs:
        raise InputNotFoundError(f"no pairs in {root}: expected gt/ and lq/ folders (or one pair of them per "
                                 "task, e.g. medical/ct_denoise/gt)")
    sets = []
    for name, folder in dirs.items():
        task = TASKS.get(name)
        sets.append(EvalSet(name, bool(task and task.grayscale), _read_pairs(folder)))
    return sets


def _read_pairs(folder: Path) -> list:
    from datprl_edge.io.images import read_image

    files = {k: {p.stem: p for p in sorted((folder / k).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
             for k in ("gt", "lq")}
    unmatched = sorted(set(files["gt"]) ^ set(files["lq"]))
    if unmatched:
        raise ConfigError(f"unmatched files in {folder} (each gt/ file needs an lq/ file of the same name): "
                          f"{', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}")
    if not files["gt"]:
        raise InputNotFoundError(f"no images in {folder / 'gt'}")
    pairs = []
    for stem in sorted(files["gt"]):
        gt, lq = (_rgb(read_image(files[k][stem])[0]) for k in ("gt", "lq"))
        if gt.shape != lq.shape:
            raise ConfigError(f"{folder.name}/{stem}: gt is {gt.shape[1]}x{gt.shape[0]} but lq is "
                              f"{lq.shape[1]}x{lq.shape[0]}")
        pairs.append((stem, gt, lq))
    return pairs


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def open_model(spec: str, network=None):
    """(runner (H, W, 3) -> (H, W, 3), name, kind, folded tasks or None) for an artifact or a model."""
    from datprl_edge import sources

    if sources.is_artifact(spec):
        session = sources.open_model(spec)
        tasks = session.metadata.get("tasks", "auto")
        name = Path(str(spec).rstrip("/\\")).name
        folded = None if tasks in ("", "auto") else tasks.split(",")
        return _artifact_runner(session), name, "artifact", folded
    from datprl_edge.restore.runners import load_runner  # MissingBackendError without torch

    runner, name = load_runner(spec, network)
    return _hwc(runner), name, "torch", None


def _artifact_runner(session):
    from datprl_edge.core.tiling import tile_apply

    meta = session.metadata

    def run(nchw):
        h, w = nchw.shape[2:]
        static = session.static_hw
        if static is not None and tuple(static) != (h, w) or max(h, w) > LARGE_SIDE:
            tile = static[0] if static is not None else int(meta.get("tile_size") or 512)
            overlap = min(int(meta.get("tile_overlap") or 32), (tile - 1) // 2)
            return tile_apply(session.run, nchw, tile, overlap, session.pad_multiple)
        return session.run(nchw)

    return _hwc(run)


def _hwc(runner):
    def run(image):
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        return np.asarray(runner(x))[0].transpose(1, 2, 0)

    return run


def score(runner, sets: list[EvalSet], progress=None) -> dict:
    """{task: {"psnr", "ssim", "images", "seconds", "per_image_psnr"}} of a runner over the sets (means
    over images)."""
    out = {}
    for s in sets:
        psnrs, ssims = [], []
        t0 = time.perf_counter()
        for _, gt, lq in s.pairs:
            restored = lq if runner is None else runner(lq)  # None scores the degraded input
            if restored.shape[2] != 3:
                restored = np.repeat(restored, 3, axis=2)
            p, q = image_metrics(gt, restored, s.grayscale)
            psnrs.append(p)
            ssims.append(q)
            if progress:
                progress()
        out[s.task] = {"psnr": _r(mean_psnr(psnrs)), "ssim": _r(np.mean(ssims), 5), "images": len(psnrs),
                       "seconds": _r(time.perf_counter() - t0, 3), "per_image_psnr": [_r(p) for p in psnrs]}
    return out


def evaluate(models, config: EvalConfig, *, command: str | None = None, progress: bool = False,
             harm_dir=None) -> dict:
    """Scores of every model (and the degraded input, and the reference) per task. Each model's
    per-task entry carries its harm (images below the input) and gain over the input. With
    `harm_dir`, crops of each model's worst harmed image per task are written there as PNGs, and
    the entries name them relative to the folder above `harm_dir` (where eval.json goes)."""
    if not models:
        raise ConfigError("name at least one artifact or model to evaluate")
    opened = [open_model(m, config.network) for m in models]
    folded = next((t for *_, t in opened if t), None)
    sets = load_sets(config, default_tasks=folded)
    reference = open_model(config.reference, config.network) if config.reference else None
    total = sum(len(s.pairs) for s in sets) * (len(opened) + (reference is not None))
    bar = _bar(total, progress)
    base = score(None, sets)
    ref_scores = score(reference[0], sets, bar.update) if reference else None
    if ref_scores:
        add_harm(ref_scores, base, sets)
        if harm_dir is not None:
            write_harm_crops(harm_dir, reference[1], reference[0], sets, ref_scores)
    results = []
    for runner, name, kind, tasks in opened:
        per_task = score(runner, sets, bar.update)
        add_harm(per_task, base, sets)
        if harm_dir is not None:
            write_harm_crops(harm_dir, name, runner, sets, per_task)
        if ref_scores:
            for task, m in per_task.items():
                m["psnr_drop_db"] = _r(ref_scores[task]["psnr"] - m["psnr"])
                m["ssim_drop"] = _r(ref_scores[task]["ssim"] - m["ssim"], 5)
        results.append({"model": name, "kind": kind, "folded_tasks": tasks, "per_task": per_task,
                        "mean": _mean(per_task)})
    bar.close()
    report = {
        "schema": SCHEMA,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": _describe_data(config, sets),
        "metrics": {"library": f"scikit-image {_version('scikit-image')}", **METRIC_CONVENTION},
        "tasks": [s.task for s in sets],
        "input": {"per_task": base, "mean": _mean(base)},
        "reference": ({"model": reference[1], "kind": reference[2], "per_task": ref_scores,
                       "mean": _mean(ref_scores)} if reference else None),
        "models": results,
    }
    if config.baselines:
        report["baselines"] = score_baselines(sets, base, progress=progress)
    return report


def summary_lines(report: dict) -> list[str]:
    rows = [("input (degraded)", report["input"])]
    if report["reference"]:
        rows.append((f"reference {report['reference']['model']}", report["reference"]))
    rows += [(m["model"], m) for m in report["models"]]
    lines = [f"{'task':<24} {'model':<36} {'PSNR dB':>8} {'SSIM':>7} {'harm':>6} {'dPSNR':>7} {'dSSIM':>7}"]
    classical = (report.get("baselines") or {}).get("per_task", {})
    for task in report["tasks"]:
        for label, entry in rows:
            m = entry["per_task"][task]
            harm = f"{m['harm']}/{m['images']}" if "harm" in m else ""
            drop = (f"{m['psnr_drop_db']:>7.2f} {m['ssim_drop']:>7.4f}" if "psnr_drop_db" in m else "")
            flag = "  BELOW INPUT" if m.get("below_input") else ""
            lines.append(f"{task:<24} {label[:36]:<36} {m['psnr']:>8.2f} {m['ssim']:>7.4f} {harm:>6} {drop}"
                         .rstrip() + flag)
        for method, m in classical.get(task, {}).get("methods", {}).items():
            best = " (best on train)" if classical[task].get("best") == method else ""
            label = f"classical {method}{best}"
            harm = f"{m['harm']}/{m['images']}"
            lines.append(f"{task:<24} {label[:36]:<36} {m['psnr']:>8.2f} {m['ssim']:>7.4f} {harm:>6}")
    return lines


def _mean(per_task: dict) -> dict:
    psnr = [m["psnr"] for m in per_task.values()]
    ssim = [m["ssim"] for m in per_task.values()]
    out = {"psnr": _r(np.mean(psnr)), "ssim": _r(np.mean(ssim), 5)}
    drops = [m["psnr_drop_db"] for m in per_task.values() if "psnr_drop_db" in m]
    if drops:
        out["psnr_drop_db"] = _r(np.mean(drops))
        out["ssim_drop"] = _r(np.mean([m["ssim_drop"] for m in per_task.values()]), 5)
    return out


def _describe_data(config: EvalConfig, sets) -> dict:
    if config.data == "val":
        return {"source": "val",
                "what": "bundled 'val' images, seeded task degradations (data.pairs.fixed_pairs)",
                "count_per_task": config.count, "size": config.size, "seed": config.seed}
    return {"source": str(config.data), "images_per_task": {s.task: len(s.pairs) for s in sets}}


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="img", disable=not enabled, leave=False)


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _r(v, digits: int = 4) -> float:
    return round(float(v), digits)
