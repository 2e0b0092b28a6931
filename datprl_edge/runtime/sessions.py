"""Run exported artifacts without torch: `open_artifact(path) -> Session` picks the runtime from
the file name (.onnx -> onnxruntime, .xml -> OpenVINO, .mlpackage -> Core ML).

A session has `run(nchw_float32) -> nchw_float32` (inputs in [0, 1], any batch size; sizes that
the artifact cannot take directly are padded to its pad multiple and cropped back) and
`metadata` (the toolkit entries embedded at export: model, tasks, tile size, precision, ...).
Artifacts of a model with a context (models/context.py) also have `context_layout` [(name, size)]
and `run_with_context(x, context, context_mix) -> (restored, context_out)` with (N, K) arrays;
`run` feeds them a zero context (the model's own behaviour).
"""

from __future__ import annotations

from pathlib import Path

from datprl_edge.core.errors import ConfigError, InputNotFoundError
from datprl_edge.core.targets import TARGETS, TargetSpec, stage_module, target_for_suffix


def artifact_target(path) -> str:
    return artifact_spec(path).name


def artifact_spec(path) -> TargetSpec:
    """The target an artifact belongs to, from its file name."""
    spec = target_for_suffix(path)
    if spec is None:
        known = ", ".join(s.suffix for s in TARGETS.values())
        raise ConfigError(f"{Path(path).name} is not an exported artifact: expected a file ending in {known}")
    return spec


def open_artifact(path, **options):
    """A runtime session for an artifact; `options` go to the target's session (e.g. `device`,
    `inference_precision` for OpenVINO, `providers` for onnxruntime, `compute_units` for Core ML)."""
    path = Path(path)
    spec = artifact_spec(path)
    if not path.exists():
        raise InputNotFoundError(f"artifact not found: {path}")
    return getattr(stage_module(spec, "runtime"), spec.session_class)(path, **options)


def read_artifact_metadata(path) -> dict:
    """The toolkit metadata of an artifact, without compiling it."""
    path = Path(path)
    target = artifact_target(path)
    if not path.exists():
        raise InputNotFoundError(f"artifact not found: {path}")
    return stage_module(target, "runtime").read_metadata(path)


def inspect_artifact(path) -> dict:
    """Structure of an artifact: inputs/outputs, op histogram, weight bytes by type, size."""
    path = Path(path)
    spec = artifact_spec(path)
    return getattr(stage_module(spec, "runtime"), spec.inspect_function)(path)
