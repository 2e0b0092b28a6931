"""`ExportConfig` (what `export_model` does) and the target profiles in `export/*.toml`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datprl_edge.core.errors import ConfigError, UnknownChoiceError
from datprl_edge.core.metrics import check_drop_budget
from datprl_edge.core.resources import find_resource, list_resources
from datprl_edge.core.shapes import parse_hw
from datprl_edge.core.targets import COMPUTE_UNITS, PRECISIONS, parse_targets, resolve_precision

# QAT steps of a folded export's INT8 (`--task`) unless told: post-training quantization of a folded
# student lost up to 0.21 dB on a held-out set (edge-lat, dehazing, shifted), 300 QAT steps at most 0.045 dB
# for both students and both deployed tasks (benchmarks/results/qat300, edge-lat/qat300); a whole folded
# export took 80 s (edge-lat) and 130 s (edge-xs) on two cores. The all-in-one INT8 stays PTQ (or the
# shipped QAT weights).
FOLDED_QAT_STEPS = 300

PROFILE_KEYS = ("target", "precision", "shapes", "dynamic", "tile_size", "tile_overlap", "compute_units",
                "calibration", "qat_steps", "verify_images", "verify_size", "description")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`targets`: names or "all". `precision`: fp32/fp16/int8 (or a comma list, or "all"), None for
    each target's default (Core ML fp16, others fp32). `shapes`: () for dynamic H/W, one (h, w)
    for a static artifact, several for Core ML enumerated shapes. `task`: fold the prompts for this
    task id first. `calibration`: recipe for the verification images and for PTQ/QAT of a float model at int8
    (`qat_steps` 0 = post-training quantization; None: `FOLDED_QAT_STEPS` with a `task`, else 0)."""

    targets: tuple = ("onnx",)
    precision: str | None = None
    shapes: tuple = ()
    task: str | None = None
    model_name: str | None = None
    tile_size: int = 256
    tile_overlap: int = 16
    verify_images: int = 2
    verify_size: tuple = (100, 124)
    calibration: str | None = None
    qat_steps: int | None = None
    max_drop: float | None = None  # dB: the sensitivity search keeps layers float until INT8 meets it
    compute_units: str = COMPUTE_UNITS[0]
    source_sha256: str | None = None
    profile: str | None = None
    overwrite: bool = False
    # ONNX: rewrite the graph into ops onnxruntime runs fast (export/onnx_runtime_graph.py); False
    # writes the graph as torch's exporter traced it, for other ONNX runtimes
    onnx_rewrites: bool = True

    def precisions_for(self, default: str) -> list[str]:
        """The precisions to export for a target whose default is `default`."""
        return self.precision.split(",") if self.precision else [default]

    def __post_init__(self):
        targets = self.targets if isinstance(self.targets, (list, tuple)) else (self.targets,)
        object.__setattr__(self, "targets", tuple(s.name for s in parse_targets(list(targets))))
        if self.precision is not None:
            names = [p for p in str(self.precision).replace(" ", "").split(",") if p]
            names = list(PRECISIONS) if names == ["all"] else [resolve_precision(p) for p in names]
            if not names:
                raise ConfigError("precision must be fp32, fp16, int8, a comma list of them, or all")
            object.__setattr__(self, "precision", ",".join(dict.fromkeys(names)))
        object.__setattr__(self, "shapes", tuple(parse_hw(s, "--shape") for s in self.shapes))
        object.__setattr__(self, "verify_size", parse_hw(self.verify_size, "verify size"))
        for name in ("tile_size", "verify_images"):
            _positive(getattr(self, name), name)
        _positive(self.tile_overlap, "tile_overlap", minimum=0)
        if self.qat_steps is None:
            object.__setattr__(self, "qat_steps", FOLDED_QAT_STEPS if self.task else 0)
        _positive(self.qat_steps, "qat_steps", minimum=0)
        if self.max_drop is not None:
            check_drop_budget(self.max_drop, "--max-drop")
        if self.tile_overlap * 2 >= self.tile_size:
            raise ConfigError(f"tile overlap {self.tile_overlap} must be less than half the tile size "
                              f"{self.tile_size}")
        if self.verify_images > 16:
            raise ConfigError(f"verify_images must be 1..16 (a few images are enough), "
                              f"got {self.verify_images}")
        if not isinstance(self.onnx_rewrites, bool):
            raise ConfigError(f"onnx_rewrites must be true or false, got {self.onnx_rewrites!r}")
        units = str(self.compute_units).upper()
        if units not in COMPUTE_UNITS:
            raise UnknownChoiceError("Core ML compute units", str(self.compute_units), COMPUTE_UNITS)
        object.__setattr__(self, "compute_units", units)


def list_profiles() -> list[str]:
    return list(list_resources("export"))


def load_profile(name_or_path) -> dict:
    """ExportConfig fields from a profile name (export/NAME.toml) or a .toml path."""
    path = find_resource("export", name_or_path, "export profile")
    data = _read_toml(path)
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"{path.name}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(PROFILE_KEYS)}")
    out: dict = {"profile": path.stem}
    if "target" in data:
        out["targets"] = tuple(data["target"]) if isinstance(data["target"], list) else (data["target"],)
    for key in ("precision", "tile_size", "tile_overlap", "compute_units", "calibration", "qat_steps",
                "verify_images"):
        if key in data:
            out[key] = data[key]
    if "verify_size" in data:
        out["verify_size"] = parse_hw(data["verify_size"])
    if data.get("shapes") and data.get("dynamic"):
        raise ConfigError(f"{path.name}: give either shapes or dynamic = true, not both")
    if "shapes" in data:
        out["shapes"] = tuple(parse_hw(s) for s in data["shapes"])
    elif data.get("dynamic"):
        out["shapes"] = ()
    return out


def _positive(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {path.name}: {e}") from None
