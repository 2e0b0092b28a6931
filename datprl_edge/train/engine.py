"""The training loop shared by `train-teacher` and `distill`.

One process or many (torchrun, DistributedDataParallel; NCCL on GPU, gloo on CPU). The global batch
of a step is fixed by (seed, step) and split into equal micro-batches over ranks x accumulation
steps; before each micro-batch the RNG is seeded from (seed, step, micro-batch index), so the
prompt-selection noise does not depend on how micro-batches are spread over processes. Hence a
2-process run matches a 1-process run with accum_steps=2, and a resumed run the uninterrupted one.
The batches are made by `loader.StepLoader` (in the step, or ahead by worker processes). With a
time budget the step count (and so the cosine schedule) is fitted to the time as the run goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datprl_edge.core.metrics import PSNR_CAP_DB, psnr_from_mse
from datprl_edge.io.atomic import write_text_atomic
from datprl_edge.train import distributed as D
from datprl_edge.train.bounds import bound_student
from datprl_edge.train.checkpointing import (
    RunState,
    load_state,
    prepare_run_dir,
    save_final,
    save_state,
    saved_config,
    trim_logs,
)
from datprl_edge.train.config import TrainConfig
from datprl_edge.train.curriculum import Curriculum, step_weights
from datprl_edge.train.evaluate import evaluate
from datprl_edge.train.loader import BatchPlan, StepLoader, take


@dataclasses.dataclass
class TrainResult:
    model: nn.Module  # final weights (EMA when enabled): a new module, CPU, eval mode
    raw_model: nn.Module  # final weights without EMA
    metrics: dict  # final per-task validation
    history: list  # validation records
    run_dir: Path | None
    steps: int
    seconds: float
    sec_per_step: float
    checkpoint: Path | None  # the final toolkit checkpoint (rank 0, with a run dir)


def train_loop(objective, config: TrainConfig, data, run_dir=None, *, stage: str, resume: bool = False,
               provenance: dict | None = None, step_callback=None) -> TrainResult:
    """Train `objective.net` (which holds `objective.model`) and return the trained model.

    `objective` provides `net` (forward(lq, prompt_ids) -> (out, aux)), `model`, `find_unused`,
    `prepare(env, data, run_dir)` and `loss(out, aux, batch) -> (loss, parts)`. `step_callback(step)`
    is called after every finished step (tests use it to interrupt a run).
    """
    env = D.setup(config.device)
    try:
        return _train(objective, config, data, run_dir, stage, resume, provenance or {}, step_callback, env)
    finally:
        D.teardown(env)


def _train(obj, cfg: TrainConfig, data, run_dir, stage, resume, provenance, step_callback, env):
    run_dir = Path(run_dir) if run_dir is not None else None
    state_file = prepare_run_dir(run_dir, resume, env) if run_dir is not None else None
    if cfg.time_budget and state_file is not None and state_file.exists():
        # a resumed budgeted run finishes the step count fitted before its checkpoint (if none was
        # fitted yet, the budget starts again)
        fitted = int(saved_config(state_file).get("steps", cfg.steps))
        if fitted < cfg.steps:
            cfg = dataclasses.replace(cfg, steps=fitted, time_budget=0.0)
    dev = env.device
    n_micro = cfg.micro_batches(env.world_size)
    micro = cfg.batch_size // n_micro
    channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type == "cuda"
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and dev.type == "cuda")
    mem_format = torch.channels_last if channels_last else torch.contiguous_format

    net = obj.net.to(dev, memory_format=mem_format)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    horizon = {"steps": cfg.steps}  # the cosine's length: a time budget refits it
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, horizon))
    ema = _make_ema(obj.model, cfg.ema_decay)
    start = 0
    if state_file is not None and state_file.exists():
        start = load_state(state_file, cfg, net, opt, sched, ema, dev)
        if env.is_main:
            trim_logs(run_dir, start)
    if start >= cfg.steps and env.is_main:
        tqdm.write(f"run already finished at step {start}; writing the final model again")
    ddp = None
    if env.distributed:
        ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                      find_unused_parameters=obj.find_unused)
    runner = ddp if ddp is not None else net
    if cfg.compile:
        runner = torch.compile(runner)

    obj.prepare(env, data, run_dir)
    curriculum = Curriculum(cfg.curriculum, data.task_of_item, cfg.steps, cfg.seed)
    share = slice(env.rank * cfg.accum_steps * micro, (env.rank + 1) * cfg.accum_steps * micro)
    targets_fn = obj.worker_targets(env) if hasattr(obj, "worker_targets") else None
    plan = BatchPlan(data, curriculum, cfg.batch_size, share, cfg.pair_reuse, targets_fn)
    loader = StepLoader(data, plan, cfg.workers, pin_memory=dev.type == "cuda")
    val_sets = data.validation(cfg.val_count, cfg.val_size) if env.is_main else None
    history = _read_history(run_dir) if start else []
    wall0 = _last_wall(run_dir) if start else 0.0  # wall_s in the logs counts on over resumes
    bar = tqdm(total=cfg.steps, initial=start, disable=not (env.is_main and cfg.progress),
               dynamic_ncols=True, unit="step")
    t0, done_here = time.perf_counter(), 0
    guard = _NonFiniteGuard()
    budget = _Budget(cfg.time_budget, t0, cfg.steps, env.distributed)
    net.train()
    done = start
    while done < cfg.steps:
        weights = step_weights(cfg.task_weights, data.tasks, history)
        for b in loader.iterate(done, _segment_end(done, cfg), weights):
            step = b["step"]
            stats = {}
            for a in range(cfg.accum_steps):
                sl = slice(a * micro, (a + 1) * micro)
                batch = _to_device(data, b, sl, dev, mem_format, cfg.prompt_mode)
                torch.manual_seed(_micro_seed(cfg.seed, step, env.rank * cfg.accum_steps + a))
                sync = ddp is None or a == cfg.accum_steps - 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()):
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        out, aux = runner(batch["lq"], batch.get("prompt_ids"))
                        loss, parts = obj.loss(out, aux, batch)
                    (loss / cfg.accum_steps).backward()
                _accumulate(stats, parts, loss, out, batch["gt"], cfg.accum_steps)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if guard.ok(bool(torch.isfinite(norm)), step):
                opt.step()
                if ema is not None:
                    ema.update_parameters(obj.model)
            with warnings.catch_warnings():  # "scheduler before optimizer" when the first update was skipped
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
            opt.zero_grad(set_to_none=True)
            done_here += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                stats = D.all_mean(env, stats)
                spent = time.perf_counter() - t0
                bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.2f}")
                if env.is_main and run_dir is not None:
                    rec = {"step": done, **{k: round(v, 6) for k, v in stats.items()},
                           **({"nonfinite_skipped": guard.skipped} if guard.skipped else {}),
                           "lr": sched.get_last_lr()[0], "sec_per_step": round(spent / done_here, 4),
                           "wall_s": round(wall0 + spent, 2)}
                    _append_jsonl(run_dir / "train.jsonl", rec)
            bar.update(1)
            if run_dir is not None and cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < cfg.steps:
                if env.is_main:
                    save_state(state_file, RunState(done, cfg, stage), net, opt, sched, ema)
                D.barrier(env)
            if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
                if env.is_main:
                    ids_fn = data.prompt_ids_fn(cfg.prompt_mode)
                    rec = {"step": done, "wall_s": round(wall0 + time.perf_counter() - t0, 2),
                           **evaluate(_eval_model(obj, ema), val_sets, dev, ids_fn)}
                    history.append(rec)
                    if run_dir is not None:
                        _append_jsonl(run_dir / "val.jsonl", rec)
                    tqdm.write(f"step {done}: val PSNR {rec['mean']['psnr']:.2f} dB "
                               f"(input {rec['mean']['psnr_input']:.2f})")
                D.barrier(env)
            if step_callback is not None:
                step_callback(done)
            if budget.due(done_here):
                steps = budget.fit(done, done_here, cfg.steps, env)
                if steps != cfg.steps:
                    cfg = dataclasses.replace(cfg, steps=steps)
                    horizon["steps"] = steps
                    plan.curriculum = Curriculum(cfg.curriculum, data.task_of_item, cfg.steps, cfg.seed)
                    bar.total = steps
                    bar.refresh()
            if done >= cfg.steps:
                break  # the budget ended the run inside this segment
    bar.close()
    seconds = time.perf_counter() - t0
    final, raw = _export(obj, ema)
    metrics, ckpt = {}, None
    if env.is_main:
        bound_student([final, raw], data, cfg.batch_size, cfg.seed, cfg.curriculum)
        metrics = evaluate(final.to(dev), val_sets, dev, data.prompt_ids_fn(cfg.prompt_mode))
        history.append({"step": cfg.steps, "wall_s": round(wall0 + seconds, 2), **metrics})
        if run_dir is not None:
            if start < cfg.steps:
                save_state(state_file, RunState(cfg.steps, cfg, stage), net, opt, sched, ema)
                _append_jsonl(run_dir / "val.jsonl", history[-1])
            prov = {**provenance, "steps": cfg.steps, "data": data.describe(), "seed": cfg.seed}
            ckpt = save_final(run_dir / "model.safetensors", final, stage, prov,
                              {"metrics": metrics, "train_config": cfg.to_dict(), "ema": ema is not None})
            write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    D.barrier(env)
    per_step = seconds / done_here if done_here else float("nan")
    return TrainResult(final.cpu().eval(), raw.cpu().eval(), metrics, history, run_dir, cfg.steps, seconds,
                        per_step, ckpt)


def _lr_lambda(cfg: TrainConfig, horizon: dict | None = None):
    floor = cfg.min_lr / cfg.lr
    horizon = horizon if horizon is not None else {"steps": cfg.steps}

    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(horizon["steps"] - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _make_ema(model: nn.Module, decay: float):
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def avg(ema_p, p, n):
        # Warm-up: early on the average follows the weights closely (decay (1+n)/(10+n)).
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return ema_p * d + p * (1.0 - d)

    return AveragedModel(model, avg_fn=avg, use_buffers=True)


def _eval_model(obj, ema):
    return ema.module if ema is not None else obj.model


def _export(obj, ema):
    import copy

    raw = copy.deepcopy(obj.model)
    final = copy.deepcopy(ema.module) if ema is not None else copy.deepcopy(obj.model)
    for m in (raw, final):
        m.to(memory_format=torch.contiguous_format)
        if hasattr(obj.model, "datprl_config"):
            m.datprl_config = dict(obj.model.datprl_config)
    return final, raw


def _to_device(data, b, sl, dev, mem_format, prompt_mode) -> dict:
    nb = dev.type == "cuda"
    out = {"lq": b["lq"][sl].to(dev, memory_format=mem_format, non_blocking=nb),
           "gt": b["gt"][sl].to(dev, memory_format=mem_format, non_blocking=nb),
           "items": b["items"][sl], "tasks": b["tasks"][sl]}
    if "teacher" in b:
        out["teacher"] = take(b["teacher"], sl, dev, nb)
    if prompt_mode == "explicit":
        ids = [data._prompt_ids[data.tasks[t]] for t in out["tasks"]]
        out["prompt_ids"] = torch.tensor(ids, dtype=torch.long, device=dev)
    return out


def _segment_end(done: int, cfg: TrainConfig) -> int:
    """Where the current loader stops: the next validation (task weights may change) or the end."""
    end = cfg.steps
    if cfg.val_every:
        end = min(end, (done // cfg.val_every + 1) * cfg.val_every)
    return max(end, done + 1)


class _Budget:
    """Fits the step count to a wall-clock budget: first after a few steps, then every REFIT steps,
    from the rate since the warm-up (validation time included), so the cosine schedule ends when
    the time does. A fit past the time ends the run at once."""

    WARM = 3  # steps whose time is not counted (start-up, the first batches from the workers)
    FIRST_FIT = 12
    REFIT = 100

    def __init__(self, seconds: float, t0: float, cap: int, distributed: bool = False):
        self.seconds, self.t0, self.active, self.cap = float(seconds), t0, seconds > 0, cap
        self.distributed = distributed  # ranks fit at the same steps only (their clocks differ)
        self.t_warm = self.n_warm = None

    def due(self, done_here: int) -> bool:
        if not self.active:
            return False
        if done_here == self.WARM:
            self.t_warm, self.n_warm = time.perf_counter(), done_here
        late = not self.distributed and time.perf_counter() - self.t0 > self.seconds
        return late or done_here == self.FIRST_FIT or (done_here > self.FIRST_FIT and
                                                       (done_here - self.FIRST_FIT) % self.REFIT == 0)

    def fit(self, done: int, done_here: int, steps: int, env) -> int:
        now = time.perf_counter()
        left = self.seconds - (now - self.t0)
        if left <= 0:
            new = done
        elif self.t_warm is None or done_here <= self.n_warm:
            return steps
        else:
            rate = (now - self.t_warm) / (done_here - self.n_warm)
            new = min(self.cap, done + int(left / rate))
        if env.distributed:  # every rank must stop at the same step
            dev = env.device if env.device.type == "cuda" else None
            t = torch.tensor([new], dtype=torch.float64, device=dev)
            torch.distributed.broadcast(t, 0)
            new = int(t.item())
        return max(new, done)


def _micro_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 8191 + micro * 131 + 17) % (2 ** 63)


class _NonFiniteGuard:
    """Skips an update whose gradient is not finite (the weights and their EMA stay as they were, so
    no checkpoint can hold NaN); `LIMIT` such steps in a row end the run."""

    LIMIT = 20

    def __init__(self):
        self.skipped = self.in_a_row = 0

    def ok(self, finite: bool, step: int) -> bool:
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.LIMIT:
            from datprl_edge.core.errors import TrainingDivergedError

            raise TrainingDivergedError(
                f"training diverged at step {step + 1}: {self.in_a_row} steps in a row with a non-finite "
                "loss or gradient (none of them applied; the run folder keeps its last checkpoint); "
                "resume with a lower --lr or --grad-clip")
        tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped ({self.skipped} so far)")
        return False


def _accumulate(stats, parts, loss, out, gt, accum):
    with torch.no_grad():
        mse = (out.detach().float().clamp(0, 1) - gt.float()).pow(2).mean().item()
    vals = {"loss": float(loss.detach()), "psnr": min(psnr_from_mse(mse), PSNR_CAP_DB),
            **{k: float(v) for k, v in parts.items()}}
    for k, v in vals.items():
        stats[k] = stats.get(k, 0.0) + v / accum


def _append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def _last_wall(run_dir) -> float:
    p = None if run_dir is None else Path(run_dir) / "train.jsonl"
    if p is None or not p.exists():
        return 0.0
    recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return float(recs[-1].get("wall_s", 0.0)) if recs else 0.0


def _read_history(run_dir) -> list:
    p = None if run_dir is None else Path(run_dir) / "val.jsonl"
    if p is None or not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
