"""Folded edge students, registered so that `load_model` rebuilds them from a saved checkpoint.

- `EdgeDATPRLStatic`: the student backbone with each prompted block's FiLM baked into that block's
  conv1 for a fixed prompt. No mappers, pools, top-k or gather: a plain conv net. Options are the
  student's plus `tasks` (the task ids the prompt was fixed for).
- `EdgeDATPRLDynamic`: the student with input-adaptive routing kept and only exact
  simplifications (pre-normalised temperature-scaled keys, value Linear folded into the values,
  FiLM gates folded into the FiLM Linear). Same options as the student.
"""

from __future__ import annotations

import torch
from torch import nn

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.bounds import bounded_layers, set_act_bounds
from datprl_edge.models.context import check_context
from datprl_edge.models.folded_prompt import FoldedFiLM, FoldedPromptPool, assign, conv1x1_matrix
from datprl_edge.models.registry import register_arch
from datprl_edge.models.student import (
    EdgeDATPRL,
    _check_options,
    block_context_layout,
    build_stem,
    name_context_blocks,
)
from datprl_edge.models.student_blocks import BLOCK_TYPES, BLOCKS

STATIC_ARCH = "EdgeDATPRLStatic"
DYNAMIC_ARCH = "EdgeDATPRLDynamic"
_PROMPT_OPTIONS = ("domain_pool_size", "degradation_pool_size", "domain_prompt_dim", "degradation_prompt_dim",
                   "domain_top_k", "degradation_top_k", "value_num_tokens")


class EdgeDATPRLStatic(nn.Module):
    """The edge student for fixed task prompt(s): same backbone and state-dict names, no prompt path."""

    accepts_act_bounds = True

    def __init__(self, img_channel=3, width=16, enc_blk_nums=(1, 1, 1), middle_blk_num=1,
                 dec_blk_nums=(1, 1, 1), dw_expand=2, ffn_expand=2, use_sca=True, layer_scale_init=0.1,
                 tasks=(), stem=1, block="gated", act_bounds=None, **prompt_options):
        super().__init__()
        unknown = sorted(set(prompt_options) - set(_PROMPT_OPTIONS))
        if unknown:
            raise ConfigError(f"{STATIC_ARCH} has no option {unknown[0]!r}")
        _check_options(img_channel, width, enc_blk_nums, dec_blk_nums, middle_blk_num, stem=stem, block=block)
        Block = BLOCKS[block]
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise ConfigError(f"{STATIC_ARCH} option tasks must be a list of task ids, got {tasks!r}")
        self.tasks = tuple(tasks)
        levels = len(enc_blk_nums)
        self.img_channel = img_channel
        self.pad_multiple = stem * 2 ** levels
        blk = dict(dw_expand=dw_expand, ffn_expand=ffn_expand, use_sca=use_sca,
                   layer_scale_init=layer_scale_init)
        chans = [width * 2 ** i for i in range(levels + 1)]
        self.unshuffle, self.intro, ending, shuffle = build_stem(img_channel, width, stem)
        self.encoders = nn.ModuleList(nn.Sequential(*[Block(chans[i], **blk) for _ in range(n)])
                                      for i, n in enumerate(enc_blk_nums))
        self.downs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 2, stride=2) for i in range(levels))
        self.middle_blks = nn.ModuleList(Block(chans[-1], **blk) for _ in range(middle_blk_num))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i + 1], chans[i] * 4, 1, bias=False), nn.PixelShuffle(2))
            for i in range(levels))
        self.decoders = nn.ModuleList(nn.ModuleList(Block(chans[i], **blk) for _ in range(n))
                                      for i, n in enumerate(dec_blk_nums))
        self.ending, self.shuffle = ending, shuffle  # registered last: module order as before stems
        name_context_blocks(self)
        if act_bounds is not None:  # the student's, less the prompt path's convs this model lacks
            layers = bounded_layers(self)
            set_act_bounds(self, {k: v for k, v in act_bounds.items() if k in layers})

    # The student's padding (trace-aware), encoder and decoder, shared as plain functions.
    _pad = EdgeDATPRL._pad
    _encode = EdgeDATPRL._encode
    _decode = EdgeDATPRL._decode

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mix: torch.Tensor | None = None):
        """The restored batch; with `context` and `context_mix`, (restored, own context)."""
        ctx = check_context(self, x, context, context_mix)
        out = self._run(x, ctx)[0]
        return out if ctx is None else (out, ctx.output())

    def context_layout(self) -> list[tuple[str, int]]:
        """The context entries (name, size): each block's channel-attention mean (no routing)."""
        return block_context_layout(self)

    def forward_with_aux(self, x: torch.Tensor):
        """(output, aux) with aux["features"] as the student's (dec1..decL, latent); no routing."""
        return self._run(x)

    def _run(self, x, ctx=None):
        h_in, w_in = x.shape[2], x.shape[3]
        if torch.jit.is_tracing():
            h_in, w_in = int(h_in), int(w_in)
        xp = self._pad(x)
        _, skips, h = self._encode(xp, ctx)
        out, feats = self._decode(None, h, skips, xp, x, h_in, w_in, ctx)
        return out, {"features": feats, "routing": {}, "tasks": list(self.tasks)}


