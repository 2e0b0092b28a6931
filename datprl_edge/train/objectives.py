"""What a training step computes: the trainable net (model + distillation adapters) and its loss."""

from __future__ import annotations

import copy

import torch
from torch import nn

from datprl_edge.core.errors import ConfigError
from datprl_edge.models.student_blocks import PromptOverride
from datprl_edge.train import losses as L
from datprl_edge.train.config import DistillConfig, TrainConfig


def explicit_override(model: nn.Module, prompt_ids: torch.Tensor) -> PromptOverride:
    """Explicit (task-id) prompts: one-hot pool weights from (B, 2) [domain index, task index]."""
    if not supports_override(model):
        raise ConfigError(f"{type(model).__name__} has no prompt override; explicit prompts need a model "
                          "whose forward takes override= (the edge students); use adaptive prompts")
    d_n = model.domain_prompt_pool.pool_size
    t_n = model.degradation_prompt_pool.pool_size
    if int(prompt_ids[:, 0].max()) >= d_n or int(prompt_ids[:, 1].max()) >= t_n:
        raise ConfigError(f"explicit prompts need one pool entry per domain and per task, but the pools hold "
                          f"{d_n} and {t_n}; use adaptive prompts or larger pools")
    eye_d = torch.eye(d_n, device=prompt_ids.device)
    eye_t = torch.eye(t_n, device=prompt_ids.device)
    return PromptOverride(domain=eye_d[prompt_ids[:, 0]], task=eye_t[prompt_ids[:, 1]], blend=1.0)


def supports_override(model: nn.Module) -> bool:
    import inspect

    return "override" in inspect.signature(model.forward).parameters


class TrainNet(nn.Module):
    """The module DDP wraps: the restoration model plus (for distillation) feature adapters.

    forward(lq, prompt_ids) -> (out, aux) with aux["routing"] (pool -> logits) and aux["adapted"]
    (student feature name -> adapted feature) when they are needed.
    """

    def __init__(self, model: nn.Module, adapters: L.FeatureAdapters | None = None, need_aux: bool = False):
        super().__init__()
        self.model = model
        self.adapters = adapters
        self.need_aux = need_aux or adapters is not None

    def forward(self, lq, prompt_ids=None):
        override = None if prompt_ids is None else explicit_override(self.model, prompt_ids)
        if not self.need_aux:
            return (self.model(lq) if override is None else self.model(lq, override=override)), {}
        out, aux = self.model.forward_with_aux(lq, override)
        extra = {"routing": {p: aux["routing"][p].logits for p in L.POOLS}}
        if self.adapters is not None:
            extra["adapted"] = self.adapters(aux["features"])
        return out, extra


