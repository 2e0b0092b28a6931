"""The QAT training loop and its data: distillation crops, validation PSNR, resumable state."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.metrics import batch_psnr, mean_psnr
from datprl_edge.io.atomic import atomic_path
from datprl_edge.models.prompt_pool import recorded_routes
from datprl_edge.quantize.feed import run_image
from datprl_edge.quantize.scope import frozen_observers, set_observers

STATE_FILE = "qat_state.pt"


@dataclasses.dataclass
class Pair:
    lq: torch.Tensor  # (C, H, W) float32 in [0, 1]
    gt: torch.Tensor | None = None
    task: str = ""


def as_pairs(calib, channels: int) -> list[Pair]:
    """Normalise calibration items: arrays/tensors (input only), (lq, gt) or (name, image)
    tuples, dicts with lq/gt (or input/target), or objects with .lq/.gt attributes."""
    if calib is None:
        raise ConfigError("QAT needs calibration images (a recipe such as --calib all)")
    pairs = []
    for item in calib:
        lq, gt, task = _split_item(item)
        lq = _chw(lq, channels)
        gt = None if gt is None else _chw(gt, channels)
        if gt is not None and gt.shape != lq.shape:
            raise ConfigError(f"calibration pair shapes differ: {tuple(lq.shape)} vs {tuple(gt.shape)}")
        pairs.append(Pair(lq, gt, task))
    if not pairs:
        raise ConfigError("the calibration set is empty")
    return pairs


def _split_item(item):
    if isinstance(item, Pair):
        return item.lq, item.gt, item.task
    if isinstance(item, dict):
        lq = next((item[k] for k in ("lq", "input", "image") if k in item), None)
        if lq is None:
            raise ConfigError(f"calibration item has none of lq/input/image: {sorted(item)}")
        return lq, item.get("gt", item.get("target")), str(item.get("task", ""))
    if hasattr(item, "lq"):
        return item.lq, getattr(item, "gt", None), str(getattr(item, "task", ""))
    if isinstance(item, (tuple, list)) and len(item) == 2:
        if isinstance(item[0], str):
            return item[1], None, ""
        return item[0], item[1], ""
    return item, None, ""


def _chw(arr, channels: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ConfigError(f"calibration images must be (H, W, C) or (C, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] not in (1, 3) and t.shape[2] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.shape[0] != channels:
        t = t.mean(0, keepdim=True) if channels == 1 else t[:1].expand(channels, -1, -1)
    if not torch.isfinite(t).all():
        raise ConfigError("calibration images hold NaN or infinite values")
    return t.clamp(0, 1).contiguous()


def random_batch(pairs: list[Pair], batch: int, crop: int, gen: torch.Generator):
    """(lq, gt or None) batches of random aligned crops with random flips."""
    lqs, gts = [], []
    with_gt = all(p.gt is not None for p in pairs)
    for _ in range(batch):
        p = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
        stack = p.lq if not with_gt else torch.cat([p.lq, p.gt])
        stack = _fit(stack, crop)
        top = int(torch.randint(stack.shape[1] - crop + 1, (1,), generator=gen))
        left = int(torch.randint(stack.shape[2] - crop + 1, (1,), generator=gen))
        stack = stack[:, top:top + crop, left:left + crop]
        if torch.rand(1, generator=gen) < 0.5:
            stack = stack.flip(2)
        if torch.rand(1, generator=gen) < 0.5:
            stack = stack.flip(1)
        c = p.lq.shape[0]
        lqs.append(stack[:c])
        gts.append(stack[c:] if with_gt else None)
    return torch.stack(lqs), (torch.stack(gts) if with_gt else None)


def kept_batch(pairs: list[Pair], batch: int, crop: int, gen: torch.Generator, keep=None):
    """(lq, gt or None, how many crops `keep` turned down): `random_batch`, with the crops that `keep`
    (x -> (B,) bool) turns down replaced by later draws (at most 8 more batches, so a batch can come
    out smaller). Without turned-down crops the batch is `random_batch`'s."""
    lq, gt = random_batch(pairs, batch, crop, gen)
    if keep is None:
        return lq, gt, 0
    mask = keep(lq)
    down = int((~mask).sum())
    if not down:
        return lq, gt, 0
    lqs, gts = [lq[mask]], [gt[mask]] if gt is not None else None
    for _ in range(8):
        if sum(len(x) for x in lqs) >= batch:
            break
        x, y = random_batch(pairs, batch, crop, gen)
        m = keep(x)
        down += int((~m).sum())
        lqs.append(x[m])
        if gts is not None:
            gts.append(y[m])
    lq = torch.cat(lqs)[:batch]
    if not len(lq):
        raise ConfigError("every training crop drives the float model far outside its activation bounds "
                          "(models.bounds); train on images of the tasks it was trained for")
    return lq, (torch.cat(gts)[:batch] if gts is not None else None), down


