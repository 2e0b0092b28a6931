"""The context of an edge student: every image-wide quantity in its forward pass, as one vector.

An edge student looks at the whole input in a few places only, all global means: the two query
mappers (whose means decide the prompt routing), each block's channel attention, and the routing
weights they lead to. `context_layout(model)` names those entries in a fixed order; a forward pass
with `context` and `context_mix` tensors (B, K) uses, entry by entry,

    used = own + context_mix * (context - own)

where `own` is what this input alone gives. `context_mix` 0 is the model's own behaviour; 1 replaces
the entry with `context`. The pass also returns `own` (B, K): the statistics of this input.

So a tiled image can be restored with the statistics of the whole image (run the tiles once for
their statistics, average, run them again with mix 1: no tile sees only itself), and the routing
entries force or blend the domain and task prompts (mix = blend) in torch and in every exported
artifact alike, without re-folding.
"""

from __future__ import annotations

import torch

from datprl_edge.core.context import (
    DOMAIN_QUERY,
    DOMAIN_WEIGHTS,
    ROUTING_ENTRIES,
    TASK_QUERY,
    TASK_WEIGHTS,
    layout_size,
    layout_slices,
)

__all__ = ["Context", "context_layout", "context_size", "layout_slices", "supports_context",
           "ROUTING_ENTRIES", "DOMAIN_WEIGHTS", "TASK_WEIGHTS", "DOMAIN_QUERY", "TASK_QUERY"]


def supports_context(model) -> bool:
    return callable(getattr(model, "context_layout", None))


def context_layout(model) -> list[tuple[str, int]]:
    """[(entry name, size), ...] in vector order; [] for models without a context."""
    return list(model.context_layout()) if supports_context(model) else []


def context_size(model) -> int:
    return layout_size(context_layout(model))


class Context:
    """One forward pass's view of the context vector (built inside `forward`, never stored)."""

    def __init__(self, layout, given: torch.Tensor, mix: torch.Tensor):
        self.layout = list(layout)
        self.slices = layout_slices(self.layout)
        self.given, self.mix = given, mix
        self.own: dict[str, torch.Tensor] = {}

    def pool(self, name: str, own: torch.Tensor) -> torch.Tensor:
        """Record this input's value of entry `name` (B, n) and return the value to use."""
        self.own[name] = own
        s = self.slices[name]
        given, mix = self.given[:, s].to(own.dtype), self.mix[:, s].to(own.dtype)
        return own + mix * (given - own)

    def output(self) -> torch.Tensor:
        return torch.cat([self.own[name] for name, _ in self.layout], dim=1)


def check_context(model, x: torch.Tensor, context, context_mix) -> Context | None:
    """A `Context` for a forward pass, or None when neither tensor is given."""
    from datprl_edge.core.errors import ConfigError

    if context is None and context_mix is None:
        return None
    if context is None or context_mix is None:
        raise ConfigError("context and context_mix go together: give both (B, K) tensors or neither")
    layout = context_layout(model)
    k = sum(n for _, n in layout)
    for name, t in (("context", context), ("context_mix", context_mix)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != k:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ConfigError(f"{name} must be a (B, {k}) tensor for this model, got {shape}")
    return Context(layout, context, context_mix)
