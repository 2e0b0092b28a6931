"""Shared by the teacher architectures: checking the YAML `network_g` options, and the zero
padding of the input to the size unit with the crop back.

Every option problem ends in a `ConfigError` that names the option and says what would be valid.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F

from datprl_edge.core.errors import ChannelCountError, ConfigError, UnknownChoiceError
from datprl_edge.models.prompt_modules import (
    BLOCK_FUSION_METHODS,
    PROMPT_FUSION_HEADS,
    PROMPT_FUSION_METHODS,
    PromptConfig,
)


def resolve_options(arch: str, given: dict, defaults: dict) -> dict:
    """Defaults overlaid with `given`; an option the architecture does not know raises ConfigError."""
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(defaults)}"
            raise ConfigError(f"{arch} has no option {key!r}; {hint}")
    return {**defaults, **given}


def check_int(arch: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{arch} option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_int_list(arch: str, name: str, value, length: int | None = None, minimum: int = 0) -> list[int]:
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) or not value:
        size = f"{length}" if length is not None else "one or more"
        raise ConfigError(f"{arch} option {name} must be a list of {size} integers, got {value!r}")
    return [check_int(arch, name, v, minimum) for v in value]


def check_bool(arch: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{arch} option {name} must be true or false, got {value!r}")
    return value


def check_positive_float(arch: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{arch} option {name} must be a positive number, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise UnknownChoiceError(name, str(value), choices)
    return value


def prompt_config(arch: str, opts: dict) -> PromptConfig | None:
    """The checked prompt options, or None when `use_prompt` is false (plain backbone)."""
    if not check_bool(arch, "use_prompt", opts["use_prompt"]):
        return None
    for kind in ("domain", "degradation"):
        size = check_int(arch, f"{kind}_pool_size", opts[f"{kind}_pool_size"])
        top_k = check_int(arch, f"{kind}_top_k", opts[f"{kind}_top_k"])
        if top_k > size:
            raise ConfigError(f"{arch}: {kind}_top_k ({top_k}) exceeds {kind}_pool_size ({size}); "
                              f"lower {kind}_top_k or enlarge the pool")
        check_int(arch, f"{kind}_prompt_dim", opts[f"{kind}_prompt_dim"])
    check_int(arch, "value_num_tokens", opts["value_num_tokens"])
    pf = check_choice("prompt_fusion_method", opts["prompt_fusion_method"], PROMPT_FUSION_METHODS)
    check_choice("fusion_method", opts["fusion_method"], BLOCK_FUSION_METHODS)
    dd, gd = opts["domain_prompt_dim"], opts["degradation_prompt_dim"]
    if pf == "cross_attention" and (dd != gd or dd % PROMPT_FUSION_HEADS):
        raise ConfigError(
            f"{arch}: prompt_fusion_method cross_attention needs domain_prompt_dim == "
            f"degradation_prompt_dim, divisible by {PROMPT_FUSION_HEADS} (got {dd} and {gd}); "
            "change the dims or use concat")
    return PromptConfig(
        domain_pool_size=opts["domain_pool_size"], degradation_pool_size=opts["degradation_pool_size"],
        domain_prompt_dim=dd, degradation_prompt_dim=gd, domain_top_k=opts["domain_top_k"],
        degradation_top_k=opts["degradation_top_k"], value_num_tokens=opts["value_num_tokens"],
        prompt_fusion_method=pf, fusion_method=opts["fusion_method"])


def pad_to_multiple(x: torch.Tensor, multiple: int, channels: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) batch on the right and bottom to a multiple of `multiple`."""
    if x.dim() != 4:
        raise ConfigError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ChannelCountError(f"this model takes {channels}-channel images, got {x.shape[1]}")
    ph, pw = (-x.shape[2]) % multiple, (-x.shape[3]) % multiple
    # Aligned plain-int sizes skip the op, so exports at aligned sizes carry no pad; symbolic
    # sizes (dynamic-shape export) always pad.
    if isinstance(ph, int) and isinstance(pw, int) and ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


def crop_to(x: torch.Tensor, height, width) -> torch.Tensor:
    if isinstance(height, int) and isinstance(width, int) and x.shape[2] == height and x.shape[3] == width:
        return x
    return x[:, :, :height, :width]
