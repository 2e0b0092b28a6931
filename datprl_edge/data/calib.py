"""Calibration sets for quantization (QAT, PTQ, export): recipes, building, coverage and hashes.

A calibration recipe (TOML in the top-level `calibration/` folder, or any path) lists tasks with
sample counts and severities; `build_calibration_set` writes one `<domain>__<task>.npz` per task
(uint8 RGB, or uint16 single-channel for grayscale medical tasks), `coverage.json`, a copy of the
recipe and `SHA256SUMS`, all in one atomic step. `calibration_images` is how every stage gets the
images: from a built set folder or from a recipe built on the fly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from datprl_edge.core import limits
from datprl_edge.core.errors import (
    ConfigError,
    ImageReadError,
    InputNotFoundError,
    OutputExistsError,
    UnknownChoiceError,
    VerificationError,
)
from datprl_edge.core.resources import find_resource, list_resources
from datprl_edge.data.tasks import get_task
from datprl_edge.io.atomic import atomic_dir
from datprl_edge.io.images import npy_header_shape

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

SPLITS = ("train", "val")
_TOP_KEYS = {"name", "description", "seed", "crop", "split", "tasks"}
_TASK_KEYS = {"id", "count", "severities", "crop", "split", "seed", "images"}
DEFAULT_COUNT, DEFAULT_CROP = 16, 256  # a task the recipe does not list gets the recipes' usual counts


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
class CalibRecipe:
    name: str
    description: str
    tasks: tuple
    path: Path | None = field(default=None, compare=False)


_MAX_MANIFEST_BYTES = 1 << 20  # a SHA256SUMS of a calibration set is a few hundred bytes


def list_recipes() -> dict[str, Path]:
    """Name -> file of the calibration recipes in `calibration/`."""
    return list_resources("calibration")


def load_calib_recipe(name_or_path) -> CalibRecipe:
    """A calibration recipe by name (e.g. 'drone') or from a .toml path."""
    path = find_resource("calibration", name_or_path, "calibration recipe")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path.name}: invalid TOML ({e})") from None
    return parse_calib_recipe(data, path)


def parse_calib_recipe(data: dict, path: Path | None = None) -> CalibRecipe:
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
        limits.check("crop", t["crop"], f"{where} task {task.id}: crop")
        limits.check("pixels", t["count"] * t["crop"] ** 2, f"{where} task {task.id}: count x crop^2")
        _check_int(t["seed"], 0, f"{where} task {task.id}: seed")
        if t["split"] not in SPLITS:
            raise UnknownChoiceError("split", str(t["split"]), SPLITS)
        images = t.get("images")
        if images is not None:
            images = str(Path(path.parent, images) if path else Path(images))
        tasks.append(RecipeTask(task.id, t["count"], tuple(float(s) for s in sev), t["crop"], t["split"],
                                t["seed"], images))
    name = str(data.get("name", path.stem if path else "recipe"))
    return CalibRecipe(name, str(data.get("description", "")), tuple(tasks), path)


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
    from datprl_edge.data.pairs import split_pool

    if rt.images is None:
        return split_pool(rt.id, rt.split)
    from datprl_edge.data.samples import Sample

    folder = Path(rt.images)
    if not folder.is_dir():
        raise InputNotFoundError(f"images folder for {rt.id} not found: {folder}")
    from datprl_edge.data.datasets import IMAGE_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputNotFoundError(f"no images in {folder} for task {rt.id}")
    domain = get_task(rt.id).domain
    return [Sample(p.name, p, domain, rt.split, f"file:{p}", "custom") for p in files]


def build_calibration_set(recipe, out_dir, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the calibration set of `recipe` (a CalibRecipe, name or path) to `out_dir`; returns coverage."""
    from tqdm import tqdm

    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.io.checkpoint import sha256_file

    recipe = recipe if isinstance(recipe, CalibRecipe) else load_calib_recipe(recipe)
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


