"""EdgeDATPRL: the compact edge student that keeps DATPRL-IR's method.

Backbone: a small U-Net of plain/depthwise convs and SimpleGate blocks without LayerNorm
(`student_blocks.EdgeBlock`, option `block` "gated"), or of dense conv blocks (`DenseBlock`, "dense":
a 1x1 and a 3x3 conv with a ReLU, what INT8 kernels run fastest). Method, as in the full model: a
domain prompt pool queried from the shallow features and a task (degradation) prompt pool queried
from the deepest features, top-k composition (`PromptPool`), the two prompts concatenated, and
adaptive gated fusion into every latent and decoder block as per-channel FiLM placed right before a
1x1 conv (foldable when the prompt is fixed). Zero padding to a multiple of 2**levels, global
residual, crop back.

Block counts run shallow to deep: `enc_blk_nums[0]` and `dec_blk_nums[0]` work at full resolution.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from datprl_edge.core.errors import ChannelCountError, ConfigError
from datprl_edge.models.bounds import set_act_bounds
from datprl_edge.models.context import (
    DOMAIN_QUERY,
    DOMAIN_WEIGHTS,
    TASK_QUERY,
    TASK_WEIGHTS,
    check_context,
)
from datprl_edge.models.prompt_pool import PromptPool, Routing
from datprl_edge.models.registry import register_arch, register_model
from datprl_edge.models.student_blocks import (
    BLOCK_TYPES,
    BLOCKS,
    DenseBlock,
    FiLMTerms,
    PromptOverride,
    QueryMapper,
    override_weights,
)

__all__ = ["EdgeDATPRL", "PromptConditioning", "PromptOverride", "FiLMTerms"]


class PromptConditioning(NamedTuple):
    """Everything the prompts contribute for one batch (what a fold stage bakes into convs).

    `films` maps each prompted block's module path (e.g. "middle_blks.0", "decoders.2.0") to its
    `FiLMTerms`; the conv that absorbs them is that block's `conv1`.
    """

    domain_prompt: torch.Tensor  # (B, Pd)
    task_prompt: torch.Tensor  # (B, Pt)
    prompt: torch.Tensor  # (B, Pd + Pt), the concatenation the blocks see
    domain_weights: torch.Tensor  # (B, N_domain) effective pool weights
    task_weights: torch.Tensor  # (B, N_task)
    films: dict


class EdgeDATPRL(nn.Module):
    accepts_act_bounds = True  # models.bounds: the option act_bounds

    def __init__(self, img_channel=3, width=16, enc_blk_nums=(1, 1, 1), middle_blk_num=1,
                 dec_blk_nums=(1, 1, 1), dw_expand=2, ffn_expand=2, use_sca=True, layer_scale_init=0.1,
                 domain_pool_size=15, degradation_pool_size=15, domain_prompt_dim=32,
                 degradation_prompt_dim=32, domain_top_k=5, degradation_top_k=3, value_num_tokens=2,
                 stem=1, block="gated", act_bounds=None):
        super().__init__()
        _check_options(img_channel, width, enc_blk_nums, dec_blk_nums, middle_blk_num,
                       (domain_pool_size, domain_top_k, "domain"),
                       (degradation_pool_size, degradation_top_k, "degradation"), stem=stem, block=block)
        Block = BLOCKS[block]
        levels = len(enc_blk_nums)
        self.img_channel = img_channel
        self.pad_multiple = stem * 2 ** levels
        prompt_dim = domain_prompt_dim + degradation_prompt_dim
        blk = dict(dw_expand=dw_expand, ffn_expand=ffn_expand, use_sca=use_sca,
                   layer_scale_init=layer_scale_init)
        chans = [width * 2 ** i for i in range(levels + 1)]

        self.unshuffle, self.intro, ending, shuffle = build_stem(img_channel, width, stem)
        self.encoders = nn.ModuleList(nn.Sequential(*[Block(chans[i], **blk) for _ in range(n)])
                                      for i, n in enumerate(enc_blk_nums))
        self.downs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 2, stride=2) for i in range(levels))
        self.domain_mapper = QueryMapper(width, max(width // 2, 8), domain_prompt_dim, kernel=3, stride=2)
        self.degradation_mapper = QueryMapper(chans[-1], max(chans[-1] // 2, 8), degradation_prompt_dim,
                                              kernel=1)
        self.domain_prompt_pool = PromptPool(domain_pool_size, domain_prompt_dim, value_num_tokens,
                                             domain_top_k)
        self.degradation_prompt_pool = PromptPool(degradation_pool_size, degradation_prompt_dim,
                                                  value_num_tokens, degradation_top_k)
        self.middle_blks = nn.ModuleList(Block(chans[-1], prompt_dim, **blk)
                                         for _ in range(middle_blk_num))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i + 1], chans[i] * 4, 1, bias=False), nn.PixelShuffle(2))
            for i in range(levels))
        self.decoders = nn.ModuleList(
            nn.ModuleList(Block(chans[i], prompt_dim, **blk) for _ in range(n))
            for i, n in enumerate(dec_blk_nums))
        self.ending, self.shuffle = ending, shuffle  # registered last: module order as before stems
        name_context_blocks(self)
        self.apply(_variance_preserving_init)
        with torch.no_grad():  # start near the identity (global residual), not at random noise
            self.ending.weight.mul_(0.1)
            for mod in self.modules():
                if isinstance(mod, DenseBlock):  # its residual branch starts small, as beta does
                    mod.conv2.weight.mul_(layer_scale_init)
        if act_bounds is not None:
            set_act_bounds(self, act_bounds)

    # -- public API -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, override: PromptOverride | None = None,
                context: torch.Tensor | None = None, context_mix: torch.Tensor | None = None):
        """The restored batch; with `context` and `context_mix` (B, K) (see `models.context`), the
        tuple (restored, this input's own context)."""
        ctx = check_context(self, x, context, context_mix)
        out, aux = self._run(x, override, ctx)
        return out if ctx is None else (out, ctx.output())

    def context_layout(self) -> list[tuple[str, int]]:
        """The context entries (name, size): routing weights, mapper means, channel-attention means."""
        return [(DOMAIN_WEIGHTS, self.domain_prompt_pool.pool_size),
                (TASK_WEIGHTS, self.degradation_prompt_pool.pool_size),
                (DOMAIN_QUERY, self.domain_mapper.proj.in_features),
                (TASK_QUERY, self.degradation_mapper.proj.in_features)] + block_context_layout(self)

    def forward_with_aux(self, x: torch.Tensor, override: PromptOverride | None = None):
        """(output, aux): aux["features"] holds dec1..decL (H, H/2, ...) and latent, at the padded
        size; aux["routing"] the automatic `Routing` of each pool; aux["prompt_weights"] the
        effective (B, N) pool weights after any override."""
        return self._run(x, override)

    def conditioning(self, x: torch.Tensor | None = None,
                     override: PromptOverride | None = None) -> PromptConditioning:
        """Composed prompts and every prompted block's FiLM terms for an input and/or override.

        Without `x` the override must force both prompts with blend=1 (the prompt is then fixed).
        """
        if x is None:
            if override is None or not override.forces_all:
                raise ConfigError("without an input image the override must force both domain and task "
                                  "with blend=1 (otherwise the prompt depends on the image)")
            routes = (None, None)
        else:
            xp = self._pad(x)
            feat, _, deep = self._encode(xp)
            routes = (self.domain_prompt_pool.route(self.domain_mapper(feat)),
                      self.degradation_prompt_pool.route(self.degradation_mapper(deep)))
        return self._condition(*routes, override)

    # -- internals --------------------------------------------------------------------------

    def _pad(self, x):
        if x.dim() != 4:
            raise ConfigError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[1] != self.img_channel:
            raise ChannelCountError(f"this model takes {self.img_channel}-channel images, got {x.shape[1]}")
        m = self.pad_multiple
        h, w = x.shape[2], x.shape[3]
        if torch.jit.is_tracing():  # a trace is for one size: bake the pads in as constants
            h, w = int(h), int(w)
        ph, pw = (-h) % m, (-w) % m
        # Known-aligned sizes skip the op (no pad/crop in the exported graph); symbolic sizes
        # (dynamic-shape export) always pad.
        if _known_zero(ph) and _known_zero(pw):
            return x
        return F.pad(x, (0, pw, 0, ph))

    def _encode(self, xp, ctx=None):
        feat = self.intro(self.unshuffle(xp))
        h, skips = feat, []
        for enc, down in zip(self.encoders, self.downs):
            if ctx is None:
                h = enc(h)
            else:
                for blk in enc:
                    h = blk(h, None, ctx)
            skips.append(h)
            h = down(h)
        return feat, skips, h

    def _run(self, x, override, ctx=None):
        h_in, w_in = x.shape[2], x.shape[3]
        if torch.jit.is_tracing():
            h_in, w_in = int(h_in), int(w_in)
        xp = self._pad(x)
        feat, skips, h = self._encode(xp, ctx)
        if ctx is not None:
            return self._run_with_context(xp, x, h_in, w_in, skips, feat, h, override, ctx)
        d_route = self.domain_prompt_pool.route(self.domain_mapper(feat))
        t_route = self.degradation_prompt_pool.route(self.degradation_mapper(h))
        if override is None:
            d_prompt = self.domain_prompt_pool.compose(d_route)
            t_prompt = self.degradation_prompt_pool.compose(t_route)
            weights = None
        else:
            cond = self._condition(d_route, t_route, override, films=False)
            d_prompt, t_prompt = cond.domain_prompt, cond.task_prompt
            weights = {"domain": cond.domain_weights, "degradation": cond.task_weights}
        out, feats = self._decode(torch.cat([d_prompt, t_prompt], dim=1), h, skips, xp, x, h_in, w_in)
        if weights is None:
            weights = {"domain": d_route.dense(self.domain_prompt_pool.pool_size),
                       "degradation": t_route.dense(self.degradation_prompt_pool.pool_size)}
        aux = {"features": feats, "routing": {"domain": d_route, "degradation": t_route},
               "prompt_weights": weights}
        return out, aux

    def _run_with_context(self, xp, x, h_in, w_in, skips, feat, h, override, ctx):
        """`_run` with the image-wide quantities taken through `ctx` (dense routing weights)."""
        d_query = ctx.pool(DOMAIN_QUERY, self.domain_mapper.pooled(feat))
        t_query = ctx.pool(TASK_QUERY, self.degradation_mapper.pooled(h))
        d_route = self.domain_prompt_pool.route(self.domain_mapper.proj(d_query))
        t_route = self.degradation_prompt_pool.route(self.degradation_mapper.proj(t_query))
        if override is None:
            d_w = d_route.dense(self.domain_prompt_pool.pool_size)
            t_w = t_route.dense(self.degradation_prompt_pool.pool_size)
        else:
            cond = self._condition(d_route, t_route, override, films=False)
            d_w, t_w = cond.domain_weights, cond.task_weights
        d_w, t_w = ctx.pool(DOMAIN_WEIGHTS, d_w), ctx.pool(TASK_WEIGHTS, t_w)
        prompt = torch.cat([self.domain_prompt_pool.compose_dense(d_w),
                            self.degradation_prompt_pool.compose_dense(t_w)], dim=1)
        out, feats = self._decode(prompt, h, skips, xp, x, h_in, w_in, ctx)
        return out, {"features": feats, "routing": {"domain": d_route, "degradation": t_route},
                     "prompt_weights": {"domain": d_w, "degradation": t_w}}

    def _decode(self, prompt, h, skips, xp, x, h_in, w_in, ctx=None):
        for blk in self.middle_blks:
            h = blk(h, prompt, ctx)
        feats = {"latent": h}
        for i in reversed(range(len(self.decoders))):
            h = self.ups[i](h) + skips[i]
            for blk in self.decoders[i]:
                h = blk(h, prompt, ctx)
            feats[f"dec{i + 1}"] = h
        out = self.shuffle(self.ending(h)) + xp
        if xp is not x:
            out = out[:, :, :h_in, :w_in]
        return out, feats

    def _condition(self, d_route: Routing | None, t_route: Routing | None, override, films=True):
        batch = None if d_route is None else d_route.weights.shape[0]
        d_prompt, d_w = _pool_prompt(self.domain_prompt_pool, d_route, override, "domain", batch)
        t_prompt, t_w = _pool_prompt(self.degradation_prompt_pool, t_route, override, "task", batch)
        if d_prompt.shape[0] != t_prompt.shape[0]:  # only without an input: one override has 1 row
            if min(d_prompt.shape[0], t_prompt.shape[0]) != 1:
                raise ConfigError(f"domain and task overrides disagree on the batch size "
                                  f"({d_prompt.shape[0]} vs {t_prompt.shape[0]})")
            b = max(d_prompt.shape[0], t_prompt.shape[0])
            d_prompt, d_w = d_prompt.expand(b, -1), d_w.expand(b, -1)
            t_prompt, t_w = t_prompt.expand(b, -1), t_w.expand(b, -1)
        prompt = torch.cat([d_prompt, t_prompt], dim=1)
        terms = {}
        if films:
            for name, mod in self.named_modules():
                if isinstance(mod, BLOCK_TYPES) and mod.film is not None:
                    terms[name] = mod.film.terms(prompt)
        return PromptConditioning(d_prompt, t_prompt, prompt, d_w, t_w, terms)


def build_stem(img_channel: int, width: int, stem: int):
    """(unshuffle, intro, ending, shuffle): with stem s > 1 the network runs at 1/s resolution on
    s*s*C-channel pixel-unshuffled images (every op s*s times cheaper) and shuffles back."""
    if stem == 1:
        return nn.Identity(), nn.Conv2d(img_channel, width, 3, padding=1), \
            nn.Conv2d(width, img_channel, 3, padding=1), nn.Identity()
    c = img_channel * stem * stem
    return (nn.PixelUnshuffle(stem), nn.Conv2d(c, width, 3, padding=1), nn.Conv2d(width, c, 3, padding=1),
            nn.PixelShuffle(stem))


def name_context_blocks(model) -> None:
    """Give every block its context entry name: its module path."""
    for name, mod in model.named_modules():
        if isinstance(mod, BLOCK_TYPES):
            mod.context_key = name


def block_context_layout(model) -> list[tuple[str, int]]:
    """(name, channels) of every block's channel-attention mean, shallow to deep, then decoders."""
    return [(mod.context_key, mod.sca.in_channels) for mod in model.modules()
            if isinstance(mod, BLOCK_TYPES) and mod.sca is not None]


def _known_zero(n) -> bool:
    return isinstance(n, int) and n == 0


def _variance_preserving_init(mod):
    # Without LayerNorm, torch's default conv init (std 1/sqrt(3 fan_in)) shrinks the signal at
    # every conv and the SimpleGate products square that loss; std 1/sqrt(fan_in) keeps it O(1).
    if isinstance(mod, nn.Conv2d):
        fan_in = mod.weight[0].numel()
        nn.init.normal_(mod.weight, std=fan_in ** -0.5)
        if mod.bias is not None:
            nn.init.zeros_(mod.bias)


def _pool_prompt(pool: PromptPool, route: Routing | None, override, kind: str, batch):
    """(prompt, dense weights) of one pool under an optional override."""
    spec = None if override is None else getattr(override, "domain" if kind == "domain" else "task")
    auto = None if route is None else route.dense(pool.pool_size)
    if spec is None:
        if route is None:  # unreachable through the public API (checked by the caller)
            raise ConfigError(f"no input and no {kind} override: nothing decides the {kind} prompt")
        return pool.compose(route), auto
    forced = override_weights(spec, pool.pool_size, batch, kind).to(pool.prompt_values)
    blend = float(override.blend)
    weights = forced if auto is None or blend == 1.0 else (1.0 - blend) * auto + blend * forced
    return pool.compose_dense(weights), weights


def _check_options(img_channel, width, enc, dec, middle, *pools, stem=1, block="gated"):
    def positive_int(v, name, minimum=1):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"EdgeDATPRL option {name} must be an integer >= {minimum}, got {v!r}")

    positive_int(img_channel, "img_channel")
    positive_int(width, "width", 2)
    if width % 2:
        raise ConfigError(f"EdgeDATPRL width must be even, got {width}")
    positive_int(middle, "middle_blk_num", 0)
    if block not in BLOCKS:
        raise ConfigError(f"EdgeDATPRL option block must be one of {', '.join(map(repr, BLOCKS))}, "
                          f"got {block!r}")
    if stem not in (1, 2, 4):
        raise ConfigError(f"EdgeDATPRL option stem must be 1 (full resolution), 2 or 4 (pixel-unshuffled "
                          f"input), got {stem!r}")
    for name, nums in (("enc_blk_nums", enc), ("dec_blk_nums", dec)):
        if not isinstance(nums, (list, tuple)) or not 1 <= len(nums) <= 5:
            raise ConfigError(f"EdgeDATPRL option {name} must be a list of 1..5 block counts, got {nums!r}")
        for n in nums:
            positive_int(n, name, 0)
    if len(enc) != len(dec):
        raise ConfigError(f"enc_blk_nums and dec_blk_nums need the same number of levels, got {len(enc)} "
                          f"and {len(dec)}")
    for size, k, kind in pools:
        positive_int(size, f"{kind}_pool_size")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
            raise ConfigError(f"{kind}_top_k must be in 1..{kind}_pool_size ({size}), got {k!r}")


