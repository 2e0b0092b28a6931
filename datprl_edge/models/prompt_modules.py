"""The prompt side of the DATPRL-IR teachers: query mappers, the two pools and their fusion, and
the adaptive gated fusion of the prompt into a block.

The released checkpoints keep these parameters directly on the model and on each prompted block
(`domain_mapper.mapper.1.weight`, `decoder_level1.0.cross_attn_q.weight`, ...), so they are mixins
that register attributes on their host module rather than submodules of their own.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from datprl_edge.models.prompt_pool import PromptPool

PROMPT_FUSION_METHODS = ("cross_attention", "concat")
BLOCK_FUSION_METHODS = ("cross_attention", "concat", "adaptive_modulation")
PROMPT_FUSION_HEADS = 8
PROMPT_FFN_DROPOUT = 0.1  # inactive in eval; the rate is not part of the checkpoints


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    domain_pool_size: int
    degradation_pool_size: int
    domain_prompt_dim: int
    degradation_prompt_dim: int
    domain_top_k: int
    degradation_top_k: int
    value_num_tokens: int
    prompt_fusion_method: str
    fusion_method: str

    @property
    def block_prompt_dim(self) -> int:
        """Width of the prompt every block receives (2P when the two prompts are concatenated)."""
        if self.prompt_fusion_method == "concat":
            return self.domain_prompt_dim + self.degradation_prompt_dim
        return self.domain_prompt_dim


class QueryMapper(nn.Module):
    """Feature map (B, C, H, W) -> pool query (B, P): pool to a x a, conv C->C/2, pool to b x b,
    conv C/2->C/4, global pool, Linear C/4->P (ReLU after each conv)."""

    def __init__(self, channels: int, prompt_dim: int, pool_sizes: tuple[int, int]):
        super().__init__()
        a, b = pool_sizes
        half, quarter = channels // 2, channels // 4
        self.mapper = nn.Sequential(
            nn.AdaptiveAvgPool2d(a), nn.Conv2d(channels, half, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(b), nn.Conv2d(half, quarter, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(quarter, prompt_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapper(x)


DOMAIN_MAPPER_POOLS = (8, 4)
DEGRADATION_MAPPER_POOLS = (4, 2)


class DualPromptMixin:
    """Registers `domain_prompt_pool`, `degradation_prompt_pool`, both mappers and (for
    cross_attention prompt fusion) `prompt_cross_attention`, `prompt_fusion_norm`, `prompt_fusion_ffn`."""

    def _build_prompt_modules(self, cfg: PromptConfig, shallow_channels: int, deep_channels: int) -> None:
        self.prompt_config = cfg
        self.domain_prompt_pool = PromptPool(cfg.domain_pool_size, cfg.domain_prompt_dim,
                                             cfg.value_num_tokens, cfg.domain_top_k)
        self.degradation_prompt_pool = PromptPool(cfg.degradation_pool_size, cfg.degradation_prompt_dim,
                                                  cfg.value_num_tokens, cfg.degradation_top_k)
        self.domain_mapper = QueryMapper(shallow_channels, cfg.domain_prompt_dim, DOMAIN_MAPPER_POOLS)
        self.degradation_mapper = QueryMapper(deep_channels, cfg.degradation_prompt_dim,
                                              DEGRADATION_MAPPER_POOLS)
        if cfg.prompt_fusion_method == "cross_attention":
            p = cfg.domain_prompt_dim
            self.prompt_cross_attention = nn.MultiheadAttention(p, PROMPT_FUSION_HEADS, batch_first=True)
            self.prompt_fusion_norm = nn.LayerNorm(p)
            self.prompt_fusion_ffn = nn.Sequential(
                nn.Linear(p, 2 * p), nn.GELU(), nn.Dropout(PROMPT_FFN_DROPOUT), nn.Linear(2 * p, p))

    def _prompts(self, shallow: torch.Tensor, deep: torch.Tensor):
        """(fused prompt (B, P_block), per-pool prompts, per-pool Routing) for one batch."""
        domain, d_route = self.domain_prompt_pool(self.domain_mapper(shallow), return_routing=True)
        degradation, g_route = self.degradation_prompt_pool(self.degradation_mapper(deep),
                                                            return_routing=True)
        prompts = {"domain": domain, "degradation": degradation}
        return self.fuse_prompts(domain, degradation), prompts, {"domain": d_route, "degradation": g_route}

    def fuse_prompts(self, domain: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        if self.prompt_config.prompt_fusion_method == "concat":
            return torch.cat([domain, degradation], dim=1)
        q, kv = domain.unsqueeze(1), degradation.unsqueeze(1)
        att = self.prompt_cross_attention(q, kv, kv, need_weights=False)[0].squeeze(1)
        out = self.prompt_fusion_norm(att + domain)
        return out + self.prompt_fusion_ffn(out)


class GatedFusionMixin:
    """Adaptive gated fusion of the block prompt into a feature map (B, C, H, W).

    (fw, pw) = softmax(feature_weight, prompt_weight). The parameters of the chosen method are
    registered on the host block under their released names.
    """

    fusion_method: str | None = None

    def _build_gated_fusion(self, method: str, channels: int, prompt_dim: int) -> None:
        self.fusion_method = method
        self.feature_weight = nn.Parameter(torch.ones(1))
        self.prompt_weight = nn.Parameter(torch.ones(1))
        if method == "cross_attention":
            self.cross_attn_q = nn.Linear(channels, channels)
            self.cross_attn_k = nn.Linear(prompt_dim, channels)
            self.cross_attn_v = nn.Linear(prompt_dim, channels)
            self.cross_attn_out = nn.Linear(channels, channels)
            self.prompt_norm = nn.LayerNorm(prompt_dim)
        elif method == "concat":
            self.prompt_projection = nn.Linear(prompt_dim, channels)
            self.prompt_fusion = nn.Conv2d(2 * channels, channels, 1)
        elif method == "adaptive_modulation":
            self.prompt_mlp = nn.Sequential(
                nn.Linear(prompt_dim, 2 * channels), nn.ReLU(), nn.Linear(2 * channels, 2 * channels))
        else:  # the option checks reject this first
            raise ValueError(f"unknown fusion method {method!r}")

    def fusion_gates(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(torch.cat([self.feature_weight, self.prompt_weight]), dim=0)
        return w[0], w[1]

    def fuse_prompt(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        fw, pw = self.fusion_gates()
        if self.fusion_method == "cross_attention":
            return self._fuse_cross_attention(x, prompt, fw, pw)
        if self.fusion_method == "concat":
            b, c, h, w = x.shape
            proj = (self.prompt_projection(prompt) * pw)[:, :, None, None].expand(b, c, h, w)
            return self.prompt_fusion(torch.cat([x * fw, proj], dim=1))
        scale, shift = self.prompt_mlp(prompt)[:, :, None, None].chunk(2, dim=1)
        return x * fw * (1 + scale * pw) + shift * pw

    def cross_attention_values(self, prompt: torch.Tensor, pw: torch.Tensor):
        """Key and value (B, 1, C) of the single prompt token. The attended output of every pixel
        is cross_attn_out(value): the softmax runs over this one key, so the query never matters."""
        p = self.prompt_norm(prompt).unsqueeze(1)
        return self.cross_attn_k(p) * pw, self.cross_attn_v(p) * pw

    def _fuse_cross_attention(self, x, prompt, fw, pw):
        # The released computation, query projection included (a fold step may drop it).
        b, c, h, w = x.shape
        k, v = self.cross_attention_values(prompt, pw)
        q = self.cross_attn_q(x.flatten(2).transpose(1, 2)) * fw  # (B, HW, C)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)  # (B, HW, 1)
        out = self.cross_attn_out(attn @ v)  # (B, HW, C)
        return x * fw + out.transpose(1, 2).reshape(b, c, h, w)
