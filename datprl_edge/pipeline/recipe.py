"""Pipeline recipes (`recipes/*.toml`): which teacher and student, and the settings of every stage.

Top-level keys: name, description, seed, threads (torch / runtime threads of the pipeline's own work;
0 = the libraries' defaults). Sections: teacher, distill, calibration, fold, qat, export, bench,
eval, visuals, report. Missing
keys take the defaults below; unknown sections or keys are refused with the known ones listed.
Relative paths in a recipe resolve against the recipe's own folder.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from datprl_edge.core.errors import ConfigError, InputNotFoundError, UnknownChoiceError
from datprl_edge.core.resources import find_resource
from datprl_edge.core.targets import COMPUTE_UNITS

DEFAULT_RECIPE = "quick"

DEFAULTS: dict = {
    "teacher": {"checkpoint": "bundled:teacher-ref", "network": ""},
    "distill": {"mode": "bundled", "student": "bundled:edge-xs", "data": "synthetic:9task"},
    "calibration": {"recipe": "all"},
    "fold": {"mode": "dynamic", "images": 1, "crop": 64, "min_psnr_db": 60.0},
    "qat": {"steps": 300, "batch_size": 4, "crop": 64},
    "export": {"targets": ["onnx", "openvino", "coreml"], "precisions": ["fp32", "fp16", "int8"],
               "verify_images": 2, "verify_size": "100x124", "tile_size": 256, "tile_overlap": 16},
    "bench": {"shapes": ["256x256"], "iters": 0, "seconds": 3.0, "warmup": 3, "threads": 0,
              "compute_units": [COMPUTE_UNITS[0]]},
    "eval": {"tasks": ["9task"], "count": 8, "size": 256, "seed": 0},
    "visuals": {"size": 256, "seed": 0},
    "report": {"budget_ms": "none", "max_drop": 0.5},
}
DISTILL_MODES = ("bundled", "train")
FOLD_MODES = ("dynamic", "none")
# Keys passed on to the stage's own config class (checked there, with its messages).
_PASS_THROUGH = {"distill": "train", "qat": "qat"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    seed: int
    sections: dict
    path: Path | None = None
    threads: int = 0  # an execution setting: not part of any stage key

    def __getitem__(self, section: str) -> dict:
        return self.sections[section]

    def resolve(self, value: str) -> str:
        """A path from the recipe relative to its folder; names (bundled:X, recipe names) as they are."""
        if not value or str(value).startswith("bundled:") or self.path is None:
            return value
        p = Path(value)
        if p.is_absolute():
            return str(p)
        candidate = self.path.parent / p
        return str(candidate) if candidate.exists() or p.suffix else value


def find_recipe(name_or_path) -> Path:
    """A pipeline recipe by name (`recipes/NAME.toml`) or .toml path."""
    return find_resource("recipes", name_or_path, "pipeline recipe")


def load_recipe(name_or_path=DEFAULT_RECIPE) -> Recipe:
    path = find_recipe(name_or_path)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {path.name}: {e}") from None
    return parse_recipe(data, path)


def parse_recipe(data: dict, path: Path | None = None) -> Recipe:
    where = path.name if path else "recipe"
    data = dict(data)
    name = str(data.pop("name", path.stem if path else "recipe"))
    description = str(data.pop("description", ""))
    seed = data.pop("seed", 0)
    threads = data.pop("threads", 0)
    for key, v in (("seed", seed), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{where}: {key} must be an integer >= 0, got {v!r}")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; known: name, description, "
                          f"seed, threads, {', '.join(DEFAULTS)}")
    sections = copy.deepcopy(DEFAULTS)
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of settings")
        allowed = set(DEFAULTS[section]) | _extra_keys(section)
        bad = sorted(set(values) - allowed)
        if bad:
            raise ConfigError(f"{where}: [{section}] has unknown key(s) {', '.join(bad)}; known: "
                              f"{', '.join(sorted(allowed))}")
        sections[section].update(values)
    _check(sections, where)
    return Recipe(name, description, seed, sections, path, threads)


def _extra_keys(section: str) -> set:
    kind = _PASS_THROUGH.get(section)
    if kind == "train":
        from datprl_edge.train.config import DistillConfig

        return {f.name for f in dataclasses.fields(DistillConfig)}
    if kind == "qat":
        from datprl_edge.quantize.qat import QATConfig

        return {f.name for f in dataclasses.fields(QATConfig)} - {"target"}
    return set()


def _check(s: dict, where: str) -> None:
    from datprl_edge.core.targets import PRECISIONS, parse_targets

    if s["distill"]["mode"] not in DISTILL_MODES:
        raise UnknownChoiceError(f"{where}: [distill] mode", str(s["distill"]["mode"]), DISTILL_MODES)
    if s["fold"]["mode"] not in FOLD_MODES:
        raise UnknownChoiceError(f"{where}: [fold] mode", str(s["fold"]["mode"]), FOLD_MODES)
    s["export"]["targets"] = [t.name for t in parse_targets(list(s["export"]["targets"]))]
    for p in s["export"]["precisions"]:
        if p not in PRECISIONS:
            raise UnknownChoiceError(f"{where}: [export] precision", str(p), PRECISIONS)
    for section, key in (("eval", "count"), ("eval", "size"), ("visuals", "size"), ("bench", "warmup")):
        v = s[section][key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "warmup" else 1):
            raise ConfigError(f"{where}: [{section}] {key} must be a positive integer, got {v!r}")
    if isinstance(s["eval"]["tasks"], str):
        s["eval"]["tasks"] = [s["eval"]["tasks"]]
    for key in ("budget_ms", "max_drop"):
        v = s["report"][key]
        if v == "none":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "budget_ms" and v == 0):
            raise ConfigError(f"{where}: [report] {key} must be a positive number or \"none\", got {v!r}")
    _check_stage_configs(s, where)


def _check_stage_configs(s: dict, where: str) -> None:
    """Build every stage's own config from the recipe now, so that a bad value (negative QAT steps,
    a 0x0 verify size, an unknown eval task) stops the run before its first stage, not hours later."""
    from datprl_edge.core.errors import DatprlEdgeError
    from datprl_edge.core.shapes import parse_hw
    from datprl_edge.data.tasks import resolve_tasks

    def stage(section: str, build):
        try:
            build()
        except (DatprlEdgeError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: [{section}] {' '.join(str(e).split())}") from None

    def qat():
        from datprl_edge.quantize.qat import QATConfig

        QATConfig(target=s["export"]["targets"][0], **s["qat"])

    def distill():
        from datprl_edge.train.config import DistillConfig

        if s["distill"]["mode"] == "train":
            DistillConfig(**{k: v for k, v in s["distill"].items() if k not in ("mode", "student", "data")})

    def export():
        from datprl_edge.export.config import ExportConfig

        e = s["export"]
        for precision in e["precisions"]:
            ExportConfig(targets=tuple(e["targets"]), precision=precision, verify_images=e["verify_images"],
                         verify_size=parse_hw(e["verify_size"]), tile_size=e["tile_size"],
                         tile_overlap=e["tile_overlap"])

    def fold():
        from datprl_edge.fold.folding import FoldConfig

        f = s["fold"]
        FoldConfig(images=f["images"], crop=f["crop"], min_psnr_db=f["min_psnr_db"], latency_iters=0)

    def bench():
        from datprl_edge.bench.driver import BenchConfig

        b = s["bench"]
        BenchConfig(shapes=tuple(b["shapes"]), iters=b["iters"] or None, seconds=b["seconds"],
                    warmup=b["warmup"], threads=b["threads"] or None, compute_units=tuple(b["compute_units"]))

    for section, build in (("qat", qat), ("distill", distill), ("export", export), ("fold", fold),
                           ("bench", bench), ("eval", lambda: resolve_tasks(s["eval"]["tasks"]))):
        stage(section, build)


def report_limit(value):
    """A [report] limit as a number, or None for "none"."""
    return None if value == "none" else float(value)


def is_file_spec(spec: str) -> bool:
    return str(spec).startswith("bundled:") or Path(str(spec)).suffix in (".safetensors", ".pth", ".pt")


def checkpoint_file(spec: str, what: str) -> Path:
    from datprl_edge.models.loading import BUNDLED_PREFIX, bundled_path

    if str(spec).startswith(BUNDLED_PREFIX):
        return bundled_path(str(spec)[len(BUNDLED_PREFIX):])
    p = Path(str(spec))
    if not p.is_file():
        raise InputNotFoundError(f"{what} not found: {spec} (set it in the recipe to a released checkpoint "
                                 "or bundled:NAME)")
    return p


def calibration_recipe_file(spec: str) -> Path:
    """The file of calibration recipe `spec` (a name in `calibration/` or a path), checked by parsing it."""
    from datprl_edge.data.calib import load_calib_recipe

    return load_calib_recipe(spec).path


def model_name(r: Recipe) -> str:
    from datprl_edge.core.artifacts import safe_name

    student = str(r["distill"]["student"])
    return safe_name(Path(student).stem if is_file_spec(student) and not student.startswith("bundled:")
                     else student)
