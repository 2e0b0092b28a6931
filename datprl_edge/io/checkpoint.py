"""Self-describing checkpoints: safetensors weights plus an embedded JSON config, no pickle.

The config names the architecture and its options (enough to rebuild the module with
`create_model`), the pipeline stage that produced the weights, and provenance (source checkpoint
hash, command, toolkit version). Anything a later stage needs to know travels in `extra`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from datprl_edge.core.errors import CheckpointError, InputNotFoundError
from datprl_edge.core.version import __version__
from datprl_edge.io.atomic import atomic_path

FORMAT = "datprl-edge-checkpoint/1"
METADATA_KEY = "datprl_edge"
STAGES = ("teacher", "student", "distilled", "folded", "qat", "released")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    arch: str
    options: dict
    stage: str = "student"
    provenance: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.arch, str) or not self.arch:
            raise CheckpointError("checkpoint config needs an architecture name in 'arch'")
        if not isinstance(self.options, dict):
            raise CheckpointError("checkpoint config 'options' must be a dict of architecture options")
        if self.stage not in STAGES:
            raise CheckpointError(f"unknown checkpoint stage {self.stage!r}; use one of {', '.join(STAGES)}")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint config is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint config must be a JSON object, got a {type(data).__name__}")
        if data.pop("format", None) != FORMAT:
            raise CheckpointError(f"checkpoint config is not {FORMAT}")
        missing = [k for k in ("arch", "options") if k not in data]
        if missing:
            raise CheckpointError(f"checkpoint config lacks {' and '.join(repr(k) for k in missing)}")
        for key in ("provenance", "extra"):
            if not isinstance(data.get(key, {}), dict):
                raise CheckpointError(f"checkpoint config {key!r} must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def save_checkpoint(path, state_dict, config: CheckpointConfig) -> Path:
    """Write `state_dict` and `config` to `path` atomically; returns the path."""
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage; copies keep the caller's tensors intact.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    prov = {"toolkit_version": __version__, **config.provenance}
    config = dataclasses.replace(config, provenance=prov)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: config.to_json()})
    return path


def read_checkpoint(path) -> tuple[dict, CheckpointConfig]:
    """Read a toolkit checkpoint; returns (state_dict, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(
            f"{path} has no embedded datprl-edge config; for a plain state dict pass --network CFG"
        )
    return state, CheckpointConfig.from_json(meta[METADATA_KEY])


def read_checkpoint_config(path) -> CheckpointConfig:
    """Only the embedded config (cheap: no tensors are read)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path} has no embedded datprl-edge config")
    return CheckpointConfig.from_json(meta[METADATA_KEY])


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
