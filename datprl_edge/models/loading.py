"""`load_model`: the torch model of a released DATPRL-IR checkpoint or of one of the toolkit's own.

What a MODEL argument names (these, a registry name, a QAT checkpoint or an exported artifact) is
decided once, above every stage, by `datprl_edge.sources` (`datprl_edge.load_model`)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from datprl_edge.core.errors import (
    CheckpointError,
    ConfigError,
    InputNotFoundError,
    PickledCheckpointError,
    StateDictMismatchError,
)
from datprl_edge.io.checkpoint import read_checkpoint
from datprl_edge.models.registry import create_model, list_archs

BUNDLED_PREFIX = "bundled:"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def load_model(path, network=None):
    """Return an eval-mode `nn.Module`.

    `path` is a toolkit checkpoint (`.safetensors`, config embedded), a released BasicSR
    checkpoint (`.pth`, `{'params': ...}` or `{'params_ema': ...}`, needs `network`), or
    `bundled:NAME` for weights shipped with the toolkit. `network` is a YAML/JSON path or a dict
    holding `network_g` (or the `network_g` block itself).
    """
    if isinstance(path, str) and path.startswith(BUNDLED_PREFIX):
        path = bundled_path(path[len(BUNDLED_PREFIX):])
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it")
    if network is None and _is_safetensors(path):
        state, cfg = read_checkpoint(path)
        if cfg.stage == "qat" and cfg.arch not in list_archs():
            raise CheckpointError(f"{path.name} is a QAT checkpoint ({cfg.arch}), which the models stage "
                                  "cannot build on its own; load it with datprl_edge.load_model "
                                  "(datprl_edge.sources)")
        model = create_model(cfg.arch, **cfg.options)
        load_state_strict(model, state, source=path)
        model.datprl_checkpoint = cfg
        return model.eval()
    if network is None:
        raise ConfigError(
            f"{path.name} is not a self-describing checkpoint; pass --network with the YAML/JSON "
            "holding its network_g block"
        )
    net = read_network_config(network)
    arch = net.pop("type", None)
    if not arch:
        raise ConfigError("network config has no 'type' (e.g. DualPromptRestormerv3)")
    state = read_state_dict(path)
    model = create_model(arch, **net)
    load_state_strict(model, state, source=path)
    return model.eval()


def bundled_path(name: str) -> Path:
    candidates = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors")) if WEIGHTS_DIR.is_dir() else []
    p = WEIGHTS_DIR / f"{name}.safetensors"
    if not p.is_file():
        from datprl_edge.core.errors import UnknownChoiceError

        if candidates:
            raise UnknownChoiceError("bundled model", name, candidates)
        raise InputNotFoundError(f"no bundled weights named {name!r} (this install ships none)")
    return p


def bundled_exists(name: str) -> bool:
    return (WEIGHTS_DIR / f"{name}.safetensors").is_file()


def read_network_config(network) -> dict:
    """Options of a `network_g` block from a dict or a YAML/JSON file, copied."""
    if isinstance(network, (str, Path)):
        p = Path(network)
        if not p.is_file():
            raise InputNotFoundError(f"network config not found: {p}")
        text = p.read_text()
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # yaml and json raise many kinds
            raise ConfigError(f"cannot parse network config {p}: {str(e).splitlines()[0]}") from None
    else:
        data = network
    if not isinstance(data, dict):
        raise ConfigError("network config must be a mapping with a network_g block")
    if "network_g" in data:
        data = data["network_g"]
    if not isinstance(data, dict):
        raise ConfigError("network_g must be a mapping of options")
    return dict(data)


def read_state_dict(path) -> dict:
    """Tensors of a released `.pth` (weights_only) or a plain `.safetensors` state dict."""
    import torch

    path = Path(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            reason = str(e).splitlines()[0]
            raise CheckpointError(f"{path} is not a readable safetensors file: {reason}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it needs {found.group(1)})" if found else ""
        raise PickledCheckpointError(
            f"{path.name} holds pickled Python objects, not plain tensors; refusing to unpickle it{what}. "
            "Re-save it as {'params': state_dict}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path.name}: {str(e).splitlines()[0][:160]}") from None
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict ('params' or 'params_ema')")
    return obj


def load_state_strict(model, state: dict, source="checkpoint") -> None:
    """Load `state` into `model` strictly, or raise naming a few missing/unexpected keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        hint = "check that --network matches the checkpoint (block counts, widths, prompt options)"
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = "keys start with 'module.': strip that DataParallel prefix"
        raise StateDictMismatchError(missing, unexpected, shapes, hint=hint)
    model.load_state_dict(state, strict=True)


def _is_safetensors(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors begins with an 8-byte little-endian header length followed by '{'.
    return len(head) == 9 and head[8:9] == b"{"
