"""Dynamically folded DATPRL-IR teachers: same routing and outputs, exact simplifications only.

Registered as `DualPromptRestormerv3Dynamic` / `DualPromptNAFNetv3Dynamic` with the teacher's
options, so `load_model` rebuilds them. What changes (all exact algebra, verified by the fold stage):

- prompt pools: `FoldedPromptPool` (pre-normalised, temperature-scaled keys; value Linear folded);
- prompt fusion `cross_attention`: attention over one key has weight 1, so the query and key
  projections are dead; `out_proj(v_proj(degradation))` is merged into one Linear;
- block fusion `cross_attention`: the per-pixel query/key path is dead; prompt LayerNorm affine,
  `cross_attn_v`, the prompt gate and `cross_attn_out` merge into one Linear per block, applied once
  per image: x -> x * fw + bias(prompt); `concat`: the prompt half of the 1x1 fusion conv,
  `prompt_projection` and the gate merge into a per-image bias, fw into the feature half;
  `adaptive_modulation`: both gates fold into the last Linear, which emits (mul, add);
- channel LayerNorm affines fold into the 1x1 conv after them (Restormer `qkv`, `project_in`;
  NAFNet `conv1`, `conv4`); in NAFNet the fusion sits between `norm1` and `conv1`, so it folds
  through `conv1` too (a per-image bias after conv1, or a merged conv for `concat`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datprl_edge.models.folded_prompt import (
    FoldedPromptPool,
    PromptAffine,
    PromptBias,
    _d,
    assign,
    conv1x1_matrix,
    set_conv1x1,
    set_linear,
)
from datprl_edge.models.nafnet import DualPromptNAFNetv3, NAFBlock, _simple_gate
from datprl_edge.models.registry import register_arch
from datprl_edge.models.restormer import GDFN, MDTA, DualPromptRestormerv3, RestormerBlock

RESTORMER_DYNAMIC = "DualPromptRestormerv3Dynamic"
NAFNET_DYNAMIC = "DualPromptNAFNetv3Dynamic"


class PlainChannelNorm(nn.Module):
    """Channel LayerNorm of a (B, C, H, W) map without affine (it lives in the next conv).
    `subtract_mean=False` is Restormer's BiasFree form: x / sqrt(var + eps)."""

    def __init__(self, eps: float, subtract_mean: bool = True):
        super().__init__()
        self.eps, self.subtract_mean = eps, subtract_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subtract_mean:
            return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=self.eps).permute(0, 3, 1, 2)
        return x * torch.rsqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)


class FoldedRestormerBlock(nn.Module):
    def __init__(self, dim, heads, ffn_expansion_factor, bias, layernorm_type, fusion_method=None,
                 prompt_dim=0):
        super().__init__()
        with_bias = layernorm_type == "WithBias"
        self.norm1 = PlainChannelNorm(1e-5, with_bias)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = PlainChannelNorm(1e-5, with_bias)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)
        if with_bias and not bias:  # the LayerNorm bias becomes a conv bias
            self.attn.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=True)
            self.ffn.project_in = nn.Conv2d(dim, self.ffn.project_in.out_channels, 1, bias=True)
        self.fusion_method = fusion_method
        if fusion_method == "cross_attention":
            self.feature_scale = nn.Parameter(torch.ones(1))
            self.prompt_bias = PromptBias(prompt_dim, dim, normalize=True)
        elif fusion_method == "concat":
            self.feature_conv = nn.Conv2d(dim, dim, 1)
            self.prompt_bias = PromptBias(prompt_dim, dim, normalize=False)
        elif fusion_method == "adaptive_modulation":
            self.prompt_affine = PromptAffine(prompt_dim, 2 * dim, dim)

    def fuse(self, x, prompt):
        if self.fusion_method == "cross_attention":
            return x * self.feature_scale + self.prompt_bias(prompt)[:, :, None, None]
        if self.fusion_method == "concat":
            return self.feature_conv(x) + self.prompt_bias(prompt)[:, :, None, None]
        mul, add = self.prompt_affine(prompt)
        return x * mul[:, :, None, None] + add[:, :, None, None]

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        x_in = x if self.fusion_method is None else self.fuse(x, prompt)
        x = x + self.attn(self.norm1(x_in))
        return x + self.ffn(self.norm2(x))


