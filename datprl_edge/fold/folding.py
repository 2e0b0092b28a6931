"""Prompt folding: bake fixed task prompts into static weights, or simplify exactly and keep routing.

- `fold_static(model, config)`: for each task, the student's pool weights are averaged over that
  task's calibration images (or taken from an explicit `PromptOverride`) and the resulting FiLM
  terms are baked into each prompted block's conv1 (`EdgeDATPRLStatic`: no pools, mappers, top-k
  or gather). Pool weights, not composed prompts, are averaged: the average is itself a valid
  `PromptOverride` (a convex mix of pool entries), so the unfolded model reproduces the folded one
  exactly through its public override API (that is what verification compares against, and what
  the checkpoint records), and the composed prompt stays one the pool's LayerNorm/GELU can emit.
  `benchmarks/fold_savings.py` compares both averages on held-out images, and one model per task
  with a task switch (latency in torch and onnxruntime).
- `fold_dynamic(model, config)`: exact simplifications only, routing kept (students and teachers).

Both verify before returning: PSNR(folded, unfolded) >= `min_psnr_db` on the images, else
`VerificationError` with the measured figure. Both measure MACs and torch latency before/after.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

from datprl_edge.core.errors import ConfigError, VerificationError
from datprl_edge.fold.support import compare_outputs, json_db, load_fold_images, measure
from datprl_edge.models.student_blocks import PromptOverride

MODES = ("static", "dynamic")
STATIC_SIMPLIFICATIONS = (
    "prompt fixed per task: FiLM terms baked into each prompted block's conv1 (weight columns scaled, "
    "bias shifted)",
    "query mappers, prompt pools, top-k and gather removed",
)


@dataclasses.dataclass(frozen=True)
class FoldConfig:
    """`task`: task id(s) for a static fold. `override`: an explicit prompt (both pools forced,
    blend 1) instead of the calibration average (one task only). `calibration`: recipe name/path or
    a built calibration-set folder. `images`/`crop`: images per task and their size (None: the
    recipe's count and crop for static; 1 image of 128 px per recipe task for dynamic).
    `shape`: input of the MAC count and latency. `latency_iters` 0 skips timing."""

    task: object = None
    override: PromptOverride | None = None
    calibration: str = "all"
    images: int | None = None
    crop: int | None = None
    min_psnr_db: float = 60.0
    shape: tuple = (1, 3, 256, 256)
    latency_iters: int = 10
    latency_warmup: int = 2
    threads: int | None = None
    batch_size: int = 4

    def __post_init__(self):
        tasks = () if self.task is None else (self.task,) if isinstance(self.task, str) else tuple(self.task)
        if not all(isinstance(t, str) and t.strip() for t in tasks):
            raise ConfigError(f"task must be a task id or a list of task ids, got {self.task!r}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"a task is listed twice: {', '.join(tasks)}")
        object.__setattr__(self, "task", tasks)
        if self.override is not None:
            if not isinstance(self.override, PromptOverride) or not self.override.forces_all:
                raise ConfigError("a fold override must force both the domain and the task prompt with "
                                  "blend 1 (e.g. PromptOverride(domain=2, task=5))")
            if len(tasks) != 1:
                raise ConfigError("an explicit prompt override folds one task: give exactly one --task")
        for name, lo in (("images", 1), ("crop", 8)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ConfigError(f"fold {name} must be an integer >= {lo}, got {v!r}")
        if isinstance(self.min_psnr_db, bool) or not isinstance(self.min_psnr_db, (int, float)) \
                or math.isnan(self.min_psnr_db):
            raise ConfigError(f"min_psnr_db must be a number of dB, got {self.min_psnr_db!r}")
        for name, lo in (("latency_iters", 0), ("latency_warmup", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"fold {name} must be an integer >= {lo}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise ConfigError(f"shape must be (batch, channels, height, width), got {self.shape!r}") from None
        if len(shape) != 4 or min(shape) < 1:
            raise ConfigError(f"shape must be (batch, channels, height, width), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def tasks(self) -> tuple:
        return self.task


@dataclasses.dataclass
class FoldResult:
    mode: str
    models: dict  # task id -> folded module (static); {"": module} (dynamic)
    arch: str  # the folded architecture
    options: dict
    base_arch: str
    base_options: dict
    name: str
    prompts: dict  # task -> how its prompt was fixed (static)
    verification: dict  # task (or "all") -> PSNR / max abs diff / images
    complexity: dict  # {"shape", "before": {...}, "after": {task or "": {...}}}
    simplifications: list

    @property
    def tasks(self) -> tuple:
        return tuple(t for t in self.models if t)

    @property
    def model(self):
        """The folded module (a static fold of several tasks has one per task: use `models`)."""
        if len(self.models) != 1:
            raise ConfigError(f"this fold holds {len(self.models)} models (one per task); use .models[task]")
        return next(iter(self.models.values()))

    def extra(self, task: str = "") -> dict:
        """What the saved checkpoint of `task` (static) or of the model (dynamic) records."""
        c = self.complexity
        after = c["after"][task]
        out = {"mode": self.mode, "tasks": [task] if task else [], "base_arch": self.base_arch,
               "base_options": self.base_options, "base_name": self.name,
               "simplifications": list(self.simplifications),
               "verification": self.verification[task or "all"],
               "shape": list(c["shape"]), "macs_before": c["before"]["macs"], "macs_after": after["macs"],
               "latency_before_ms": c["before"]["latency_ms"], "latency_after_ms": after["latency_ms"],
               "latency": {"before": c["before"]["latency"], "after": after["latency"]}}
        if task:
            out["prompt"] = self.prompts[task]
        return _jsonable(out)


def fold_static(model, config: FoldConfig, images=None, log: Callable | None = None) -> FoldResult:
    """Fold `config.tasks` into static weights (one `EdgeDATPRLStatic` per task). The input model
    is not modified. `images`: {task: (N, C, H, W) tensor} instead of the calibration images."""
    from datprl_edge.models.folded import static_from_student

    log = log or (lambda _msg: None)
    src, base_arch, base_options, name = _source(model, "static")
    if not config.tasks:
        raise ConfigError("a static fold needs at least one task (--task ID)")
    from datprl_edge.data.tasks import get_task

    for task in config.tasks:
        get_task(task)  # unknown ids fail here, with a "did you mean"
    imgs = _task_images(config, images, src, config.tasks)
    before = measure(src, config)
    log(_line("before", before))
    models, prompts, checks, after = {}, {}, {}, {}
    for task in config.tasks:
        x = imgs[task]
        override, prompts[task] = _task_prompt(src, config, task, x)
        films = src.conditioning(None, override).films
        folded = static_from_student(src, base_options, films, [task])
        folded.datprl_config = {"arch": "EdgeDATPRLStatic", "options": {**base_options, "tasks": [task]},
                                "name": name}
        check = compare_outputs(lambda b, o=override: src(b, override=o), folded, x, config.batch_size)
        auto = compare_outputs(src, folded, x, config.batch_size)
        check["psnr_vs_auto_db"] = auto["psnr_db"]
        check["psnr_vs_auto_mean_db"] = auto["psnr_mean_db"]
        _gate(check, config, f"static fold of {task}", "the unfolded model with the same fixed prompt")
        checks[task] = check
        models[task] = folded
        after[task] = measure(folded, config)
        log(f"{task}: verified {check['psnr_db']:.1f} dB; " + _line("after", after[task]))
    return FoldResult("static", models, "EdgeDATPRLStatic", {**base_options, "tasks": list(config.tasks)},
                      base_arch, base_options, name, prompts, checks,
                      {"shape": list(config.shape), "before": before, "after": after},
                      list(STATIC_SIMPLIFICATIONS))


def fold_dynamic(model, config: FoldConfig, images=None, log: Callable | None = None) -> FoldResult:
    """Exact simplifications that keep input-adaptive routing; works on the student and on the
    DATPRL-IR teachers. `images`: an (N, C, H, W) tensor instead of the calibration images."""
    from datprl_edge.models.folded import DYNAMIC_ARCH, EdgeDATPRL, dynamic_from_student
    from datprl_edge.models.folded_teacher import NAFNET_DYNAMIC, RESTORMER_DYNAMIC, dynamic_from_teacher
    from datprl_edge.models.nafnet import DualPromptNAFNetv3

    log = log or (lambda _msg: None)
    src, base_arch, base_options, name = _source(model, "dynamic")
    if isinstance(src, EdgeDATPRL):
        folded, arch, simplified = dynamic_from_student(src, base_options), DYNAMIC_ARCH, _student_steps()
    else:
        folded = dynamic_from_teacher(src, base_options)
        arch = NAFNET_DYNAMIC if isinstance(src, DualPromptNAFNetv3) else RESTORMER_DYNAMIC
        simplified = _teacher_steps(src)
    folded.datprl_config = {"arch": arch, "options": dict(base_options), "name": name}
    if images is None:  # {task: batch}: a calibration set may hold different sizes per task
        x = _task_images(config, None, src, config.tasks or None, dynamic=True)
    else:
        x = _as_batch(images, src)
    before = measure(src, config)
    log(_line("before", before))
    check = compare_outputs(src, folded, x, config.batch_size)
    _gate(check, config, "dynamic fold", "the unfolded model")
    after = measure(folded, config)
    log(f"verified {check['psnr_db']:.1f} dB; " + _line("after", after))
    return FoldResult("dynamic", {"": folded}, arch, dict(base_options), base_arch, base_options, name, {},
                      {"all": check}, {"shape": list(config.shape), "before": before, "after": {"": after}},
                      simplified)


def save_fold(result: FoldResult, out, *, provenance: dict | None = None, overwrite: bool = False,
              protect=()) -> list:
    """Write the folded checkpoint(s) atomically (stage "folded"); returns the paths written.

    One task (or a dynamic fold): `out` is a .safetensors file. Several tasks: `out` is a folder
    holding `<domain>__<task>.safetensors` per task, written in one step."""
    from pathlib import Path

    from datprl_edge.core.errors import OutputExistsError
    from datprl_edge.io.atomic import atomic_dir, check_not_input
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint

    out = Path(out)
    check_not_input(out, protect)
    prov = {"command": f"fold --mode {result.mode}", **(provenance or {})}

    def config_for(task):
        options = {**result.base_options, "tasks": [task]} if task else dict(result.options)
        return CheckpointConfig(result.arch, options, "folded", prov, result.extra(task))

    if len(result.models) == 1:
        if out.suffix.lower() != ".safetensors":
            raise ConfigError(f"the folded checkpoint is a .safetensors file, got {out.name}")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite or choose another output")
        (task, module), = result.models.items()
        save_checkpoint(out, module.state_dict(), config_for(task))
        return [out]
    if out.suffix:
        raise ConfigError(f"{len(result.models)} tasks write one checkpoint each: -o names a folder, "
                          f"got {out.name}")
    written = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for task, module in result.models.items():
            fname = task.replace("/", "__") + ".safetensors"
            save_checkpoint(tmp / fname, module.state_dict(), config_for(task))
            written.append(out / fname)
    return written


# -- internals ----------------------------------------------------------------------------------


def _source(model, mode: str):
    """(deep copy in eval mode, base arch, base options, name); refuses what `mode` cannot fold."""
    from datprl_edge.models.folded import EdgeDATPRL, EdgeDATPRLDynamic, EdgeDATPRLStatic
    from datprl_edge.models.folded_teacher import DualPromptNAFNetv3Dynamic, DualPromptRestormerv3Dynamic
    from datprl_edge.models.nafnet import DualPromptNAFNetv3
    from datprl_edge.models.registry import model_config
    from datprl_edge.models.restormer import DualPromptRestormerv3

    kind = type(model).__name__
    if isinstance(model, EdgeDATPRLStatic):
        raise ConfigError(f"this model is already statically folded for {', '.join(model.tasks)}: it has no "
                          "prompt path left to fold")
    if mode == "dynamic" and isinstance(model, (EdgeDATPRLDynamic, DualPromptRestormerv3Dynamic,
                                                DualPromptNAFNetv3Dynamic)):
        raise ConfigError("this model is already dynamically folded")
    if mode == "static" and isinstance(model, (DualPromptRestormerv3, DualPromptNAFNetv3)):
        raise ConfigError(f"static folding needs the edge student's FiLM conditioning; {kind} fuses its "
                          "prompt through LayerNorm-ed attention blocks, so it cannot become plain conv "
                          "weights. Use --mode dynamic for the teacher, or distil a student first")
    if not isinstance(model, (EdgeDATPRL, DualPromptRestormerv3, DualPromptNAFNetv3)):
        raise ConfigError(f"cannot fold a {kind}: folding takes an EdgeDATPRL student or a DATPRL-IR teacher "
                          "(fold before QAT, then quantize the folded checkpoint)")
    if mode == "static" and isinstance(model, EdgeDATPRL) and not _has_prompts(model):
        raise ConfigError("this student has no prompted blocks: there is nothing to fold")
    arch, options = model_config(model)
    name = (getattr(model, "datprl_config", None) or {}).get("name") or arch
    return copy.deepcopy(model).eval(), arch, options, name


def _has_prompts(model) -> bool:
    from datprl_edge.models.folded import prompted_blocks

    return bool(prompted_blocks(model))


def _task_images(config, images, model, tasks, dynamic=False) -> dict:
    if images is None:
        channels = int(getattr(model, "img_channel", 3))
        return load_fold_images(config, tasks, channels, dynamic=dynamic)
    import torch

    if isinstance(images, torch.Tensor):
        if len(tasks) != 1:
            raise ConfigError("several tasks need images per task: pass {task: tensor}")
        images = {tasks[0]: images}
    missing = [t for t in tasks if t not in images]
    if missing:
        raise ConfigError(f"no images given for task {missing[0]}")
    return {t: _as_batch(images[t], model) for t in tasks}


def _as_batch(x, model):
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] < 1:
        raise ConfigError(f"fold images must be an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    return x


def _task_prompt(src, config, task: str, x):
    """(PromptOverride with the fixed pool weights, record of how they were chosen)."""
    import torch

    if config.override is not None:
        cond = src.conditioning(None, config.override)
        dw, tw, how = cond.domain_weights[0], cond.task_weights[0], "explicit override"
    else:
        sums, n = None, 0
        with torch.inference_mode():
            for i in range(0, len(x), config.batch_size):
                cond = src.conditioning(x[i:i + config.batch_size])  # encoder + routing only
                part = (cond.domain_weights.sum(0), cond.task_weights.sum(0))
                sums = part if sums is None else (sums[0] + part[0], sums[1] + part[1])
                n += cond.domain_weights.shape[0]
        dw, tw, how = sums[0] / n, sums[1] / n, "mean pool weights over the task's images"
    override = PromptOverride(domain=dw.clone(), task=tw.clone())
    record = {"source": how, "images": 0 if config.override is not None else int(len(x)),
              "domain_weights": [round(float(v), 6) for v in dw],
              "task_weights": [round(float(v), 6) for v in tw],
              "domain_top": int(dw.argmax()), "task_top": int(tw.argmax())}
    return override, record


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return json_db(v) if v > 0 else str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _gate(check: dict, config: FoldConfig, what: str, against: str) -> None:
    if not check["psnr_db"] >= config.min_psnr_db:
        raise VerificationError(
            f"{what} refused: PSNR {check['psnr_db']:.2f} dB vs {against} is below {config.min_psnr_db:g} dB "
            f"(max abs diff {check['max_abs_diff']:.3g} over {check['images']} images); nothing written")


def _line(when: str, m: dict) -> str:
    ms = "n/a" if m["latency_ms"] is None else f"{m['latency_ms']:.2f} ms"
    return f"{when}: {m['macs'] / 1e9:.4f} GMAC, torch {ms}"


def _student_steps() -> list:
    return ["prompt keys pre-normalised and divided by the clamped temperature",
            "value_aggregation Linear folded into the pool values (composition weights sum to 1)",
            "FiLM gates (softmax of feature/prompt weight) folded into each FiLM Linear",
            "query mapper Linear kept: the cosine normalisation before the keys makes a merge inexact"]


def _teacher_steps(src) -> list:
    cfg = src.prompt_config
    steps = ["channel LayerNorm affines folded into the following 1x1 convs"]
    if cfg is None:
        return steps
    steps += ["prompt keys pre-normalised and divided by the clamped temperature",
              "value_aggregation Linear folded into the pool values (composition weights sum to 1)"]
    if cfg.prompt_fusion_method == "cross_attention":
        steps.append("prompt cross-attention over one key: dead q/k projections removed, out_proj * v_proj "
                     "merged into one Linear")
    steps.append({
        "cross_attention": "block cross-attention over one key: dead per-pixel query/key path removed; "
                           "prompt LayerNorm affine, cross_attn_v, prompt gate and cross_attn_out merged "
                           "into one Linear applied once per image",
        "concat": "block concat fusion: prompt half of the 1x1 fusion conv, prompt_projection and gate "
                  "merged into a per-image bias; feature gate folded into the feature half",
        "adaptive_modulation": "block modulation: both gates folded into the last prompt_mlp Linear",
    }[cfg.fusion_method])
    return steps
