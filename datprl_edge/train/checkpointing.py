"""Run folders: the atomic training-state checkpoint (`state.pt`), resume, and the final model.

`state.pt` holds only tensors and plain values (weights, EMA, optimizer, scheduler, step, config
JSON) and is read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from datprl_edge.core.errors import CheckpointError, OutputExistsError
from datprl_edge.io.atomic import atomic_path, write_text_atomic
from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint

STATE_FILE = "state.pt"
LOG_FILES = ("train.jsonl", "val.jsonl")
# Settings that may change on resume without changing what the run computes.
_FREE_ON_RESUME = {"ckpt_every", "val_every", "val_count", "val_size", "log_every", "progress", "device",
                   "compile", "amp", "channels_last", "teacher_cache", "accum_steps", "workers",
                   "time_budget"}


@dataclasses.dataclass(frozen=True)
class RunState:
    step: int
    config: object
    stage: str


def prepare_run_dir(run_dir: Path, resume: bool, env) -> Path:
    """Create the run folder; refuse to silently restart a run that has a checkpoint."""
    state = run_dir / STATE_FILE
    if state.exists() and not resume:
        raise OutputExistsError(f"{run_dir} already holds a training run; pass --resume to continue it "
                                "or choose another -o")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"{run_dir} exists and is not a folder; choose another -o")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not state.exists():
            for name in LOG_FILES:
                (run_dir / name).unlink(missing_ok=True)
    from datprl_edge.train.distributed import barrier

    barrier(env)
    return state


def save_state(path: Path, rs: RunState, net, opt, sched, ema) -> None:
    payload = {
        "step": rs.step,
        "stage": rs.stage,
        "config": json.dumps(rs.config.to_dict(), sort_keys=True),
        "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    if ema is not None:
        payload["ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_text_atomic(path.with_name("progress.json"), json.dumps({"step": rs.step, "stage": rs.stage}))


def saved_config(path: Path) -> dict:
    """The training config stored in a state file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for damaged files
        raise CheckpointError(f"cannot read training state {path}: {str(e).splitlines()[0][:160]}") from None
    return json.loads(payload["config"])


def load_state(path: Path, cfg, net, opt, sched, ema, device) -> int:
    """Restore everything from `path` and return the step to continue from."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for damaged files
        raise CheckpointError(f"cannot read training state {path}: {str(e).splitlines()[0][:160]}") from None
    now = cfg.to_dict()
    saved = {**type(cfg)().to_dict(), **json.loads(payload["config"])}  # settings added since: defaults
    diff = sorted(k for k in set(saved) | set(now) if k not in _FREE_ON_RESUME and saved.get(k) != now.get(k))
    if diff:
        detail = ", ".join(f"{k}: was {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
        raise CheckpointError(f"--resume with different settings than the run in {path.parent} ({detail}); "
                              "resume with the same settings or choose another -o")
    net.load_state_dict(payload["net"])
    opt.load_state_dict(payload["optimizer"])
    sched.load_state_dict(payload["scheduler"])
    if ema is not None:
        if "ema" not in payload:
            raise CheckpointError(f"{path} has no EMA weights but this run uses EMA")
        ema.load_state_dict(payload["ema"])
    net.to(device)
    return int(payload["step"])


def trim_logs(run_dir: Path, step: int) -> None:
    """Drop log records written after the checkpoint (by an interrupted run)."""
    for name in LOG_FILES:
        p = run_dir / name
        if not p.exists():
            continue
        keep = [line for line in p.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(p, "".join(line + "\n" for line in keep))


def save_final(path: Path, model, stage: str, provenance: dict, extra: dict) -> Path:
    cfg = model.datprl_config
    return save_checkpoint(path, model.state_dict(),
                           CheckpointConfig(cfg["arch"], dict(cfg["options"]), stage, provenance, extra))