class EdgeDATPRLDynamic(EdgeDATPRL):
    """`EdgeDATPRL` (same forward, routing and override API) with folded pools and FiLM."""

    def __init__(self, **options):
        super().__init__(**options)
        self.domain_prompt_pool = _folded_pool_like(self.domain_prompt_pool)
        self.degradation_prompt_pool = _folded_pool_like(self.degradation_prompt_pool)
        for blk in prompted_blocks(self).values():
            lin = blk.film.prompt_film
            blk.film = FoldedFiLM(lin.in_features, lin.out_features // 2)


def _folded_pool_like(pool) -> FoldedPromptPool:
    return FoldedPromptPool(pool.pool_size, pool.prompt_dim, pool.num_tokens, pool.top_k)


def prompted_blocks(model) -> dict:
    """Module path -> block for every block with a FiLM (the ones a fold changes)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BLOCK_TYPES) and m.film is not None}


def static_from_student(student: EdgeDATPRL, options: dict, films: dict, tasks) -> EdgeDATPRLStatic:
    """Bake per-block (mul, add) FiLM terms of one prompt (each (1, C)) into conv1.

    conv1(x * mul + add) = (W * mul) x + (W @ add + b): a per-input-channel scale of the weight
    columns and a bias shift.
    """
    static = EdgeDATPRLStatic(**options, tasks=list(tasks))
    src = student.state_dict()
    static.load_state_dict({k: src[k] for k in static.state_dict()}, strict=True)
    blocks = prompted_blocks(student)
    if sorted(blocks) != sorted(films):
        raise ConfigError("the FiLM terms do not match the student's prompted blocks")
    for name, terms in films.items():
        fold_film_into_conv(static.get_submodule(name).conv1, terms.mul, terms.add)
    return static.eval()


def fold_film_into_conv(conv: nn.Conv2d, mul: torch.Tensor, add: torch.Tensor) -> None:
    """In place on `conv` (a fresh copy): absorb x -> x * mul + add applied to its input."""
    w, b = conv1x1_matrix(conv)
    mul, add = mul.detach().double().reshape(-1), add.detach().double().reshape(-1)
    assign(conv.weight, w * mul[None, :])
    assign(conv.bias, w @ add + b)


def dynamic_from_student(student: EdgeDATPRL, options: dict) -> EdgeDATPRLDynamic:
    dyn = EdgeDATPRLDynamic(**options)
    dyn.domain_prompt_pool = FoldedPromptPool.from_pool(student.domain_prompt_pool)
    dyn.degradation_prompt_pool = FoldedPromptPool.from_pool(student.degradation_prompt_pool)
    folded = {"domain_prompt_pool", "degradation_prompt_pool"}
    for name, blk in prompted_blocks(student).items():
        dyn.get_submodule(name).film = FoldedFiLM.from_film(blk.film)
        folded.add(f"{name}.film")
    src = student.state_dict()
    rest = {k: src[k] for k in dyn.state_dict() if not any(k.startswith(p + ".") for p in folded)}
    missing, unexpected = dyn.load_state_dict(rest, strict=False)
    if unexpected or any(not any(k.startswith(p + ".") for p in folded) for k in missing):
        raise ConfigError("dynamic fold: the student's state dict does not match its options")
    return dyn.eval()


@register_arch(STATIC_ARCH)
def build_static(**options) -> EdgeDATPRLStatic:
    return EdgeDATPRLStatic(**options)


@register_arch(DYNAMIC_ARCH)
def build_dynamic(**options) -> EdgeDATPRLDynamic:
    return EdgeDATPRLDynamic(**options)
