"""The Prompt Composition Mechanism (PCM): query a prompt pool, retrieve top-k, compose.

Shared by the full DATPRL-IR models and the edge students. Parameter names follow the released
checkpoints (`prompt_keys`, `prompt_values`, `temperature`, `value_aggregation`).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE_RANGE = (0.1, 2.0)
SELECTION_NOISE = 0.1
_RECORDERS: list = []


@contextlib.contextmanager
def recorded_routes():
    """Collects the `Routing` of every `route` call run eagerly inside the block (a traced program's
    routing is not seen); its logits keep their graph, so a loss can use them."""
    record: list = []
    _RECORDERS.append(record)
    try:
        yield record
    finally:
        _RECORDERS.remove(record)


class Routing(NamedTuple):
    """What a pool did for one batch: similarities, chosen indices and their weights."""

    logits: torch.Tensor  # (B, N) temperature-scaled cosine similarities
    indices: torch.Tensor  # (B, K)
    weights: torch.Tensor  # (B, K) softmax over the selected logits

    def dense(self, num: int) -> torch.Tensor:
        """(B, N) weights with zeros outside the top-k (what an override looks like)."""
        out = self.weights.new_zeros(self.weights.shape[0], num)
        return out.scatter(1, self.indices, self.weights)


class PromptPool(nn.Module):
    def __init__(self, pool_size: int, prompt_dim: int, num_tokens: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in 1..pool_size ({pool_size}), got {top_k}")
        self.pool_size, self.prompt_dim = pool_size, prompt_dim
        self.num_tokens, self.top_k = num_tokens, top_k
        self.prompt_keys = nn.Parameter(torch.randn(pool_size, prompt_dim) * 0.02)
        self.prompt_values = nn.Parameter(torch.randn(pool_size, num_tokens, prompt_dim) * 0.02)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.value_aggregation = nn.Sequential(
            nn.Linear(num_tokens * prompt_dim, prompt_dim), nn.LayerNorm(prompt_dim), nn.GELU()
        )

    def route(self, query: torch.Tensor) -> Routing:
        q = F.normalize(query, dim=-1)
        k = F.normalize(self.prompt_keys, dim=-1)
        logits = q @ k.t() / self.temperature.clamp(*TEMPERATURE_RANGE)
        choice = logits
        if self.training:
            # Noise only decides the choice, so gradients still flow through the clean logits.
            choice = logits + SELECTION_NOISE * torch.randn_like(logits)
        idx = choice.topk(self.top_k, dim=-1).indices
        weights = torch.softmax(logits.gather(1, idx), dim=-1)
        routing = Routing(logits, idx, weights)
        for record in _RECORDERS:
            record.append(routing)
        return routing

    def compose(self, routing: Routing) -> torch.Tensor:
        vals = self.prompt_values[routing.indices]  # (B, K, T, P)
        mixed = (routing.weights[:, :, None, None] * vals).sum(1)
        return self.value_aggregation(mixed.flatten(1))

    def compose_dense(self, weights: torch.Tensor) -> torch.Tensor:
        """Compose from explicit (B, N) weights over the whole pool (user override or folding)."""
        mixed = torch.einsum("bn,ntp->btp", weights, self.prompt_values)
        return self.value_aggregation(mixed.flatten(1))

    def forward(self, query: torch.Tensor, return_routing: bool = False):
        routing = self.route(query)
        prompt = self.compose(routing)
        return (prompt, routing) if return_routing else prompt
