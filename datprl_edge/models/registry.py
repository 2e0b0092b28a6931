"""A small model registry in the style of timm: `create_model(name, **options)`.

Architectures register a builder that takes keyword options; named models are an architecture
plus default options. Every module built here carries `datprl_config` (arch and options), so
that saving a checkpoint needs nothing else to rebuild it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from datprl_edge.core.errors import (
    DatprlEdgeError,
    ResourceLimitError,
    UnknownArchitectureError,
    UnknownChoiceError,
)

# Modules that register architectures and named models when imported. Stages above models register
# their own: quantize's "QuantizedModel" is registered by `datprl_edge.sources` before a QAT checkpoint
# is loaded.
_BUILTIN_MODULES = ("datprl_edge.models.restormer", "datprl_edge.models.nafnet", "datprl_edge.models.student",
                    "datprl_edge.models.folded", "datprl_edge.models.folded_teacher")

# Bounds on option values checked before a model of an unregistered config is even counted.
_MAX_OPTION, _MAX_LIST, _MAX_LIST_SUM = 16384, 64, 1024

_ARCHS: dict[str, Callable] = {}
_SELF_CHECKED: set[str] = set()
_MODELS: dict[str, ModelSpec] = {}
_loaded = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    defaults: dict
    description: str
    role: str  # "teacher" or "student"


def register_arch(name: str, *, builds_checked_models: bool = False):
    """Decorator: register a builder `fn(**options) -> nn.Module` under an architecture name.
    `builds_checked_models`: the builder makes its model with `create_model` (which checks its size)
    and cannot run on torch's meta device, so `check_model_size` does not build it there."""

    def deco(fn):
        _ARCHS[name] = fn
        if builds_checked_models:
            _SELF_CHECKED.add(name)
        return fn

    return deco


def register_model(name: str, arch: str, defaults: dict, description: str, role: str) -> None:
    _MODELS[name] = ModelSpec(name, arch, dict(defaults), description, role)


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
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
    if not _registered_config(arch, opts):
        check_model_size(arch, opts)
    model = _build(arch, opts)
    model.datprl_config = {"arch": arch, "options": opts, "name": name}
    return model.eval()


def _build(arch: str, opts: dict):
    try:
        return _ARCHS[arch](**opts)
    except DatprlEdgeError:
        raise
    except (TypeError, ValueError, IndexError) as e:
        # an option of the wrong type or an absurd value (ffn_expand 1e307 makes torch refuse a conv)
        raise UnknownArchitectureError(f"bad options for {arch}: {e}") from None


def _registered_config(arch: str, opts: dict) -> bool:
    """Whether (arch, options) is exactly one of the registered models (sizes known and sane)."""
    return any(spec.arch == arch and spec.defaults == opts for spec in _MODELS.values())


def check_model_size(arch: str, opts: dict) -> None:
    """Refuse a config whose model would be too large, before it is built: option values first
    (bounded so that even counting is quick), then parameters and MACs of a copy built on torch's
    meta device (no memory). Limits: `datprl_edge.core.limits` (params, macs)."""
    import torch

    from datprl_edge.core import limits
    from datprl_edge.models.complexity import count_macs

    for key, value in opts.items():
        if isinstance(value, (list, tuple)):
            ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
            bad = len(value) > _MAX_LIST or sum(abs(v) for v in ints) > _MAX_LIST_SUM
        else:
            bad = isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_OPTION
        if bad:
            raise ResourceLimitError(
                f"{arch} option {key} = {str(value)[:60]} is far beyond any model this toolkit builds "
                f"(numbers up to {_MAX_OPTION}; lists up to {_MAX_LIST} long, summing to {_MAX_LIST_SUM})")
    if arch in _SELF_CHECKED:
        return
    with torch.device("meta"):
        model = _build(arch, opts)
    params = sum(p.numel() for p in model.parameters())
    limits.check("params", params, f"{arch} with these options")
    try:
        macs = count_macs(model.eval(), (1, int(opts.get("img_channel", 3) or 3), 256, 256)).total
    except DatprlEdgeError:
        raise
    except Exception:  # noqa: BLE001 - an architecture the meta counter cannot trace: params decide
        return
    limits.check("macs", macs, f"{arch} with these options at 256x256")


def model_config(model) -> tuple[str, dict]:
    """(arch, options) of a module built by `create_model`."""
    cfg = getattr(model, "datprl_config", None)
    if cfg is None:
        raise UnknownArchitectureError("this module was not built by create_model; its config is unknown")
    return cfg["arch"], dict(cfg["options"])