def _fit(t: torch.Tensor, size: int) -> torch.Tensor:
    ph, pw = max(0, size - t.shape[1]), max(0, size - t.shape[2])
    if ph or pw:
        t = F.pad(t[None], (0, pw, 0, ph), mode="replicate")[0]
    return t


def calibration_batches(pairs: list[Pair], count: int, batch: int, crop: int, seed: int, keep=None):
    """(`count` batches of random crops, how many crops `keep` turned down). `keep(x)` -> (B,) bool;
    a crop it turns down is replaced by a later draw (at most `count` more batches are drawn), so a
    batch can come out smaller. Without turned-down crops the batches are those of `keep=None`."""
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [random_batch(pairs, batch, crop, gen)[0] for _ in range(count)]
    if keep is None:
        return batches, 0
    masks = [keep(b) for b in batches]
    skipped = sum(int((~m).sum()) for m in masks)
    spare: list = []
    for _ in range(count if skipped else 0):
        if len(spare) >= skipped:
            break
        extra = random_batch(pairs, batch, crop, gen)[0]
        spare += list(extra[keep(extra)])
    out = []
    for b, m in zip(batches, masks):
        kept = list(b[m])
        while len(kept) < len(b) and spare:
            kept.append(spare.pop(0))
        if kept:
            out.append(torch.stack(kept))
    if not out:
        raise ConfigError("every calibration crop drives the float model far outside its activation bounds "
                          "(models.bounds); calibrate on images of the tasks it was trained for")
    return out, skipped


