"""2-process gloo DDP on CPU gives the weights of the equivalent 1-process run (same global batch,
accumulation over the same micro-batches)."""

import os
import socket

import torch
import torch.multiprocessing as mp
from conftest import tiny_teacher
from test_distill import cfg, make_data

from datprl_edge.models.registry import create_model
from datprl_edge.train.distill import distill


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models():
    teacher = tiny_teacher()
    torch.manual_seed(5)
    return teacher, create_model("edge-xs")


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    teacher, student = _models()
    c = cfg(device="cpu", teacher_cache="on")
    res = distill(teacher, student, c, make_data(), os.path.join(out, "ddp"))
    if rank == 0:
        weights = {"ema": res.model.state_dict(), "raw": res.raw_model.state_dict()}
        torch.save(weights, os.path.join(out, "ddp.pt"))


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher, student = _models()
        single = distill(teacher, student, cfg(device="cpu", teacher_cache="on", accum_steps=2), make_data(),
                         tmp_path / "single")
    finally:
        torch.set_num_threads(n)
    start = student.state_dict()
    for key, ref in single.raw_model.state_dict().items():
        assert torch.allclose(ddp["raw"][key], ref, atol=1e-5, rtol=1e-4), key
        assert torch.allclose(ddp["ema"][key], single.model.state_dict()[key], atol=1e-5, rtol=1e-4), key
    assert any(not torch.equal(start[k], v) for k, v in single.raw_model.state_dict().items())
    # the cache was filled by both ranks (row i by rank i % 2) and is complete
    assert '"complete": true' in (tmp_path / "ddp/teacher_cache/meta.json").read_text()
