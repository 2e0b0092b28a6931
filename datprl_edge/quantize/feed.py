"""How the QAT code calls a float or quantized model on images, with or without a context input.

A model with a context (`models.context`) is prepared with three example inputs (image, context,
context_mix), so its quantized program always takes the context: every call on images alone goes
through `run_image`, which appends zero context and mix (mix 0: the model's own statistics, the
same output as the image alone) and returns the restored image only. A prepared module records
its context width (`mark`); PT2E programs also carry it in their graph's inputs, which survives
the deep copies that drop module attributes.

Calling convention: a `torch.fx.GraphModule` (PT2E program) takes (image, context, context_mix)
positionally; an eager module (the student, an NNCF or Core ML copy) takes `context=`,
`context_mix=` keywords (its second positional argument is a prompt override); `ContextCall`
gives an eager module the positional signature for the exporters.
"""

from __future__ import annotations

import torch
from torch import nn

CONTEXT_ATTR = "datprl_context_size"
CONTEXT_INPUTS = ("context", "context_mix")


def example_with_context(image: torch.Tensor, size: int) -> tuple:
    """(image,) or, for a context of `size` > 0, (image, zeros (B, size), zeros (B, size))."""
    if not size:
        return (image,)
    zeros = image.new_zeros(image.shape[0], int(size))
    return image, zeros, zeros.clone()


def example_context_size(example_inputs) -> int:
    return int(example_inputs[1].shape[1]) if len(example_inputs) == 3 else 0


def mark(module, example_inputs):
    """Record on a prepared module the context width its example inputs had; returns the module."""
    module.__dict__[CONTEXT_ATTR] = example_context_size(example_inputs)
    return module


def context_width(module) -> int:
    """K when `module` was prepared to take a (B, K) context (0: image only)."""
    k = module.__dict__.get(CONTEXT_ATTR)
    if k is not None:
        return int(k)
    if isinstance(module, ContextCall):
        return context_width(module.model)
    if isinstance(module, torch.fx.GraphModule):
        inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
        val = inputs[1].meta.get("val") if len(inputs) == 3 else None
        if tuple(n.name for n in inputs[1:]) == CONTEXT_INPUTS and val is not None:
            return int(val.shape[1])
    return 0


def call_with_context(module, image, context, context_mix):
    """(restored, own context) of a context-taking module, in its calling convention."""
    if isinstance(module, (torch.fx.GraphModule, ContextCall)):
        return module(image, context, context_mix)
    return module(image, context=context, context_mix=context_mix)


def run_image(module, x: torch.Tensor) -> torch.Tensor:
    """The restored batch of `module` on images `x` alone (zero context and mix where it takes one)."""
    k = context_width(module)
    if not k:
        return module(x)
    zeros = x.new_zeros(x.shape[0], k)
    return call_with_context(module, x, zeros, zeros)[0]


class ContextCall(nn.Module):
    """`module(image, context, context_mix)` -> (restored, context_out) for an eager module that takes
    the context as keywords (what the exporters trace)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image, context, context_mix):
        return self.model(image, context=context, context_mix=context_mix)
