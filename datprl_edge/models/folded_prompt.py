"""Prompt-path modules after an exact algebraic fold (shared by the folded student and teachers).

Each `*.from_*` constructor derives the folded parameters from the original module in float64
and checks nothing else: the fold stage verifies the whole model's output afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datprl_edge.models.prompt_pool import SELECTION_NOISE, TEMPERATURE_RANGE, PromptPool, Routing
from datprl_edge.models.student_blocks import FiLMTerms, GatedFiLM

PROMPT_LN_EPS = 1e-5  # every nn.LayerNorm of the prompt path


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a float64 result into a float32 parameter/buffer of the same shape."""
    with torch.no_grad():
        param.copy_(value.reshape(param.shape).to(param.dtype))


class FoldedPromptPool(PromptPool):
    """A `PromptPool` with the same routing and composition and fewer operations at run time.

    `prompt_keys` are stored L2-normalised and divided by the clamped temperature, so a query
    needs one normalisation and one product. `prompt_values` are (N, P): each value already passed
    through `value_aggregation`'s Linear, which is exact because the composition weights sum to 1
    (softmax over the top-k, or normalised override weights); only its LayerNorm and GELU remain.
    """

    def __init__(self, pool_size: int, prompt_dim: int, num_tokens: int, top_k: int):
        nn.Module.__init__(self)  # the parameters differ from PromptPool's
        self.pool_size, self.prompt_dim = pool_size, prompt_dim
        self.num_tokens, self.top_k = num_tokens, top_k
        self.prompt_keys = nn.Parameter(torch.zeros(pool_size, prompt_dim))
        self.prompt_values = nn.Parameter(torch.zeros(pool_size, prompt_dim))
        self.value_norm = nn.LayerNorm(prompt_dim)

    @classmethod
    def from_pool(cls, pool: PromptPool) -> FoldedPromptPool:
        out = cls(pool.pool_size, pool.prompt_dim, pool.num_tokens, pool.top_k)
        temp = _d(pool.temperature).clamp(*TEMPERATURE_RANGE)
        assign(out.prompt_keys, F.normalize(_d(pool.prompt_keys), dim=-1) / temp)
        lin, norm = pool.value_aggregation[0], pool.value_aggregation[1]
        assign(out.prompt_values, _d(pool.prompt_values).flatten(1) @ _d(lin.weight).t() + _d(lin.bias))
        out.value_norm.load_state_dict(norm.state_dict())
        return out

    def route(self, query: torch.Tensor) -> Routing:
        logits = F.normalize(query, dim=-1) @ self.prompt_keys.t()
        choice = logits + SELECTION_NOISE * torch.randn_like(logits) if self.training else logits
        idx = choice.topk(self.top_k, dim=-1).indices
        return Routing(logits, idx, torch.softmax(logits.gather(1, idx), dim=-1))

    def compose(self, routing: Routing) -> torch.Tensor:
        mixed = (routing.weights[:, :, None] * self.prompt_values[routing.indices]).sum(1)
        return F.gelu(self.value_norm(mixed))

    def compose_dense(self, weights: torch.Tensor) -> torch.Tensor:
        """Weights must sum to 1 per row (the value Linear's bias is folded into the values)."""
        return F.gelu(self.value_norm(weights @ self.prompt_values))


class FoldedFiLM(GatedFiLM):
    """Gated FiLM whose gates are folded into the prompt Linear: it emits (mul, add) directly.

    mul = fw * (1 + pw * scale) and add = pw * shift are affine in (scale, shift), hence in the
    prompt. The raw scale/shift are no longer computed (`terms` gives None for them).
    """

    def __init__(self, prompt_dim: int, channels: int):
        nn.Module.__init__(self)  # no feature/prompt gate parameters left
        self.prompt_film = nn.Linear(prompt_dim, 2 * channels)

    @classmethod
    def from_film(cls, film: GatedFiLM) -> FoldedFiLM:
        lin = film.prompt_film
        c = lin.out_features // 2
        out = cls(lin.in_features, c)
        gate = torch.softmax(torch.cat([_d(film.feature_weight), _d(film.prompt_weight)]), dim=0)
        fw, pw = gate[0], gate[1]
        w, b = _d(lin.weight), _d(lin.bias)
        assign(out.prompt_film.weight, torch.cat([fw * pw * w[:c], pw * w[c:]]))
        assign(out.prompt_film.bias, torch.cat([fw * pw * b[:c] + fw, pw * b[c:]]))
        return out

    def terms(self, prompt: torch.Tensor) -> FiLMTerms:
        mul, add = self.prompt_film(prompt).chunk(2, dim=1)
        return FiLMTerms(None, None, mul, add)


class PromptBias(nn.Module):
    """Per-image channel vector Linear(prompt) (B, C); `normalize` first applies a LayerNorm
    without affine (the affine of the original LayerNorm is folded into the Linear)."""

    def __init__(self, prompt_dim: int, channels: int, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.proj = nn.Linear(prompt_dim, channels)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            prompt = F.layer_norm(prompt, prompt.shape[-1:], eps=PROMPT_LN_EPS)
        return self.proj(prompt)


class PromptAffine(nn.Module):
    """Per-image (mul, add), each (B, C): Linear -> ReLU -> Linear(2C) with gates folded in."""

    def __init__(self, prompt_dim: int, hidden: int, channels: int):
        super().__init__()
        self.prompt_mlp = nn.Sequential(nn.Linear(prompt_dim, hidden), nn.ReLU(),
                                        nn.Linear(hidden, 2 * channels))

    def forward(self, prompt: torch.Tensor):
        return self.prompt_mlp(prompt).chunk(2, dim=1)


def conv1x1_matrix(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (O, I), bias (O,)) of a 1x1 conv in float64 (zero bias when it has none)."""
    w = _d(conv.weight).flatten(1)
    b = _d(conv.bias) if conv.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def set_conv1x1(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    assign(conv.weight, weight)
    if conv.bias is None:
        if bias.abs().max() > 0:
            raise ValueError("folded conv needs a bias but was built without one")
        return
    assign(conv.bias, bias)


def set_linear(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    assign(lin.weight, weight)
    assign(lin.bias, bias)
