"""Building blocks of the edge student: gated FiLM conditioning, a norm-free gated conv block,
query mappers, and the user override of the prompt routing.

Every pixel-path op is a plain/depthwise conv (with its output clamp, `models.bounds`), an
elementwise product, a global mean or a pixel (un)shuffle: ops that ONNX (opset 17+), OpenVINO,
Core ML and INT8 quantizers all handle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.bounds import current_bounds, set_act_bounds


class FiLMTerms(NamedTuple):
    """Conditioning of one prompted block for a batch: the block computes x * mul + add.

    `scale`/`shift` are the raw outputs of the prompt Linear; `mul`/`add` already include the
    adaptive gate: mul = fw * (1 + pw * scale), add = pw * shift. All (B, C).
    """

    scale: torch.Tensor
    shift: torch.Tensor
    mul: torch.Tensor
    add: torch.Tensor


class GatedFiLM(nn.Module):
    """Adaptive gated fusion of a prompt into features as a per-channel affine map.

    (fw, pw) = softmax(feature_weight, prompt_weight); (scale, shift) = Linear(prompt);
    x -> x * fw * (1 + pw * scale) + pw * shift. For a fixed prompt this is a per-channel affine
    map, so it folds exactly into the 1x1 conv that follows it.
    """

    def __init__(self, prompt_dim: int, channels: int):
        super().__init__()
        self.feature_weight = nn.Parameter(torch.full((1,), 0.5))
        self.prompt_weight = nn.Parameter(torch.full((1,), 0.5))
        self.prompt_film = nn.Linear(prompt_dim, 2 * channels)

    def terms(self, prompt: torch.Tensor) -> FiLMTerms:
        scale, shift = self.prompt_film(prompt).chunk(2, dim=1)
        gate = torch.softmax(torch.cat([self.feature_weight, self.prompt_weight]), dim=0)
        fw, pw = gate[0], gate[1]
        return FiLMTerms(scale, shift, fw * (1 + pw * scale), pw * shift)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        t = self.terms(prompt)
        return x * t.mul[:, :, None, None] + t.add[:, :, None, None]


class SimpleGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * b


class EdgeBlock(nn.Module):
    """A NAFNet-style gated block without LayerNorm.

    Mixer: [FiLM] -> conv1 1x1 (C->eC) -> depthwise 3x3 -> SimpleGate -> channel attention
    (global mean + 1x1) -> conv3 1x1; y = x + beta * mixer. FFN: conv4 1x1 -> SimpleGate -> conv5;
    out = y + gamma * ffn. When `prompt_dim` is set the FiLM sits right before conv1, so a
    fixed prompt folds into conv1's weight and bias. The residual uses x, not the modulated x.
    """

    def __init__(self, channels: int, prompt_dim: int | None = None, dw_expand: int = 2,
                 ffn_expand: int = 2, use_sca: bool = True, layer_scale_init: float = 0.1):
        super().__init__()
        c, dw, ffn = channels, channels * dw_expand, channels * ffn_expand
        self.film = GatedFiLM(prompt_dim, c) if prompt_dim else None
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1) if use_sca else None
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.beta = nn.Parameter(torch.full((1, c, 1, 1), float(layer_scale_init)))
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), float(layer_scale_init)))
        self.context_key = ""  # this block's entry in the model's context (set by the model)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None, ctx=None) -> torch.Tensor:
        h = x if self.film is None else self.film(x, prompt)
        if isinstance(self.conv1, Halves):
            h = self.conv2.a(self.conv1.a(h)) * self.conv2.b(self.conv1.b(h))
        else:
            h = self.gate(self.conv2(self.conv1(h)))
        if self.sca is not None:
            pooled = h.mean(dim=(2, 3), keepdim=True)
            if ctx is not None:
                pooled = ctx.pool(self.context_key, pooled.flatten(1))[:, :, None, None]
            h = h * self.sca(pooled)
        y = x + _scaled(self.beta, self.conv3(h))
        f = self.conv4.a(y) * self.conv4.b(y) if isinstance(self.conv4, Halves) else self.gate(self.conv4(y))
        return y + _scaled(self.gamma, self.conv5(f))


class DenseBlock(nn.Module):
    """A block of dense convs only, for INT8 kernels: [FiLM] -> conv1 1x1 (C->eC) -> ReLU ->
    conv2 3x3 (eC->C); out = x + conv2. No products, means or depthwise convs, so the int8 kernels
    carry most of the time: OpenVINO fuses the ReLU and the next quantize into conv1 (which writes
    u8); the residual sum and the quantize after it run as one elementwise node.
    The FiLM sits right before the 1x1 conv1, as in `EdgeBlock`, so a fixed prompt folds into it.
    """

    sca = None  # no channel attention: nothing in this block needs the image-wide context

    def __init__(self, channels: int, prompt_dim: int | None = None, dw_expand: int = 2, **_gated_options):
        super().__init__()
        c, hidden = channels, channels * dw_expand
        self.film = GatedFiLM(prompt_dim, c) if prompt_dim else None
        self.conv1 = nn.Conv2d(c, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, c, 3, padding=1)
        self.context_key = ""

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None, ctx=None) -> torch.Tensor:
        h = x if self.film is None else self.film(x, prompt)
        return x + self.conv2(torch.relu(self.conv1(h)))


BLOCKS = {"gated": EdgeBlock, "dense": DenseBlock}  # the student option `block`
BLOCK_TYPES = tuple(BLOCKS.values())


def _scaled(scale, x):
    return x if scale is None else scale * x


class Halves(nn.Module):
    """A conv cut along its output channels into the half SimpleGate multiplies (`a`) and the half
    it multiplies by (`b`)."""

    def __init__(self, a: nn.Conv2d, b: nn.Conv2d):
        super().__init__()
        self.a, self.b = a, b


def _halve(conv: nn.Conv2d) -> Halves:
    n = conv.out_channels // 2
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    parts = []
    for sl in (slice(0, n), slice(n, 2 * n)):
        part = nn.Conv2d(n if depthwise else conv.in_channels, n, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, groups=n if depthwise else conv.groups,
                         bias=conv.bias is not None)
        with torch.no_grad():
            part.weight.copy_(conv.weight[sl])
            if conv.bias is not None:
                part.bias.copy_(conv.bias[sl])
        parts.append(part)
    return Halves(*parts)


def split_gates(model) -> int:
    """Cut every EdgeBlock's gated convs (conv1 + depthwise conv2, conv4) into the two halves that
    SimpleGate multiplies, in place; returns how many blocks changed. Exact, activation bounds
    included (each half keeps its conv's clamp): the block then has no channel split, which INT8
    runtimes run in float between a dequantize and a quantize, and OpenVINO's CPU plugin runs as a
    reference (unoptimised) Split node even in FP32."""
    bounds = current_bounds(model) or {}
    set_act_bounds(model, None)  # the halves are new convs; their bounds are set below
    split = set()
    for path, block in model.named_modules():
        if _gated_unsplit(block):
            block.conv1, block.conv2, block.conv4 = (_halve(block.conv1), _halve(block.conv2),
                                                     _halve(block.conv4))
            split |= {f"{path}.{name}" if path else name for name in ("conv1", "conv2", "conv4")}
    kept = {}
    for name, bound in bounds.items():
        kept.update({f"{name}.a": bound, f"{name}.b": bound} if name in split else {name: bound})
    set_act_bounds(model, kept or None)
    return len(split) // 3


def fold_layer_scales(model) -> int:
    """Fold every EdgeBlock's per-channel layer scales (beta, gamma) into the 1x1 conv before them,
    in place; returns how many blocks changed. Exact; the folded blocks skip the two multiplies,
    which INT8 runtimes would otherwise run as broadcast elementwise ops."""
    set_act_bounds(model, None)  # a folded scale changes the conv's output range
    changed = 0
    with torch.no_grad():
        for block in model.modules():
            if not isinstance(block, EdgeBlock) or block.beta is None:
                continue
            for scale_name, conv in (("beta", block.conv3), ("gamma", block.conv5)):
                scale = getattr(block, scale_name).detach().flatten()
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.mul_(scale)
                setattr(block, scale_name, None)
            changed += 1
    return changed


def _gated_unsplit(module) -> bool:
    return isinstance(module, EdgeBlock) and not isinstance(module.conv1, Halves)


def split_copy(model):
    """An eval-mode copy with each SimpleGate's conv cut in halves (`split_gates`: exact, bounds kept),
    what float artifacts are exported from; the model itself when it has no gated block to cut."""
    import copy

    if not any(_gated_unsplit(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    split_gates(model)
    return model


def rewritten_copy(model):
    """An eval-mode copy with the exact rewrites INT8 schemes quantize: layer scales folded into their
    convs (`fold_layer_scales`), then each SimpleGate's conv cut in halves (`split_gates`)."""
    import copy

    model = copy.deepcopy(model).eval()
    fold_layer_scales(model)
    split_gates(model)
    return model


class QueryMapper(nn.Module):
    """Feature map -> prompt-pool query: conv + ReLU, global mean, Linear.

    Global average pooling only (no adaptive pooling to other sizes), so any input size works.
    """

    def __init__(self, in_ch: int, hidden: int, prompt_dim: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, hidden, kernel, stride=stride, padding=kernel // 2)
        self.act = nn.ReLU()
        self.proj = nn.Linear(hidden, prompt_dim)

    def forward(self, x):
        return self.proj(self.pooled(x))

    def pooled(self, x):
        """The global mean the query is projected from (B, hidden): the mapper's context entry."""
        return self.act(self.conv(x)).mean(dim=(2, 3))


@dataclasses.dataclass(frozen=True)
class PromptOverride:
    """User-guided restoration: force or blend the domain and/or task prompt.

    `domain` / `task`: None (automatic routing), an int index into the pool, or a weight vector
    over the pool (length N, or (B, N) per sample; non-negative, normalised to sum 1).
    `blend` in [0, 1] mixes the pool weights: (1 - blend) * automatic + blend * forced.
    """

    domain: Any = None
    task: Any = None
    blend: float = 1.0

    def __post_init__(self):
        if self.domain is None and self.task is None:
            raise ConfigError("a prompt override needs a domain and/or a task (index or weight vector)")
        if isinstance(self.blend, bool) or not isinstance(self.blend, (int, float)):
            raise ConfigError(f"override blend must be a number in [0, 1], got {self.blend!r}")
        if not (0.0 <= float(self.blend) <= 1.0) or math.isnan(float(self.blend)):
            raise ConfigError(f"override blend must be in [0, 1], got {self.blend}")

    @property
    def forces_all(self) -> bool:
        """True when the prompt no longer depends on the input (foldable)."""
        return self.domain is not None and self.task is not None and float(self.blend) == 1.0


def override_weights(spec, pool_size: int, batch: int | None, kind: str) -> torch.Tensor:
    """Turn an index or weight vector into (B, N) pool weights summing to 1 (B=1 if batch is None)."""
    b = 1 if batch is None else batch
    if isinstance(spec, bool):
        raise ConfigError(f"{kind} override must be an index or a weight vector, got {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, torch.Tensor) and spec.dim() == 0
                                 and not spec.is_floating_point()):
        idx = int(spec)
        if not 0 <= idx < pool_size:
            raise ConfigError(f"{kind} override index {idx} is out of range: the {kind} pool has "
                              f"{pool_size} prompts (0..{pool_size - 1})")
        w = torch.zeros(b, pool_size)
        w[:, idx] = 1.0
        return w
    try:
        w = torch.as_tensor(spec, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{kind} override must be an index or a weight vector, got {spec!r}") from None
    if w.dim() == 1:
        w = w[None].expand(b, -1)
    if w.dim() != 2 or w.shape[1] != pool_size:
        raise ConfigError(f"{kind} override weights must have {pool_size} entries (one per pool prompt), "
                          f"got shape {tuple(w.shape)}")
    if batch is not None and w.shape[0] != batch:
        raise ConfigError(f"{kind} override weights have {w.shape[0]} rows but the batch has {batch}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"{kind} override weights must be finite and non-negative")
    total = w.sum(dim=1, keepdim=True)
    if (total <= 0).any():
        raise ConfigError(f"{kind} override weights must not all be zero")
    return w / total
