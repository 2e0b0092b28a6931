"""DualPromptNAFNetv3: the DATPRL-IR teacher on a NAFNet backbone, state-dict compatible with the
released checkpoints (see the reference spec for the semantics).

`encoders.0` is the shallowest level but `decoders.0` / `ups.0` the deepest, so `dec_blk_nums[0]`
counts the blocks right after the middle. Middle and decoder blocks are prompted.
"""

from __future__ import annotations

import torch
from torch import nn

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.channel_norms import LayerNorm2d
from datprl_edge.models.prompt_modules import DualPromptMixin, GatedFusionMixin
from datprl_edge.models.registry import register_arch, register_model
from datprl_edge.models.teacher_common import (
    check_int,
    check_int_list,
    crop_to,
    pad_to_multiple,
    prompt_config,
    resolve_options,
)

ARCH = "DualPromptNAFNetv3"

# Omitted options take these values (the released NAFNet-backbone config).
DEFAULTS = {
    "img_channel": 3, "width": 32, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8],
    "dec_blk_nums": [2, 2, 2, 2], "use_prompt": True, "domain_pool_size": 6, "degradation_pool_size": 12,
    "domain_prompt_dim": 1024, "degradation_prompt_dim": 1024, "domain_top_k": 3, "degradation_top_k": 3,
    "value_num_tokens": 5, "prompt_fusion_method": "cross_attention", "fusion_method": "cross_attention",
}


def _simple_gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(GatedFusionMixin, nn.Module):
    """Norm, (prompt fusion), 1x1 -> depthwise 3x3 -> SimpleGate -> channel attention -> 1x1, scaled
    residual; then norm -> 1x1 -> SimpleGate -> 1x1, scaled residual."""

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
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        if fusion_method is not None:
            self._build_gated_fusion(fusion_method, c, prompt_dim)

    def forward(self, inp: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(inp)
        if self.fusion_method is not None:
            x = self.fuse_prompt(x, prompt)
        x = _simple_gate(self.conv2(self.conv1(x)))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(_simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class DualPromptNAFNetv3(DualPromptMixin, nn.Module):
    """Takes the `network_g` options of the released YAML (all but `type`); see `DEFAULTS`.

    `forward(x)` returns the restored batch; `forward_with_aux(x)` also returns intermediate
    features and the routing of both prompt pools (for distillation).
    """

    def __init__(self, **options):
        super().__init__()
        o = _check(options)
        self.options = o
        self.img_channel, width = o["img_channel"], o["width"]
        enc, dec = o["enc_blk_nums"], o["dec_blk_nums"]
        levels = len(enc)
        self.pad_unit = 2 ** levels
        chans = [width * 2 ** i for i in range(levels + 1)]
        cfg = prompt_config(ARCH, o)
        fusion = None if cfg is None else cfg.fusion_method
        pdim = 0 if cfg is None else cfg.block_prompt_dim

        # Registration order follows the released state dict.
        self.intro = nn.Conv2d(self.img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, self.img_channel, 3, padding=1)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.middle_blks, self.ups, self.downs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(enc):
            self.encoders.append(nn.Sequential(*[NAFBlock(chans[i]) for _ in range(n)]))
            self.downs.append(nn.Conv2d(chans[i], chans[i + 1], 2, stride=2))
        self.middle_blks.extend(NAFBlock(chans[-1], fusion, pdim) for _ in range(o["middle_blk_num"]))
        for j, n in enumerate(dec):
            c = chans[levels - j]
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            self.decoders.append(nn.ModuleList(NAFBlock(c // 2, fusion, pdim) for _ in range(n)))
        self.prompt_config = cfg
        if cfg is not None:
            self._build_prompt_modules(cfg, width, chans[-1])
        # name -> (channels, downscale) of the features forward_with_aux returns.
        self.feature_info = {f"enc{i + 1}": (chans[i], 2 ** i) for i in range(levels)}
        self.feature_info["latent"] = (chans[-1], 2 ** levels)
        self.feature_info.update({f"dec{i + 1}": (chans[i], 2 ** i) for i in reversed(range(levels))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, with_aux=False)

    def forward_with_aux(self, x: torch.Tensor):
        """(output, aux): aux["features"] maps enc1..encL, latent, decL..dec1 to feature maps at the
        padded size (decN at 1/2**(N-1) resolution, see `feature_info`); aux["routing"] holds the
        `Routing` of the "domain" and "degradation" pools; aux["prompts"] their composed prompts
        and the fused one."""
        return self._run(x, with_aux=True)

    def _run(self, x: torch.Tensor, with_aux: bool):
        h_in, w_in = x.shape[2], x.shape[3]
        xp = pad_to_multiple(x, self.pad_unit, self.img_channel)
        stem = self.intro(xp)
        h, skips = stem, []
        for enc, down in zip(self.encoders, self.downs):
            h = enc(h)
            skips.append(h)
            h = down(h)
        prompt, prompts, routing = None, {}, {}
        if self.prompt_config is not None:
            prompt, prompts, routing = self._prompts(stem, h)
        for blk in self.middle_blks:
            h = blk(h, prompt)
        feats = {f"enc{i + 1}": s for i, s in enumerate(skips)}
        feats["latent"] = h
        levels = len(skips)
        for j, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            h = up(h) + skips[levels - 1 - j]
            for blk in dec:
                h = blk(h, prompt)
            feats[f"dec{levels - j}"] = h
        out = crop_to(self.ending(h) + xp, h_in, w_in)
        if not with_aux:
            return out
        if prompt is not None:
            prompts = {**prompts, "fused": prompt}
        return out, {"features": feats, "routing": routing, "prompts": prompts}


def _check(options: dict) -> dict:
    o = resolve_options(ARCH, options, DEFAULTS)
    check_int(ARCH, "img_channel", o["img_channel"])
    check_int(ARCH, "width", o["width"], 4)
    enc = check_int_list(ARCH, "enc_blk_nums", o["enc_blk_nums"])
    dec = check_int_list(ARCH, "dec_blk_nums", o["dec_blk_nums"])
    if len(enc) != len(dec):
        raise ConfigError(f"{ARCH}: enc_blk_nums and dec_blk_nums need the same number of levels, got "
                          f"{len(enc)} and {len(dec)}")
    check_int(ARCH, "middle_blk_num", o["middle_blk_num"], 0)
    o["enc_blk_nums"], o["dec_blk_nums"] = enc, dec
    return o


@register_arch(ARCH)
def build_nafnet(**options) -> DualPromptNAFNetv3:
    return DualPromptNAFNetv3(**options)


NAFNET_DEFAULT = dict(DEFAULTS)

register_model("nafnet-default", ARCH, NAFNET_DEFAULT, "released DATPRL-IR NAFNet-backbone teacher",
               role="teacher")