def run_padded(module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run on x padded (replicate) to a multiple of `multiple`, crop back (PT2E programs need it); the
    image output only (`feed.run_image`)."""
    h, w = x.shape[2], x.shape[3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return run_image(module, x)[:, :, :h, :w]


@torch.no_grad()
def evaluate(module, val: dict, multiple: int, batch: int = 4) -> dict:
    """{task: mean PSNR (dB), `core.metrics.mean_psnr`} of `module` on `val` = {task: (lq, gt)} tensors
    (N, C, H, W), the output clipped to [0, 1]."""
    out = {}
    with frozen_observers(module):
        for task, (lq, gt) in val.items():
            scores = []
            for i in range(0, lq.shape[0], batch):
                pred = run_padded(module, lq[i:i + batch], multiple)
                scores += batch_psnr(gt[i:i + batch].numpy(), pred.numpy(), clip=True)
            out[task] = mean_psnr(scores)
    return out


def drops(reference: dict, quantized: dict) -> dict:
    """Per-task PSNR drop (dB) plus "worst" and "mean"."""
    per = {t: reference[t] - quantized[t] for t in reference}
    return {"tasks": per, "worst": max(per.values()), "mean": float(np.mean(list(per.values())))}


def train(prepared, ref_model, pairs, cfg, *, log=None, state_dir=None, frozen=(), select=None,
          keep=None) -> dict:
    """Distil `ref_model` into the fake-quant `prepared` for cfg.steps steps (in place).

    Loss: `distill_loss` (cfg.distill_loss) to the reference output, plus cfg.gt_weight * L1 to the
    ground truth when every calibration item has one, plus cfg.routing_weight * the mean squared
    difference of every prompt pool's routing logits from the reference's (where the prepared module
    routes eagerly): the top-k choice is discrete, and INT8 features that move a query across a tie
    swap a prompt. A step whose gradient is not finite is skipped (counted in "skipped_steps").
    Observers freeze at cfg.freeze_observers_at of the steps (None: the scheme's, `freeze_fraction`).
    With `state_dir`, state is saved atomically every cfg.checkpoint_every steps and resumed from
    there. Parameters under the module names in `frozen` are not trained. With `select` (prepared ->
    score, lower is better) and cfg.select_every, the module is scored before the first step and every
    cfg.select_every steps (and after the last); the best-scoring state is loaded at the end
    ("selection" in the result). `keep(x)` -> (B,) bool: crops it turns down are replaced by other
    draws (`kept_batch`; counted in "turned_down_crops").
    """
    prefixes = tuple(f"{name}." for name in frozen)
    params = [p for n, p in prepared.named_parameters() if p.requires_grad and not n.startswith(prefixes)]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    freeze_at = int(round(freeze_fraction(cfg) * cfg.steps))
    start, history = 0, []
    every = cfg.select_every if select is not None else 0
    best: dict = {}
    state_path = Path(state_dir) / STATE_FILE if state_dir else None
    if state_path is not None and state_path.is_file():
        start, history, best = _load_state(state_path, cfg, prepared, opt, sched, gen)
    if every and not best:
        best = _scored(prepared, select, 0, {})
    use_gt = cfg.gt_weight > 0 and all(p.gt is not None for p in pairs)
    skipped = turned_down = 0
    for step in range(start, cfg.steps):
        set_observers(prepared, step < freeze_at)
        lq, gt, down = kept_batch(pairs, cfg.batch_size, cfg.crop, gen, keep)
        turned_down += down
        with torch.no_grad(), recorded_routes() as ref_routes:
            target = run_image(ref_model, lq)
        with recorded_routes() as routes:
            out = run_image(prepared, lq)
        loss = distill_loss(out, target, cfg.distill_loss)
        if cfg.routing_weight and len(routes) == len(ref_routes):
            for got, ref in zip(routes, ref_routes):
                loss = loss + cfg.routing_weight * F.mse_loss(got.logits, ref.logits)
        if use_gt:
            loss = loss + cfg.gt_weight * F.l1_loss(out, gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if _finite_grads(params):
            opt.step()
        else:  # one non-finite gradient would turn Adam's state, and every weight after it, into NaN
            skipped += 1
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()" after a skip
            warnings.simplefilter("ignore", UserWarning)
            sched.step()
        history.append(loss.item())
        if log is not None:
            log(step + 1, history[-1])
        if every and ((step + 1) % every == 0 or step + 1 == cfg.steps):
            set_observers(prepared, False)
            best = _scored(prepared, select, step + 1, best)
        if state_path is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            _save_state(state_path, cfg, step + 1, prepared, opt, sched, gen, history, best)
    set_observers(prepared, False)
    tail = history[-max(1, len(history) // 10):]
    out = {"steps": cfg.steps, "loss_first": history[0] if history else None,
           "loss_last_10pct": float(np.mean(tail)) if history else None, "resumed_from": start,
           "skipped_steps": skipped, "turned_down_crops": turned_down}
    if best:
        if best["step"] != cfg.steps:
            prepared.load_state_dict(best["state"])
        out["selection"] = {"every": every, "scores": best["scores"], "kept_step": best["step"],
                            "kept_score": best["score"]}
    return out


def _scored(prepared, select, step: int, best: dict) -> dict:
    """`best` updated with the score of `prepared` at `step` (its state kept when it is the lowest)."""
    score = float(select(prepared))
    scores = list(best.get("scores", [])) + [[step, score]]
    if best and not score < best["score"]:
        return {**best, "scores": scores}
    state = {k: v.detach().clone() for k, v in prepared.state_dict().items()}
    return {"step": step, "score": score, "state": state, "scores": scores}


def freeze_fraction(cfg) -> float:
    """cfg.freeze_observers_at, or where it is None the target scheme's (`scope.scheme_freeze_at`)."""
    if cfg.freeze_observers_at is not None:
        return float(cfg.freeze_observers_at)
    from datprl_edge.core.targets import stage_module
    from datprl_edge.quantize.scope import scheme_freeze_at

    return scheme_freeze_at(stage_module(cfg.target, "quantize"))


def _finite_grads(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


# floor of the per-image MSE in the "psnr" loss (60 dB): an image the module already matches that
# closely stops pulling on the weights instead of dominating through 1 / MSE
PSNR_LOSS_FLOOR = 1e-6


def distill_loss(out, target, kind: str = "l1"):
    """Distance of `out` from the reference `target`. "l1": mean absolute difference, which weighs
    every pixel alike, so tasks with large residuals (cloud removal) outweigh ones restored to 40 dB
    (CT), where an INT8 error of the same size costs far more dB. "psnr": mean over images of
    log10(MSE + floor), i.e. the mean dB gap per image / -10: each image's dB counts alike."""
    if kind == "l1":
        return F.l1_loss(out, target)
    mse = (out - target).float().pow(2).flatten(1).mean(1)
    return torch.log10(mse + PSNR_LOSS_FLOOR).mean()


def config_key(cfg) -> str:
    """Hash of the settings a resumed run must share with the saved one."""
    keys = ("target", "steps", "batch_size", "crop", "lr", "gt_weight", "seed", "routing_weight")
    fields = {k: getattr(cfg, k) for k in keys}
    fields["freeze_observers_at"] = freeze_fraction(cfg)  # the value used, whether given or the scheme's
    # keys of runs saved before these options existed stay valid
    if cfg.distill_loss != "l1":
        fields["distill_loss"] = cfg.distill_loss
    if getattr(cfg, "select_every", 0):
        fields["select_every"] = cfg.select_every
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_state(path: Path, cfg, step, prepared, opt, sched, gen, history, best=None) -> None:
    blob = {"key": config_key(cfg), "step": step, "model": prepared.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "history": torch.tensor(history)}
    if best:
        blob["best"] = {"step": best["step"], "score": best["score"], "state": best["state"],
                        "scores": torch.tensor(best["scores"], dtype=torch.float64)}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _load_state(path: Path, cfg, prepared, opt, sched, gen):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("key") != config_key(cfg):
        raise ConfigError(f"{path} belongs to a QAT run with other settings; use another --resume-dir "
                          "or delete that file")
    prepared.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    gen.set_state(blob["gen"])
    best = blob.get("best") or {}
    if best:
        best = {"step": int(best["step"]), "score": float(best["score"]), "state": best["state"],
                "scores": [[int(s), float(v)] for s, v in best["scores"].tolist()]}
    return int(blob["step"]), [float(v) for v in blob["history"]], best