@register_arch("EdgeDATPRL")
def build_edge_datprl(**options) -> EdgeDATPRL:
    return EdgeDATPRL(**options)


_SIZES = {
    "edge-xs": (dict(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1], ffn_expand=1,
                     domain_prompt_dim=32, degradation_prompt_dim=32),
                "edge student XS: 0.30 M params, 0.88 GMAC at 256x256"),
    "edge-s": (dict(width=24, enc_blk_nums=[1, 1, 2], middle_blk_num=2, dec_blk_nums=[1, 1, 1],
                    domain_prompt_dim=48, degradation_prompt_dim=48),
               "edge student S: 1.12 M params, 2.75 GMAC at 256x256"),
    "edge-m": (dict(width=32, enc_blk_nums=[1, 1, 2], middle_blk_num=2, dec_blk_nums=[1, 1, 2],
                    domain_prompt_dim=64, degradation_prompt_dim=64),
               "edge student M: 2.12 M params, 5.22 GMAC at 256x256"),
    # latency first: edge-xs's blocks at half resolution (pixel-unshuffled input), every op 4x cheaper
    "edge-lat": (dict(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1],
                      ffn_expand=1, domain_prompt_dim=32, degradation_prompt_dim=32, stem=2),
                 "edge student, latency first: 0.30 M params, 0.26 GMAC at 256x256"),
    # INT8 first: edge-lat's U-Net and prompts with dense conv blocks, which int8 kernels run fastest
    "edge-q8": (dict(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1],
                     domain_prompt_dim=32, degradation_prompt_dim=32, stem=2, block="dense"),
                "edge student, INT8 first (dense conv blocks): 0.68 M params, 0.70 GMAC at 256x256"),
}

