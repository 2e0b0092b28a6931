"""DualPromptRestormerv3: the DATPRL-IR teacher on a Restormer backbone, state-dict compatible with
the released checkpoints (see the reference spec for the semantics).

Layout: stem -> three plain encoder levels -> latent -> three decoder levels -> refinement -> 3x3
output + padded input. Latent, decoder and refinement blocks are prompted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.channel_norms import LAYERNORM_TYPES, RestormerLayerNorm
from datprl_edge.models.prompt_modules import DualPromptMixin, GatedFusionMixin
from datprl_edge.models.registry import register_arch, register_model
from datprl_edge.models.teacher_common import (
    check_bool,
    check_choice,
    check_int,
    check_int_list,
    check_positive_float,
    crop_to,
    pad_to_multiple,
    prompt_config,
    resolve_options,
)

ARCH = "DualPromptRestormerv3"
PAD_UNIT = 8

# Omitted options take these values (the released 6-task config; `dim` falls back to `width`, then 48).
DEFAULTS = {
    "img_channel": 3, "dim": None, "width": None,
    "enc_blk_nums": [4, 6, 6], "middle_blk_num": 8, "dec_blk_nums": [6, 6, 4], "refine_blk_num": 4,
    "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "bias": False, "LayerNorm_type": "WithBias",
    "use_prompt": True, "domain_pool_size": 15, "degradation_pool_size": 15,
    "domain_prompt_dim": 1024, "degradation_prompt_dim": 1024, "domain_top_k": 5, "degradation_top_k": 3,
    "value_num_tokens": 2, "prompt_fusion_method": "cross_attention", "fusion_method": "cross_attention",
}


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: attention across channels, per head."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: gelu(x1) * x2 after a depthwise 3x3."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(GatedFusionMixin, nn.Module):
    """x_in = fusion(x, prompt) when prompted; x += attn(norm1(x_in)); x += ffn(norm2(x))."""

    def __init__(self, dim, heads, ffn_expansion_factor, bias, layernorm_type, fusion_method=None,
                 prompt_dim=0):
        super().__init__()
        self.norm1 = RestormerLayerNorm(dim, layernorm_type)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = RestormerLayerNorm(dim, layernorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)
        if fusion_method is not None:
            self._build_gated_fusion(fusion_method, dim, prompt_dim)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        x_in = x if self.fusion_method is None else self.fuse_prompt(x, prompt)
        x = x + self.attn(self.norm1(x_in))
        return x + self.ffn(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_ch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, 3, padding=1, bias=False)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv to C/2, then PixelUnshuffle(2): (C, H, W) -> (2C, H/2, W/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv to 2C, then PixelShuffle(2): (C, H, W) -> (C/2, 2H, 2W)."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, 2 * ch, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class DualPromptRestormerv3(DualPromptMixin, nn.Module):
    """Takes the `network_g` options of the released YAML (all but `type`); see `DEFAULTS`.

    `forward(x)` returns the restored batch; `forward_with_aux(x)` also returns intermediate
    features and the routing of both prompt pools (for distillation).
    """

    def __init__(self, **options):
        super().__init__()
        o = _check(options)
        self.options = o
        self.img_channel = o["img_channel"]
        dim, heads, bias = o["dim"], o["heads"], o["bias"]
        enc, dec = o["enc_blk_nums"], o["dec_blk_nums"]
        cfg = prompt_config(ARCH, o)
        fusion = None if cfg is None else cfg.fusion_method
        pdim = 0 if cfg is None else cfg.block_prompt_dim
        common = (o["ffn_expansion_factor"], bias, o["LayerNorm_type"])

        def plain(n, ch, h):
            return nn.Sequential(*[RestormerBlock(ch, h, *common) for _ in range(n)])

        def prompted(n, ch, h):
            return nn.ModuleList(RestormerBlock(ch, h, *common, fusion, pdim) for _ in range(n))

        # Registration order follows the released state dict.
        self.patch_embed = PatchEmbed(self.img_channel, dim)
        self.output = nn.Conv2d(2 * dim, self.img_channel, 3, padding=1, bias=bias)
        self.encoder_level1 = plain(enc[0], dim, heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = plain(enc[1], 2 * dim, heads[1])
        self.down2_3 = Downsample(2 * dim)
        self.encoder_level3 = plain(enc[2], 4 * dim, heads[2])
        self.down3_4 = Downsample(4 * dim)
        self.latent_blocks = prompted(o["middle_blk_num"], 8 * dim, heads[3])
        self.up4_3 = Upsample(8 * dim)
        self.reduce_chan_level3 = nn.Conv2d(8 * dim, 4 * dim, 1, bias=bias)
        self.decoder_level3 = prompted(dec[2], 4 * dim, heads[2])
        self.up3_2 = Upsample(4 * dim)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=bias)
        self.decoder_level2 = prompted(dec[1], 2 * dim, heads[1])
        self.up2_1 = Upsample(2 * dim)
        self.decoder_level1 = prompted(dec[0], 2 * dim, heads[0])
        self.refinement = prompted(o["refine_blk_num"], 2 * dim, heads[0])
        self.prompt_config = cfg
        if cfg is not None:
            self._build_prompt_modules(cfg, dim, 8 * dim)
        # name -> (channels, downscale) of the features forward_with_aux returns.
        self.feature_info = {
            "enc1": (dim, 1), "enc2": (2 * dim, 2), "enc3": (4 * dim, 4), "latent": (8 * dim, 8),
            "dec3": (4 * dim, 4), "dec2": (2 * dim, 2), "dec1": (2 * dim, 1), "refine": (2 * dim, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, with_aux=False)

    def forward_with_aux(self, x: torch.Tensor):
        """(output, aux): aux["features"] maps enc1..enc3, latent, dec3..dec1, refine to feature
        maps at the padded size (see `feature_info`); aux["routing"] holds the `Routing` of the
        "domain" and "degradation" pools; aux["prompts"] their composed prompts and the fused one."""
        return self._run(x, with_aux=True)

    def _run(self, x: torch.Tensor, with_aux: bool):
        h_in, w_in = x.shape[2], x.shape[3]
        xp = pad_to_multiple(x, PAD_UNIT, self.img_channel)
        stem = self.patch_embed(xp)
        e1 = self.encoder_level1(stem)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        deep = self.down3_4(e3)
        prompt, prompts, routing = None, {}, {}
        if self.prompt_config is not None:
            prompt, prompts, routing = self._prompts(stem, deep)
        lat = _blocks(self.latent_blocks, deep, prompt)
        d3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1))
        d3 = _blocks(self.decoder_level3, d3, prompt)
        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1))
        d2 = _blocks(self.decoder_level2, d2, prompt)
        d1 = _blocks(self.decoder_level1, torch.cat([self.up2_1(d2), e1], 1), prompt)
        ref = _blocks(self.refinement, d1, prompt)
        out = crop_to(self.output(ref) + xp, h_in, w_in)
        if not with_aux:
            return out
        feats = {"enc1": e1, "enc2": e2, "enc3": e3, "latent": lat, "dec3": d3, "dec2": d2, "dec1": d1,
                 "refine": ref}
        if prompt is not None:
            prompts = {**prompts, "fused": prompt}
        return out, {"features": feats, "routing": routing, "prompts": prompts}


def _blocks(blocks: nn.ModuleList, x: torch.Tensor, prompt) -> torch.Tensor:
    for blk in blocks:
        x = blk(x, prompt)
    return x


def _check(options: dict) -> dict:
    o = resolve_options(ARCH, options, DEFAULTS)
    dim = o["dim"] if o["dim"] is not None else (o["width"] if o["width"] is not None else 48)
    name = "dim" if o["dim"] is not None else "width"
    check_int(ARCH, name, dim, 4)
    if dim % 2:
        raise ConfigError(f"{ARCH} option {name} must be even (the downsampling halves it), got {dim}")
    o["dim"] = dim
    check_int(ARCH, "img_channel", o["img_channel"])
    check_int_list(ARCH, "enc_blk_nums", o["enc_blk_nums"], 3)
    check_int_list(ARCH, "dec_blk_nums", o["dec_blk_nums"], 3)
    check_int(ARCH, "middle_blk_num", o["middle_blk_num"], 0)
    check_int(ARCH, "refine_blk_num", o["refine_blk_num"], 0)
    heads = check_int_list(ARCH, "heads", o["heads"], 4, minimum=1)
    for level, (h, ch) in enumerate(zip(heads, (dim, 2 * dim, 4 * dim, 8 * dim))):
        if ch % h:
            raise ConfigError(f"{ARCH}: heads[{level}] = {h} does not divide the {ch} channels of level "
                              f"{level + 1}; pick a divisor of {ch}")
    check_positive_float(ARCH, "ffn_expansion_factor", o["ffn_expansion_factor"])
    if int(dim * o["ffn_expansion_factor"]) < 1:
        raise ConfigError(f"{ARCH} option ffn_expansion_factor is too small for dim {dim}")
    check_bool(ARCH, "bias", o["bias"])
    check_choice("LayerNorm_type", o["LayerNorm_type"], LAYERNORM_TYPES)
    o["enc_blk_nums"], o["dec_blk_nums"], o["heads"] = list(o["enc_blk_nums"]), list(o["dec_blk_nums"]), heads
    return o


@register_arch(ARCH)
def build_restormer(**options) -> DualPromptRestormerv3:
    return DualPromptRestormerv3(**options)


RESTORMER_6T = {
    "img_channel": 3, "enc_blk_nums": [4, 6, 6], "middle_blk_num": 8, "dec_blk_nums": [6, 6, 4],
    "refine_blk_num": 4, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "LayerNorm_type": "WithBias",
    "use_prompt": True, "domain_pool_size": 15, "degradation_pool_size": 15, "domain_prompt_dim": 1024,
    "degradation_prompt_dim": 1024, "domain_top_k": 5, "degradation_top_k": 3, "value_num_tokens": 2,
    "prompt_fusion_method": "cross_attention", "fusion_method": "cross_attention",
}

# A small teacher of the same architecture, for training on one machine (CPU or one GPU).
RESTORMER_REF = {
    "img_channel": 3, "dim": 16, "enc_blk_nums": [1, 2, 2], "middle_blk_num": 2, "dec_blk_nums": [1, 2, 2],
    "refine_blk_num": 1, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "LayerNorm_type": "WithBias",
    "use_prompt": True, "domain_pool_size": 15, "degradation_pool_size": 15, "domain_prompt_dim": 96,
    "degradation_prompt_dim": 96, "domain_top_k": 5, "degradation_top_k": 3, "value_num_tokens": 2,
    "prompt_fusion_method": "cross_attention", "fusion_method": "cross_attention",
}

register_model("restormer-6t", ARCH, RESTORMER_6T, "released DATPRL-IR teacher (3 domains, 6-9 tasks)",
               role="teacher")
register_model("restormer-ref", ARCH, RESTORMER_REF, "small reference teacher of the released architecture",
               role="teacher")