class RestorationObjective:
    """Plain supervised training (the teacher): L1 + fft_weight * FFT against the ground truth."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        self.model = model
        self.net = TrainNet(model)
        self.config = config
        self.find_unused = config.prompt_mode == "explicit"
        if config.prompt_mode == "explicit" and not supports_override(model):
            raise ConfigError(f"{type(model).__name__} has no prompt override, so it cannot train with "
                              "explicit prompts; use --prompts adaptive")

    def prepare(self, env, data, run_dir):
        pass

    def loss(self, out, aux, batch):
        loss = L.restoration_loss(out, batch["gt"], self.config.fft_weight)
        return loss, {"gt": loss.detach()}


class DistillObjective:
    """Student training with ground truth, output, feature and routing distillation."""

    def __init__(self, teacher: nn.Module | None, student: nn.Module, config: DistillConfig, crop: int):
        self.config = config
        self.model = student
        self.teacher = None
        self.pairs: list = []
        adapters = None
        if config.uses_teacher:
            if teacher is None:
                raise ConfigError("distillation weights are set but no teacher was given; pass --teacher or "
                                  "--no-kd")
            self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
            if config.feature_weight > 0:
                s_shapes, t_shapes = _feature_shapes(student, crop), _feature_shapes(self.teacher, crop)
                self.pairs = L.match_features(s_shapes, t_shapes)
                if not self.pairs:
                    raise ConfigError("no student feature matches a teacher feature in size; set feature "
                                      "weight 0")
                adapters = L.FeatureAdapters(self.pairs, s_shapes, t_shapes)
        self.net = TrainNet(student, adapters, need_aux=config.routing_weight > 0)
        self.find_unused = config.prompt_mode == "explicit"
        self.cache = None

    def prepare(self, env, data, run_dir):
        if self.teacher is None:
            return
        self.teacher.to(env.device)
        mode = self.config.teacher_cache
        if data.on_the_fly:
            if mode == "on":
                raise ConfigError("the teacher cache needs a fixed pool of pairs (--pairs N); with "
                                  "on-the-fly pairs use --teacher-cache off")
        elif mode == "on" or (mode == "auto" and env.device.type == "cpu"):
            from datprl_edge.train.teacher_cache import TeacherCache

            root = getattr(self, "cache_dir", None) or (run_dir / "teacher_cache" if run_dir else None)
            if root is None:
                raise ConfigError("the teacher-output cache needs a run folder or a cache folder")
            names = sorted({t for _, t in self.pairs})
            self.cache = TeacherCache.prepare(root, self.teacher, data, names, env,
                                              progress=self.config.progress)

    def worker_targets(self, env):
        """On CPU with batch workers and no cache, the teacher runs in the workers, beside the pair
        makers, instead of in the step: a function lq -> targets, or None."""
        if self.teacher is None or self.cache is not None or env.device.type != "cpu":
            return None
        if not self.config.workers:
            return None
        teacher, names = self.teacher, {t for _, t in self.pairs}
        # bf16 (oneDNN, AVX512-BF16/AMX) halves the teacher's forward time on CPU; its outputs
        # differ from float32 by ~1e-7 MSE, far below the teacher's own error (~1e-2)
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

        def targets(lq):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out, aux = teacher.forward_with_aux(lq)
            return {"output": out.float(), "routing": {p: aux["routing"][p].logits.float() for p in L.POOLS},
                    "features": {k: v.float() for k, v in aux["features"].items() if k in names}}

        return targets

    def teacher_targets(self, batch) -> dict:
        if "teacher" in batch:
            return batch["teacher"]
        if self.cache is not None:
            return self.cache.lookup(batch["items"], batch["lq"].device)
        with torch.no_grad():
            out, aux = self.teacher.forward_with_aux(batch["lq"])
        names = {t for _, t in self.pairs}
        return {"output": out, "routing": {p: aux["routing"][p].logits for p in L.POOLS},
                "features": {k: v for k, v in aux["features"].items() if k in names}}

    def loss(self, out, aux, batch):
        c = self.config
        parts = {}
        total = 0.0
        if c.gt_weight > 0:
            parts["gt"] = L.restoration_loss(out, batch["gt"], c.fft_weight)
            total = total + c.gt_weight * parts["gt"]
        if self.teacher is not None:
            t = self.teacher_targets(batch)
            if c.output_weight > 0:
                parts["kd_out"] = L.output_distill_loss(out, t["output"], c.fft_weight)
                total = total + c.output_weight * parts["kd_out"]
            if c.feature_weight > 0:
                parts["kd_feat"] = L.feature_distill_loss(aux["adapted"], t["features"], self.pairs)
                total = total + c.feature_weight * parts["kd_feat"]
            if c.routing_weight > 0:
                parts["kd_route"] = L.routing_distill_loss(aux["routing"], t["routing"],
                                                           c.routing_temperature)
                total = total + c.routing_weight * parts["kd_route"]
        return total, {k: v.detach() for k, v in parts.items()}


@torch.no_grad()
def _feature_shapes(model: nn.Module, crop: int) -> dict:
    """(C, H, W) of every feature `forward_with_aux` reports, probed on one crop x crop input."""
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        _, aux = model.forward_with_aux(torch.zeros(1, 3, crop, crop, device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
    return {k: tuple(v.shape[1:]) for k, v in aux["features"].items()}
