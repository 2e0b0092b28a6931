"""A small model registry in the style of timm: `create_model(name, **options)`.

Architectures register a builder that takes keyword options; named models are an architecture
plus default options. Every module built here carries `datprl_config` (arch and options), so
that saving a checkpoint needs nothing else to rebuild it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from ..errors import UnknownArchitectureError, UnknownChoiceError

# Modules that register architectures and named models when imported.
_BUILTIN_MODULES = ("restormer", "nafnet", "student", "quantized", "folded", "folded_teacher")

_ARCHS: dict[str, Callable] = {}
_MODELS: dict[str, ModelSpec] = {}
_loaded = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    defaults: dict
    description: str
    role: str  # "teacher" or "student"


def register_arch(name: str):
    """Decorator: register a builder `fn(**options) -> nn.Module` under an architecture name."""

    def deco(fn):
        _ARCHS[name] = fn
        return fn

    return deco


def register_model(name: str, arch: str, defaults: dict, description: str, role: str) -> None:
    _MODELS[name] = ModelSpec(name, arch, dict(defaults), description, role)


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True


def list_models() -> list[ModelSpec]:
    _ensure_loaded()
    return list(_MODELS.values())


def list_archs() -> list[str]:
    _ensure_loaded()
    return sorted(_ARCHS)


def resolve(name: str) -> tuple[str, dict]:
    """Map a model name or architecture name to (arch, default options)."""
    _ensure_loaded()
    if name in _MODELS:
        spec = _MODELS[name]
        return spec.arch, dict(spec.defaults)
    if name in _ARCHS:
        return name, {}
    choices = list(_MODELS) + list(_ARCHS)
    err = UnknownChoiceError("model or architecture", name, choices)
    raise UnknownArchitectureError(str(err))


def create_model(name: str, **options):
    """Build a model by registered name (e.g. 'edge-xs', 'restormer-6t') or architecture name.

    Options override the named model's defaults. The module is returned in eval mode.
    """
    arch, opts = resolve(name)
    opts.update(options)
    try:
        model = _ARCHS[arch](**opts)
    except TypeError as e:
        raise UnknownArchitectureError(f"bad options for {arch}: {e}") from None
    model.datprl_config = {"arch": arch, "options": opts, "name": name}
    return model.eval()


def model_config(model) -> tuple[str, dict]:
    """(arch, options) of a module built by `create_model`."""
    cfg = getattr(model, "datprl_config", None)
    if cfg is None:
        raise UnknownArchitectureError("this module was not built by create_model; its config is unknown")
    return cfg["arch"], dict(cfg["options"])
