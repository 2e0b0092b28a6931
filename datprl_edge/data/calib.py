"""Calibration sets for quantization (QAT, PTQ, export): recipes, building, coverage and hashes.

A recipe (TOML) lists tasks with sample counts and severities; `build_calibration_set` writes one
`<domain>__<task>.npz` per task (uint8 RGB, or uint16 single-channel for grayscale medical tasks),
`coverage.json`, a copy of the recipe and `SHA256SUMS`, all in one atomic step.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputNotFoundError, OutputExistsError, UnknownChoiceError, VerificationError
from ..io.atomic import atomic_dir
from .tasks import get_task

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PACKAGE_RECIPES = Path(__file__).resolve().parent / "recipes"
SPLITS = ("train", "val")
_TOP_KEYS = {"name", "description", "seed", "crop", "split", "tasks"}
_TASK_KEYS = {"id", "count", "severities", "crop", "split", "seed", "images"}


@dataclass(frozen=True)
class RecipeTask:
    id: str
    count: int
    severities: tuple
    crop: int
    split: str
    seed: int
    images: str | None = None  # a folder of the user's own images instead of the bundled samples


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    tasks: tuple
    path: Path | None = field(default=None, compare=False)


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: the source tree's `calibration/` first, then the package."""
    repo = Path(__file__).resolve().parents[2]
    dirs = [repo / "calibration"] if (repo / "pyproject.toml").exists() else []
    return [d for d in dirs + [PACKAGE_RECIPES] if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(recipe_dirs()):
        found.update((p.stem, p) for p in sorted(d.glob("*.toml")))
    return dict(sorted(found.items()))


def load_recipe(name_or_path) -> Recipe:
    """A recipe by name (e.g. 'drone') or from a .toml path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or "/" in text or "\\" in text:
        if not path.is_file():
            raise InputNotFoundError(f"calibration recipe not found: {path}")
    else:
        recipes = list_recipes()
        if text not in recipes:
            raise UnknownChoiceError("calibration recipe", text, recipes)
        path = recipes[text]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path.name}: invalid TOML ({e})") from None
    return parse_recipe(data, path)


def parse_recipe(data: dict, path: Path | None = None) -> Recipe:
    where = path.name if path else "recipe"
    _check_keys(data, _TOP_KEYS, where)
    defaults = {"seed": data.get("seed", 0), "crop": data.get("crop", 256),
                "split": data.get("split", "train")}
    entries = data.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: needs at least one [[tasks]] table")
    tasks, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "count" not in e:
            raise ConfigError(f"{where}: [[tasks]] entry {i + 1} needs 'id' and 'count'")
        _check_keys(e, _TASK_KEYS, f"{where} task {e['id']}")
        task = get_task(str(e["id"]))
        if task.id in seen:
            raise ConfigError(f"{where}: task {task.id} listed twice")
        seen.add(task.id)
        t = {**defaults, **e}
        sev = t.get("severities", [task.default_severity])
        sev = [sev] if isinstance(sev, (int, float)) else sev
        if not isinstance(sev, list) or not sev or any(
                not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0 for s in sev):
            raise ConfigError(f"{where} task {task.id}: severities must be numbers in [0, 1], got {sev!r}")
        _check_int(t["count"], 1, f"{where} task {task.id}: count")
        _check_int(t["crop"], 8, f"{where} task {task.id}: crop")
        _check_int(t["seed"], 0, f"{where} task {task.id}: seed")
        if t["split"] not in SPLITS:
            raise UnknownChoiceError("split", str(t["split"]), SPLITS)
        images = t.get("images")
        if images is not None:
            images = str(Path(path.parent, images) if path else Path(images))
        tasks.append(RecipeTask(task.id, t["count"], tuple(float(s) for s in sev), t["crop"], t["split"],
                                t["seed"], images))
    name = str(data.get("name", path.stem if path else "recipe"))
    return Recipe(name, str(data.get("description", "")), tuple(tasks), path)


def _check_keys(d: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UnknownChoiceError(f"key in {where}:", unknown[0], allowed)


def _check_int(v, lo: int, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, got {v!r}")


def task_file(task_id: str) -> str:
    return task_id.replace("/", "__") + ".npz"


def _pool(rt: RecipeTask) -> list:
    from .pairs import split_pool

    if rt.images is None:
        return split_pool(rt.id, rt.split)
    from .samples import Sample

    folder = Path(rt.images)
    if not folder.is_dir():
        raise InputNotFoundError(f"images folder for {rt.id} not found: {folder}")
    from .datasets import IMAGE_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputNotFoundError(f"no images in {folder} for task {rt.id}")
    domain = get_task(rt.id).domain
    return [Sample(p.name, p, domain, rt.split, f"file:{p}", "custom") for p in files]


def build_calibration_set(recipe, out_dir, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the calibration set of `recipe` (a Recipe, name or path) to `out_dir`; returns coverage."""
    from tqdm import tqdm

    from ..checkpoint import sha256_file
    from .pairs import fixed_pairs

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite or choose another output")
    pools = {rt.id: _pool(rt) for rt in recipe.tasks}
    for rt in recipe.tasks:
        n = len(pools[rt.id])
        if n < rt.count:
            kinds = "/".join(sorted({s.modality for s in pools[rt.id]}))
            where = f"images in {rt.images}" if rt.images else \
                f"'{rt.split}' {kinds} images of domain {get_task(rt.id).domain}"
            print(f"datprl-edge: warning: recipe {recipe.name!r}: task {rt.id} asks for {rt.count} samples "
                  f"but only {n} distinct {where} exist; reusing them with different crops", file=sys.stderr)
    rows = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        bar = tqdm(total=sum(rt.count for rt in recipe.tasks), desc="calibration", unit="pair",
                   disable=not progress, file=sys.stderr)
        for rt in recipe.tasks:
            task = get_task(rt.id)
            pairs = fixed_pairs(task, rt.count, rt.crop, rt.seed, rt.split, rt.severities,
                                samples=pools[rt.id])
            bar.update(len(pairs))
            _save_task(tmp / task_file(task.id), pairs, task.grayscale)
            for s in rt.severities:
                chosen = [p for p in pairs if p.severity == s]
                rows.append({"domain": task.domain, "task": task.id, "severity": s, "count": len(chosen),
                             "distinct_images": len({p.source for p in chosen}), "crop": rt.crop,
                             "split": rt.split if rt.images is None else "custom"})
        bar.close()
        coverage = {"format": "datprl-edge-calibration/1", "recipe": recipe.name,
                    "tasks": [{**asdict(rt), "severities": list(rt.severities)} for rt in recipe.tasks],
                    "rows": rows,
                    "totals": _totals(rows)}
        (tmp / "coverage.json").write_text(json.dumps(coverage, indent=2) + "\n", encoding="utf-8")
        if recipe.path is not None:
            (tmp / "recipe.toml").write_bytes(recipe.path.read_bytes())
        files = sorted(p.name for p in tmp.iterdir())
        sums = "".join(f"{sha256_file(tmp / f)}  {f}\n" for f in files)
        (tmp / "SHA256SUMS").write_text(sums, encoding="utf-8")
    return coverage


def _save_task(path: Path, pairs, grayscale: bool) -> None:
    dtype, peak = (np.uint16, 65535.0) if grayscale else (np.uint8, 255.0)

    def pack(imgs):
        arr = np.stack(imgs)[..., :1] if grayscale else np.stack(imgs)
        return np.rint(np.clip(arr, 0.0, 1.0) * peak).astype(dtype)

    np.savez_compressed(path, lq=pack([p.lq for p in pairs]), gt=pack([p.gt for p in pairs]),
                        severity=np.array([p.severity for p in pairs], dtype=np.float32),
                        sources=np.array([p.source for p in pairs]))


def _totals(rows) -> dict:
    by_domain: dict[str, int] = {}
    for r in rows:
        by_domain[r["domain"]] = by_domain.get(r["domain"], 0) + r["count"]
    return {"pairs": sum(r["count"] for r in rows), "by_domain": by_domain}


def format_coverage(coverage: dict) -> str:
    """The coverage table as text: one row per (domain, task, severity) and the totals."""
    head = ("domain", "task", "severity", "count", "distinct images", "crop", "split")
    body = [(r["domain"], r["task"], f"{r['severity']:.2f}", str(r["count"]), str(r["distinct_images"]),
             str(r["crop"]), r["split"]) for r in coverage["rows"]]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = coverage["totals"]
    per = ", ".join(f"{d} {n}" for d, n in t["by_domain"].items())
    lines.append(f"total {t['pairs']} pairs ({per})")
    return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class CalibrationTask:
    task: str
    domain: str
    lq: np.ndarray  # float32 (N, 3, H, W) in [0, 1]
    gt: np.ndarray
    severity: np.ndarray  # float32 (N,)
    sources: tuple


def verify_calibration_set(set_dir) -> None:
    """Check every file against SHA256SUMS; VerificationError names the first mismatch."""
    from ..checkpoint import sha256_file

    set_dir = Path(set_dir)
    sums = set_dir / "SHA256SUMS"
    if not sums.is_file():
        raise InputNotFoundError(f"{sums} not found: not a calibration set (build one with `calib build`)")
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        f = set_dir / name.strip()
        if not f.is_file():
            raise VerificationError(f"calibration set {set_dir}: {name} listed in SHA256SUMS is missing")
        if sha256_file(f) != digest:
            raise VerificationError(f"calibration set {set_dir}: {name} does not match its SHA256SUMS entry")


def load_calibration_set(set_dir, *, verify: bool = True) -> dict[str, CalibrationTask]:
    """Task id -> CalibrationTask with float32 NCHW arrays, in the recipe's task order."""
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise InputNotFoundError(f"calibration set not found: {set_dir}")
    if verify:
        verify_calibration_set(set_dir)
    coverage = json.loads((set_dir / "coverage.json").read_text(encoding="utf-8"))
    out = {}
    for t in coverage["tasks"]:
        task = get_task(t["id"])
        with np.load(set_dir / task_file(task.id)) as z:
            arrays = {k: _unpack(z[k]) for k in ("lq", "gt")}
            sources = tuple(str(s) for s in z["sources"])
            out[task.id] = CalibrationTask(task.id, task.domain, arrays["lq"], arrays["gt"],
                                           z["severity"].astype(np.float32), sources)
    return out


def calibration_items(spec) -> list[dict]:
    """Flat list of {'lq', 'gt' (float32 CHW), 'task', 'domain', 'severity'} from a built set folder,
    or from a recipe (name, path or Recipe) built into a temporary folder (same values as a build)."""
    import tempfile

    if not isinstance(spec, Recipe) and Path(str(spec)).is_dir():
        tasks = load_calibration_set(spec)
    else:
        with tempfile.TemporaryDirectory(prefix="datprl-calib-") as tmp:
            build_calibration_set(spec, Path(tmp) / "set", progress=False)
            tasks = load_calibration_set(Path(tmp) / "set")
    return [{"lq": t.lq[i], "gt": t.gt[i], "task": t.task, "domain": t.domain,
             "severity": float(t.severity[i])} for t in tasks.values() for i in range(len(t.lq))]


def _unpack(arr: np.ndarray) -> np.ndarray:
    x = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
