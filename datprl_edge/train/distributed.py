"""Process-group setup for torchrun: NCCL on GPUs, gloo on CPU; a no-op for one process."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from datprl_edge.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when this call created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_pref: str = "auto") -> DistEnv:
    """Join the torchrun process group if WORLD_SIZE > 1 (env:// rendezvous)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_pref, local)
    owns = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    elif dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank, world, local, device, owns)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(env: DistEnv, values: dict) -> dict:
    """Average a dict of floats over ranks (for logging only)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if env.device.type == "cuda":
        t = t.to(env.device)
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}