def verify_calibration_set(set_dir) -> dict[str, str]:
    """Check every file against SHA256SUMS; VerificationError names the first mismatch. Entries
    must be plain file names inside the set (no paths), and the set's own files must all be listed.
    Returns file name -> sha256."""
    from datprl_edge.io.checkpoint import sha256_file

    set_dir = Path(set_dir)
    sums = set_dir / "SHA256SUMS"
    if not sums.is_file():
        raise InputNotFoundError(f"{sums} not found: not a calibration set (build one with `calib build`)")
    if sums.stat().st_size > _MAX_MANIFEST_BYTES:
        raise VerificationError(f"calibration set {set_dir}: SHA256SUMS is {sums.stat().st_size} bytes; "
                                "not a manifest this toolkit writes")
    listed = _parse_sums(sums.read_text(encoding="utf-8", errors="replace"), set_dir)
    for name, digest in listed.items():
        f = set_dir / name
        if not f.is_file() or f.is_symlink():
            raise VerificationError(f"calibration set {set_dir}: {name} listed in SHA256SUMS is missing")
        if sha256_file(f) != digest:
            raise VerificationError(f"calibration set {set_dir}: {name} does not match its SHA256SUMS entry")
    if "coverage.json" not in listed:
        raise VerificationError(f"calibration set {set_dir}: coverage.json is not listed in SHA256SUMS")
    return listed


def _parse_sums(text: str, set_dir: Path) -> dict[str, str]:
    listed = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        name = parts[1].strip().lstrip("*") if len(parts) == 2 else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise VerificationError(f"calibration set {set_dir}: SHA256SUMS line {n} is not "
                                    "'<sha256>  <file name>'")
        if name != Path(name).name or name in (".", "..") or "\\" in name:
            raise VerificationError(f"calibration set {set_dir}: SHA256SUMS line {n} names {name[:80]!r}, "
                                    "which is not a file of the set (paths are not allowed)")
        listed[name] = digest
    if not listed:
        raise VerificationError(f"calibration set {set_dir}: SHA256SUMS lists no files")
    return listed


def _read_coverage(set_dir: Path) -> list[dict]:
    """The task entries of coverage.json, each checked: a known task id whose file exists."""
    path = set_dir / "coverage.json"
    try:
        coverage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"calibration set {set_dir}: coverage.json is not valid JSON "
                          f"({str(e).splitlines()[0][:80]})") from None
    tasks = coverage.get("tasks") if isinstance(coverage, dict) else None
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) and "id" in t for t in tasks):
        raise ConfigError(f"calibration set {set_dir}: coverage.json needs a non-empty 'tasks' list of "
                          "{\"id\": ...} entries; rebuild the set with `calib build`")
    return tasks