class FoldedNAFBlock(nn.Module):
    """NAF block with norm affines in conv1/conv4; the prompt enters as a per-image bias after
    conv1 (`cross_attention`, `concat`) or as (mul, add) before it (`adaptive_modulation`)."""

    def __init__(self, c: int, fusion_method: str | None = None, prompt_dim: int = 0):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = PlainChannelNorm(1e-6)
        self.norm2 = PlainChannelNorm(1e-6)
        self.fusion_method = fusion_method
        if fusion_method in ("cross_attention", "concat"):
            self.prompt_bias = PromptBias(prompt_dim, 2 * c, normalize=fusion_method == "cross_attention")
        elif fusion_method == "adaptive_modulation":
            self.prompt_affine = PromptAffine(prompt_dim, 2 * c, c)

    def forward(self, inp: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(inp)
        if self.fusion_method == "adaptive_modulation":
            mul, add = self.prompt_affine(prompt)
            x = x * mul[:, :, None, None] + add[:, :, None, None]
        x = self.conv1(x)
        if self.fusion_method in ("cross_attention", "concat"):
            x = x + self.prompt_bias(prompt)[:, :, None, None]
        x = _simple_gate(self.conv2(x))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(_simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class _DynamicPromptMixin:
    """Folded pools and, for `cross_attention` prompt fusion, the merged value/out Linear."""

    def _fold_prompt_modules(self) -> None:
        cfg = self.prompt_config
        if cfg is None:
            return
        for attr in ("domain_prompt_pool", "degradation_prompt_pool"):
            p = getattr(self, attr)
            setattr(self, attr, FoldedPromptPool(p.pool_size, p.prompt_dim, p.num_tokens, p.top_k))
        if cfg.prompt_fusion_method == "cross_attention":
            del self.prompt_cross_attention
            self.prompt_fusion_value = nn.Linear(cfg.domain_prompt_dim, cfg.domain_prompt_dim)

    def fuse_prompts(self, domain: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        if self.prompt_config.prompt_fusion_method == "concat":
            return torch.cat([domain, degradation], dim=1)
        out = self.prompt_fusion_norm(self.prompt_fusion_value(degradation) + domain)
        return out + self.prompt_fusion_ffn(out)


class DualPromptRestormerv3Dynamic(_DynamicPromptMixin, DualPromptRestormerv3):
    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        for _, container, i, blk in _blocks(self, RestormerBlock):
            container[i] = FoldedRestormerBlock(
                blk.attn.qkv.in_channels, blk.attn.heads, o["ffn_expansion_factor"], o["bias"],
                o["LayerNorm_type"], blk.fusion_method, self._block_prompt_dim())
        self._fold_prompt_modules()

    def _block_prompt_dim(self) -> int:
        return 0 if self.prompt_config is None else self.prompt_config.block_prompt_dim


class DualPromptNAFNetv3Dynamic(_DynamicPromptMixin, DualPromptNAFNetv3):
    def __init__(self, **options):
        super().__init__(**options)
        pdim = 0 if self.prompt_config is None else self.prompt_config.block_prompt_dim
        for _, container, i, blk in _blocks(self, NAFBlock):
            container[i] = FoldedNAFBlock(blk.conv3.out_channels, blk.fusion_method, pdim)
        self._fold_prompt_modules()


def _blocks(model, kind):
    """(path, container, index, block) for every `kind` block inside a Sequential/ModuleList."""
    found = []
    for path, container in model.named_modules():
        if isinstance(container, (nn.Sequential, nn.ModuleList)):
            for i, blk in enumerate(container):
                if isinstance(blk, kind):
                    found.append((f"{path}.{i}", container, i, blk))
    return found


# -- deriving the folded parameters ------------------------------------------------------------


def dynamic_from_teacher(teacher, options: dict):
    """A folded copy of a DualPromptRestormerv3 / DualPromptNAFNetv3 teacher (the input is unchanged)."""
    restormer = isinstance(teacher, DualPromptRestormerv3)
    dyn = (DualPromptRestormerv3Dynamic if restormer else DualPromptNAFNetv3Dynamic)(**options)
    src = teacher.state_dict()
    own = dyn.state_dict()
    dyn.load_state_dict({k: src[k] if k in src and src[k].shape == v.shape else v for k, v in own.items()})
    for path, _, _, blk in _blocks(teacher, RestormerBlock if restormer else NAFBlock):
        (_fold_restormer_block if restormer else _fold_naf_block)(blk, dyn.get_submodule(path))
    if teacher.prompt_config is not None:
        dyn.domain_prompt_pool = FoldedPromptPool.from_pool(teacher.domain_prompt_pool)
        dyn.degradation_prompt_pool = FoldedPromptPool.from_pool(teacher.degradation_prompt_pool)
        if teacher.prompt_config.prompt_fusion_method == "cross_attention":
            _fold_value_out(teacher.prompt_cross_attention, dyn.prompt_fusion_value)
    return dyn.eval()


def _fold_value_out(mha: nn.MultiheadAttention, dst: nn.Linear) -> None:
    p = mha.embed_dim
    wv, bv = _d(mha.in_proj_weight)[2 * p:], _d(mha.in_proj_bias)[2 * p:]
    wo, bo = _d(mha.out_proj.weight), _d(mha.out_proj.bias)
    set_linear(dst, wo @ wv, wo @ bv + bo)


def _gates(blk):
    w = torch.softmax(torch.cat([_d(blk.feature_weight), _d(blk.prompt_weight)]), dim=0)
    return w[0], w[1]


def _norm_affine(norm, channels):
    body = getattr(norm, "body", norm)
    g = _d(body.weight)
    b = _d(body.bias) if getattr(body, "bias", None) is not None else g.new_zeros(channels)
    return g, b


def _fold_norm_into(conv_src: nn.Conv2d, conv_dst: nn.Conv2d, g, b) -> None:
    w, c = conv1x1_matrix(conv_src)
    set_conv1x1(conv_dst, w * g[None, :], w @ b + c)


def _cross_attention_bias(blk, pw):
    """(A, a) with cross_attn_out(pw * cross_attn_v(prompt_norm(p))) = A n(p) + a."""
    gp, bp = _d(blk.prompt_norm.weight), _d(blk.prompt_norm.bias)
    wv, bv = _d(blk.cross_attn_v.weight), _d(blk.cross_attn_v.bias)
    wo, bo = _d(blk.cross_attn_out.weight), _d(blk.cross_attn_out.bias)
    return pw * wo @ wv * gp[None, :], pw * wo @ (wv @ bp + bv) + bo


def _concat_parts(blk, pw):
    """(Wx, bf, P, p): prompt_fusion(cat[x', proj]) = Wx x' + bf + (P prompt + p)."""
    wf, bf = conv1x1_matrix(blk.prompt_fusion)
    c = wf.shape[0]
    wx, wp = wf[:, :c], wf[:, c:]
    wj, bj = _d(blk.prompt_projection.weight), _d(blk.prompt_projection.bias)
    return wx, bf, pw * wp @ wj, pw * wp @ bj


def _modulation_rows(blk, fw, pw):
    """(mul weight, mul bias, add weight, add bias) of the last prompt_mlp Linear with gates folded."""
    last = blk.prompt_mlp[2]
    w, b = _d(last.weight), _d(last.bias)
    c = w.shape[0] // 2
    return fw * pw * w[:c], fw * pw * b[:c] + fw, pw * w[c:], pw * b[c:]


def _fold_restormer_block(src: RestormerBlock, dst: FoldedRestormerBlock) -> None:
    c = src.attn.qkv.in_channels
    _fold_norm_into(src.attn.qkv, dst.attn.qkv, *_norm_affine(src.norm1, c))
    _fold_norm_into(src.ffn.project_in, dst.ffn.project_in, *_norm_affine(src.norm2, c))
    if src.fusion_method is None:
        return
    fw, pw = _gates(src)
    if src.fusion_method == "cross_attention":
        assign(dst.feature_scale, fw)
        set_linear(dst.prompt_bias.proj, *_cross_attention_bias(src, pw))
    elif src.fusion_method == "concat":
        wx, bf, wp, bp = _concat_parts(src, pw)
        set_conv1x1(dst.feature_conv, wx * fw, bf)
        set_linear(dst.prompt_bias.proj, wp, bp)
    else:
        dst.prompt_affine.prompt_mlp[0].load_state_dict(src.prompt_mlp[0].state_dict())
        mw, mb, aw, ab = _modulation_rows(src, fw, pw)
        set_linear(dst.prompt_affine.prompt_mlp[2], torch.cat([mw, aw]), torch.cat([mb, ab]))


def _fold_naf_block(src: NAFBlock, dst: FoldedNAFBlock) -> None:
    c = src.conv3.out_channels
    g1, b1 = _norm_affine(src.norm1, c)
    _fold_norm_into(src.conv4, dst.conv4, *_norm_affine(src.norm2, c))
    w1, c1 = conv1x1_matrix(src.conv1)
    method = src.fusion_method
    if method is None:
        set_conv1x1(dst.conv1, w1 * g1[None, :], w1 @ b1 + c1)
        return
    fw, pw = _gates(src)
    if method == "cross_attention":  # conv1((n g + b) fw + A n(p) + a)
        a_w, a_b = _cross_attention_bias(src, pw)
        set_conv1x1(dst.conv1, w1 * (g1 * fw)[None, :], w1 @ (b1 * fw) + c1)
        set_linear(dst.prompt_bias.proj, w1 @ a_w, w1 @ a_b)
    elif method == "concat":  # conv1(Wx (n g + b) fw + bf + P p + q): two 1x1 convs merge
        wx, bf, wp, bp = _concat_parts(src, pw)
        m = w1 @ wx
        set_conv1x1(dst.conv1, m * (g1 * fw)[None, :], w1 @ (wx @ (b1 * fw) + bf) + c1)
        set_linear(dst.prompt_bias.proj, w1 @ wp, w1 @ bp)
    else:  # (n g + b) * mul + add = n (g mul) + (b mul + add)
        set_conv1x1(dst.conv1, w1, c1)
        dst.prompt_affine.prompt_mlp[0].load_state_dict(src.prompt_mlp[0].state_dict())
        mw, mb, aw, ab = _modulation_rows(src, fw, pw)
        weight = torch.cat([g1[:, None] * mw, b1[:, None] * mw + aw])
        bias = torch.cat([g1 * mb, b1 * mb + ab])
        set_linear(dst.prompt_affine.prompt_mlp[2], weight, bias)


@register_arch(RESTORMER_DYNAMIC)
def build_restormer_dynamic(**options) -> DualPromptRestormerv3Dynamic:
    return DualPromptRestormerv3Dynamic(**options)


@register_arch(NAFNET_DYNAMIC)
def build_nafnet_dynamic(**options) -> DualPromptNAFNetv3Dynamic:
    return DualPromptNAFNetv3Dynamic(**options)

