"""The targets table: ONNX (onnxruntime), OpenVINO and Core ML and what each can do.

Cheap to import: it names each target's modules and packages but imports no backend. Each target
owns one module per stage where targets differ (`quantize/<target>.py`, `export/<target>.py`,
`runtime/<target>.py`), each defining the names in STAGE_API; `stage_module(spec, stage)` loads one.
Code outside those modules asks the table (`TargetSpec` fields), never a target's name.
"""

from __future__ import annotations

import dataclasses
import importlib

from datprl_edge.core.errors import UnknownChoiceError

PRECISIONS = ("fp32", "fp16", "int8")
STAGES = ("quantize", "export", "runtime")  # the stages with one module per target
# What every target's module of a stage defines (the runtime module also has the table's
# session_class and inspect_function, and available_devices / check_structure where the table says).
STAGE_API = {
    "quantize": ("STACK", "SCHEME", "prepare", "convert", "rebuild", "backend_state"),
    "export": ("export",),
    "runtime": ("read_metadata", "bench_options", "bench_details"),
}
# Core ML compute units: the choices (the first is the default) and the ones `bench` measures unless told.
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
BENCH_COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_NE")


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    title: str
    label: str  # short name in messages ("Core ML shapes must be ...")
    suffix: str  # of the artifact's main file (.onnx, .xml, .mlpackage)
    runtime_module: str  # import name of the runtime that runs the artifact
    runtime_package: str  # pip package of that runtime
    export_modules: tuple  # (import name, pip package) needed to write the artifact
    default_precision: str
    session_class: str  # in the runtime module: the ArtifactSession subclass that runs an artifact
    inspect_function: str  # in the runtime module: path -> structure dict
    color: str  # in the report's plots
    precisions: tuple = PRECISIONS
    sidecars: tuple = ()  # suffixes of the files beside the main one that belong to the artifact
    fp16_modules: tuple = ()  # (import name, pip package) the FP16 conversion needs too
    qat_from: tuple = ()  # targets whose QAT checkpoints this exporter also takes (besides its own)
    shape_list: bool = True  # takes several --shape values (else one static shape or dynamic)
    # traced at a multiple of the pad multiple (no padding inside): static shapes must be multiples
    # of it, other sizes are padded by the session first
    pad_traced: bool = False
    own_int8_pad_traced: bool = False  # the same, for INT8 from this target's own quantizer only
    needs_macos: bool = False  # running an artifact (and so checking its numerics) needs macOS
    structure_check: bool = False  # the runtime module has check_structure(info, precision, params, shapes)
    compute_units: tuple = ()  # device choice by compute units (Core ML), not by device name
    lists_devices: bool = False  # the runtime module has available_devices() for `--device all`
    profiles: bool = False  # the runtime module has profile(path, shape, iters, threads): per-layer times

    modules: tuple = ()  # (stage, import name) of this target's module in each of STAGES

    def module(self, stage: str) -> str:
        """Import name of this target's module for a stage: quantize, export or runtime."""
        found = dict(self.modules).get(stage)
        if found is None:
            raise UnknownChoiceError("target stage", stage, STAGES)
        return found

    def accepts_qat(self, qat_target: str) -> bool:
        """Whether this exporter takes a QAT checkpoint made for `qat_target`."""
        return qat_target == self.name or qat_target in self.qat_from


_ONNX_TOOLS = (("onnx", "onnx"), ("onnxscript", "onnxscript"))


def _modules(name: str) -> tuple:
    return tuple((stage, f"datprl_edge.{stage}.{name}") for stage in STAGES)

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    TargetSpec("onnx", "ONNX (onnxruntime)", "ONNX", ".onnx", "onnxruntime", "onnxruntime", _ONNX_TOOLS,
               "fp32", "OnnxSession", "inspect_onnx", "#1f77b4",
               fp16_modules=(("onnxruntime", "onnxruntime"),), profiles=True, modules=_modules("onnx")),
    # OpenVINO reads the QDQ ONNX of an ONNX (PT2E) QAT result; not the other way round.
    TargetSpec("openvino", "OpenVINO IR", "OpenVINO", ".xml", "openvino", "openvino",
               _ONNX_TOOLS + (("openvino", "openvino"),), "fp32", "OpenVINOSession", "inspect_openvino",
               "#d62728", sidecars=(".bin",), qat_from=("onnx",), shape_list=False, own_int8_pad_traced=True,
               lists_devices=True, profiles=True, modules=_modules("openvino")),
    TargetSpec("coreml", "Core ML mlprogram", "Core ML", ".mlpackage", "coremltools", "coremltools",
               (("coremltools", "coremltools"),), "fp16", "CoreMLSession", "inspect_coreml", "#2ca02c",
               pad_traced=True, needs_macos=True, structure_check=True, compute_units=COMPUTE_UNITS,
               modules=_modules("coreml")),
)}


def target_names() -> tuple[str, ...]:
    return tuple(TARGETS)


def resolve_target(name: str) -> TargetSpec:
    """The spec of a target name; a typo gets "did you mean"."""
    key = str(name).strip().lower()
    if key not in TARGETS:
        raise UnknownChoiceError("target", str(name), list(TARGETS) + ["all"])
    return TARGETS[key]


def parse_targets(names) -> list[TargetSpec]:
    """Target names (a string with commas, or a list) with "all" expanded; order kept, no repeats."""
    if isinstance(names, str):
        names = [names]
    out: list[TargetSpec] = []
    for item in names:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            specs = list(TARGETS.values()) if part == "all" else [resolve_target(part)]
            out += [s for s in specs if s not in out]
    if not out:
        raise UnknownChoiceError("target", "", list(TARGETS) + ["all"])
    return out


def resolve_precision(name: str) -> str:
    key = str(name).strip().lower()
    if key not in PRECISIONS:
        raise UnknownChoiceError("precision", str(name), PRECISIONS)
    return key


def target_for_suffix(path) -> TargetSpec | None:
    text = str(path).rstrip("/\\").lower()
    for spec in TARGETS.values():
        if text.endswith(spec.suffix):
            return spec
    return None


def stage_module(target, stage: str):
    """A target's (name or spec) module for one stage (see `TargetSpec.module`); the runtime module
    needs numpy and that runtime only (no torch), the exporter and quantizer import torch inside their
    functions."""
    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    return importlib.import_module(spec.module(stage))
