"""Deployment targets: ONNX (onnxruntime), OpenVINO and Core ML.

This table is cheap to import: it names each target's modules and packages but imports no backend.
`target_module(name)` loads a target's runtime module (numpy + that runtime only, no torch) and
`export_module(name)` its exporter (torch, imported inside its functions).
"""

from __future__ import annotations

import dataclasses
import importlib

from ..errors import UnknownChoiceError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    title: str
    suffix: str  # of the artifact's main file (.onnx, .xml, .mlpackage)
    runtime_module: str  # import name of the runtime that runs the artifact
    runtime_package: str  # pip package of that runtime
    export_modules: tuple  # (import name, pip package) needed to write the artifact
    default_precision: str
    precisions: tuple = PRECISIONS


TARGETS: dict[str, TargetSpec] = {
    "onnx": TargetSpec("onnx", "ONNX (onnxruntime)", ".onnx", "onnxruntime", "onnxruntime",
                       (("onnx", "onnx"), ("onnxscript", "onnxscript")), "fp32"),
    "openvino": TargetSpec("openvino", "OpenVINO IR", ".xml", "openvino", "openvino",
                           (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("openvino", "openvino")),
                           "fp32"),
    "coreml": TargetSpec("coreml", "Core ML mlprogram", ".mlpackage", "coremltools", "coremltools",
                         (("coremltools", "coremltools"),), "fp16"),
}


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


def target_module(name: str):
    """The runtime module of a target (session, artifact inspection): numpy + that runtime only."""
    return importlib.import_module(f"{__name__}.{resolve_target(name).name}")


def export_module(name: str):
    """The exporter module of a target (needs torch and the target's conversion packages)."""
    return importlib.import_module(f"{__name__}.{resolve_target(name).name}_export")