def _load_task_file(path: Path) -> dict:
    """The arrays of one task file (.npz, no pickles), declared sizes checked before decompression."""
    import zipfile

    keys = ("lq", "gt", "sources", "severity")
    try:
        with zipfile.ZipFile(path) as zf:
            for key in keys:
                with zf.open(f"{key}.npy") as f:
                    shape = npy_header_shape(f)
                if key in ("lq", "gt"):  # (N, H, W, C) stored
                    limits.check("pixels", int(np.prod(shape[:-1], dtype=np.float64)),
                                 f"{path.name} {key} {tuple(shape)}")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ImageReadError(f"cannot read {path.name}: corrupt calibration task file "
                             f"({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None


def load_calibration_set(set_dir, *, verify: bool = True) -> dict[str, CalibrationTask]:
    """Task id -> CalibrationTask with float32 NCHW arrays, in the recipe's task order."""
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise InputNotFoundError(f"calibration set not found: {set_dir}")
    listed = verify_calibration_set(set_dir) if verify else None
    out = {}
    for t in _read_coverage(set_dir):
        task = get_task(str(t["id"]))
        name = task_file(task.id)
        if listed is not None and name not in listed:
            raise VerificationError(f"calibration set {set_dir}: {name} is not listed in SHA256SUMS")
        if not (set_dir / name).is_file():
            raise InputNotFoundError(f"calibration set {set_dir}: {name} is missing")
        z = _load_task_file(set_dir / name)
        out[task.id] = CalibrationTask(task.id, task.domain, _unpack(z["lq"]), _unpack(z["gt"]),
                                       z["severity"].astype(np.float32), tuple(str(s) for s in z["sources"]))
    return out


@dataclass(frozen=True, eq=False)
class CalibrationImages:
    """The pairs of a calibration set or recipe: task id -> CalibrationTask, in the recipe's order."""

    tasks: dict
    description: str  # "calibration set PATH" or "calibration recipe 'NAME'"

    def pairs(self) -> list[dict]:
        """Flat list of {'lq', 'gt' (float32 CHW), 'task', 'domain', 'severity'} (what QAT takes)."""
        return [{"lq": t.lq[i], "gt": t.gt[i], "task": t.task, "domain": t.domain,
                 "severity": float(t.severity[i])} for t in self.tasks.values() for i in range(len(t.lq))]


def calibration_images(spec, *, tasks=None, count: int | None = None,
                       crop: int | None = None) -> CalibrationImages:
    """The calibration pairs of `spec`: a built set folder (verified against its SHA256SUMS), or a
    recipe (name, .toml path or CalibRecipe) built into a temporary folder, same values as a build.

    `tasks`: only these task ids, in this order (a set must hold them; a recipe that does not list
    one builds it with DEFAULT_COUNT pairs of DEFAULT_CROP at the default severity). `count`: at most
    this many pairs per task. `crop`: a set's pairs are centre-cropped to at most this size; a
    recipe is built at it.
    """
    import tempfile

    wanted = None if tasks is None else [get_task(t).id for t in tasks]
    if not isinstance(spec, CalibRecipe) and Path(str(spec)).is_dir():
        folder = Path(str(spec))
        loaded = load_calibration_set(folder)
        for t in wanted or ():
            if t not in loaded:
                raise UnknownChoiceError(f"task in calibration set {folder.name}", t, loaded)
        chosen = {t: _cut(loaded[t], count, crop) for t in (wanted or loaded)}
        return CalibrationImages(chosen, f"calibration set {spec}")
    recipe = spec if isinstance(spec, CalibRecipe) else load_calib_recipe(spec)
    described = f"calibration recipe {recipe.name!r}"
    if wanted is not None or count or crop:
        listed = {rt.id: rt for rt in recipe.tasks}
        picked = []
        for t in wanted or listed:
            rt = listed.get(t) or RecipeTask(t, DEFAULT_COUNT, (get_task(t).default_severity,), DEFAULT_CROP,
                                             "train", 0)
            picked.append(replace(rt, count=count or rt.count, crop=crop or rt.crop))
        recipe = replace(recipe, tasks=tuple(picked), path=None)
    with tempfile.TemporaryDirectory(prefix="datprl-calib-") as tmp:
        build_calibration_set(recipe, Path(tmp) / "set", progress=False)
        return CalibrationImages(load_calibration_set(Path(tmp) / "set"), described)


def _cut(t: CalibrationTask, count: int | None, crop: int | None) -> CalibrationTask:
    """The first `count` pairs of a task, centre-cropped to at most `crop` pixels per side."""
    n = slice(None, count or None)
    lq, gt = t.lq[n], t.gt[n]
    if crop is not None and (lq.shape[2] > crop or lq.shape[3] > crop):
        h, w = min(crop, lq.shape[2]), min(crop, lq.shape[3])
        top, left = (lq.shape[2] - h) // 2, (lq.shape[3] - w) // 2
        lq, gt = (a[:, :, top:top + h, left:left + w] for a in (lq, gt))
    return CalibrationTask(t.task, t.domain, lq, gt, t.severity[n], t.sources[n])


def _unpack(arr: np.ndarray) -> np.ndarray:
    x = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
