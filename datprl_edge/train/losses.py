"""Losses: the paper's L1 + FFT restoration loss and the three distillation terms.

- output distillation: the restoration loss (L1 + fft_weight * FFT) with the teacher's output as the
  target, so that it weighs like the ground-truth term (the FFT term dominates both);
- feature distillation: 1x1-conv adapters map student features onto the teacher's at the same
  spatial scale; relative MSE (normalised by the teacher feature's mean square, so that levels
  of different magnitude weigh alike);
- routing distillation: KL(teacher || student) between the softmax of the two pools' routing
  logits (the prompt-selection distribution), per pool, times T^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datprl_edge.core.errors import ConfigError

POOLS = ("domain", "degradation")


def fft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance between the 2-D real FFTs (real and imaginary parts), computed in float32."""
    fp = torch.fft.rfft2(pred.float(), norm="backward")
    ft = torch.fft.rfft2(target.float(), norm="backward")
    return (torch.view_as_real(fp) - torch.view_as_real(ft)).abs().mean()


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, fft_weight: float = 0.1) -> torch.Tensor:
    """L1 + fft_weight * FFT loss (the paper uses 0.1)."""
    loss = F.l1_loss(pred.float(), target.float())
    if fft_weight:
        loss = loss + fft_weight * fft_loss(pred, target)
    return loss


def output_distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, fft_weight: float = 0.1):
    """L1 + fft_weight * FFT loss towards the teacher's output (no gradient into the teacher)."""
    return restoration_loss(student_out, teacher_out.detach(), fft_weight)


def routing_distill_loss(student_routing: dict, teacher_logits: dict, temperature: float = 1.0):
    """Mean over the two pools of KL(softmax(t/T) || softmax(s/T)) * T^2.

    `student_routing` maps pool name -> `Routing` (or logits); `teacher_logits` pool name -> (B, N).
    """
    total = 0.0
    for pool in POOLS:
        s = student_routing[pool]
        s = getattr(s, "logits", s).float()
        t = teacher_logits[pool].float().detach()
        if s.shape != t.shape:
            raise ConfigError(f"routing distillation needs pools of the same size: the student's {pool} pool "
                              f"gives {tuple(s.shape)}, the teacher's {tuple(t.shape)}; set routing weight 0")
        log_s = F.log_softmax(s / temperature, dim=1)
        log_t = F.log_softmax(t / temperature, dim=1)
        total = total + F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2
    return total / len(POOLS)


def match_features(student_shapes: dict, teacher_shapes: dict) -> list[tuple[str, str]]:
    """Pair each student feature with the teacher feature at the same spatial size.

    Shapes are (C, H, W). Same-named features win; otherwise the teacher's last feature of that size
    (the deepest processing at that scale). Student features with no teacher match are skipped.
    """
    pairs = []
    for s_name, s_shape in student_shapes.items():
        same = [t for t, shp in teacher_shapes.items() if tuple(shp[-2:]) == tuple(s_shape[-2:])]
        if not same:
            continue
        pairs.append((s_name, s_name if s_name in same else same[-1]))
    return pairs


class FeatureAdapters(nn.Module):
    """1x1 convs from student to teacher channels, one per matched scale (discarded after training)."""

    def __init__(self, pairs, student_shapes: dict, teacher_shapes: dict):
        super().__init__()
        self.pairs = list(pairs)
        self.convs = nn.ModuleDict({
            s: nn.Conv2d(student_shapes[s][0], teacher_shapes[t][0], 1) for s, t in self.pairs})

    def forward(self, student_feats: dict) -> dict:
        return {s: self.convs[s](student_feats[s]) for s, _ in self.pairs}


def feature_distill_loss(adapted: dict, teacher_feats: dict, pairs) -> torch.Tensor:
    """Mean over matched scales of MSE(adapted student, teacher) / mean(teacher^2)."""
    if not pairs:
        raise ConfigError("feature distillation found no student/teacher features at the same scale; "
                          "set the feature weight to 0")
    total = 0.0
    for s, t in pairs:
        tf = teacher_feats[t].float().detach()
        total = total + F.mse_loss(adapted[s].float(), tf) / (tf.pow(2).mean() + 1e-6)
    return total / len(pairs)
