"""Per-pixel LayerNorm over the channels of a (B, C, H, W) map, as the released teachers use it.

`RestormerLayerNorm` keeps its parameters under `body` (`normN.body.weight/bias`) and comes in the
two released variants; `LayerNorm2d` is NAFNet's (`normN.weight/bias`, eps 1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERNORM_TYPES = ("WithBias", "BiasFree")


def _channels_last_layer_norm(x, weight, bias, eps):
    # LayerNorm over the last axis of an NHWC view: one fused op, and one ONNX LayerNormalization.
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)


class _WithBiasBody(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class _BiasFreeBody(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))


class RestormerLayerNorm(nn.Module):
    """`WithBias`: (x - mean) / sqrt(var + eps) * w + b. `BiasFree`: x / sqrt(var + eps) * w, where
    the (biased) variance is still taken around the mean. eps 1e-5."""

    eps = 1e-5

    def __init__(self, channels: int, layernorm_type: str = "WithBias"):
        super().__init__()
        self.with_bias = layernorm_type == "WithBias"
        self.body = _WithBiasBody(channels) if self.with_bias else _BiasFreeBody(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_bias:
            return _channels_last_layer_norm(x, self.body.weight, self.body.bias, self.eps)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(var + self.eps) * self.body.weight[:, None, None]


class LayerNorm2d(nn.Module):
    """NAFNet's channel LayerNorm with affine weight and bias, eps 1e-6."""

    eps = 1e-6

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_last_layer_norm(x, self.weight, self.bias, self.eps)