for _name, (_opts, _desc) in _SIZES.items():
    register_model(_name, "EdgeDATPRL", _opts, _desc, role="student")


def with_stem(student: EdgeDATPRL, stem: int) -> EdgeDATPRL:
    """A copy of a full-resolution student (stem 1) that runs at 1/stem resolution: every block keeps
    its weights, the intro conv reads the mean of each stem x stem pixel block and the ending conv
    writes its residual to every pixel of the block. Exactly, out(x) = x + up(s(a) - a) for
    a = avgpool(x), s the student and up nearest upsampling (sizes a multiple of the pad): a
    distillation start that already restores at the coarser scale. Activation bounds are dropped."""
    options = dict(student.datprl_config["options"])
    if options.get("stem", 1) != 1:
        raise ConfigError(f"with_stem takes a full-resolution student (stem 1), got stem {options['stem']}")
    options.pop("act_bounds", None)
    out = EdgeDATPRL(**{**options, "stem": stem})
    state = {k: v.clone() for k, v in student.state_dict().items() if k in out.state_dict()}
    phases = stem * stem  # PixelUnshuffle puts channel c, phase p at c * phases + p
    state["intro.weight"] = student.intro.weight.detach().repeat_interleave(phases, dim=1) / phases
    state["ending.weight"] = student.ending.weight.detach().repeat_interleave(phases, dim=0)
    state["ending.bias"] = student.ending.bias.detach().repeat_interleave(phases, dim=0)
    out.load_state_dict(state, strict=True)
    out.datprl_config = {"arch": "EdgeDATPRL", "options": {**options, "stem": stem}}
    return out.eval()
