"""`datprl-edge train-teacher` and `distill` end to end on tiny settings, their errors, and the
same distill command under torchrun with 2 gloo processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from datprl_edge.models.loading import load_model

TINY_TEACHER = {"network_g": {"type": "DualPromptRestormerv3", "dim": 8, "enc_blk_nums": [1, 1, 1],
                              "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1], "refine_blk_num": 0,
                              "domain_prompt_dim": 16, "degradation_prompt_dim": 16}}
DATA = "synthetic:natural/denoise,medical/mri_sr"
TINY = ["--data", DATA, "--batch", "2", "--crop", "32", "--pairs", "4", "--val-count", "1",
        "--val-size", "32", "--threads", "1", "--no-progress", "--ckpt-every", "1", "--log-every", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    net = tmp / "net.json"
    net.write_text(json.dumps(TINY_TEACHER))
    from datprl_edge.cli.main import main

    assert main(["train-teacher", "--network", str(net), "--steps", "2", "-o", str(tmp / "run"), *TINY]) == 0
    return tmp / "run"


def test_train_teacher_writes_a_loadable_teacher_checkpoint(teacher_run):
    model = load_model(teacher_run / "model.safetensors")
    cfg = model.datprl_checkpoint
    assert cfg.stage == "teacher" and cfg.arch == "DualPromptRestormerv3"
    assert cfg.provenance["command"].startswith("datprl-edge ") and cfg.provenance["steps"] == 2
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"natural/denoise", "medical/mri_sr"}
    assert len((teacher_run / "train.jsonl").read_text().splitlines()) == 2


def test_distill_cli_from_the_trained_teacher(teacher_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "distill", "--teacher", teacher_run / "model.safetensors", "--student",
                             "edge-xs", "--steps", "2", "-o", tmp_path / "kd", *TINY)
    assert code == 0, err
    assert "distilled student" in out and "medical/mri_sr" in out
    model = load_model(tmp_path / "kd/model.safetensors")
    assert model.datprl_checkpoint.stage == "distilled"
    assert len(model.datprl_checkpoint.provenance["teacher_sha256"]) == 64
    # finished run + --resume: nothing to train, same weights written again
    code, _, err = run_cli(capsys, "distill", "--teacher", teacher_run / "model.safetensors", "--steps", "2",
                           "-o", tmp_path / "kd", "--resume", *TINY)
    assert code == 0, err


@pytest.mark.parametrize("argv, message", [
    (["distill", "--steps", "2"], "needs --teacher"),
    (["distill", "--no-kd", "--teacher", "x.safetensors", "--steps", "2"], "drop --teacher"),
    (["distill", "--no-kd", "--steps", "2", "--curriculum", "sequentail"], "did you mean 'sequential'"),
    (["train-teacher", "--steps", "2", "--prompts", "explicit"], "explicit prompts"),
    (["train-teacher", "--steps", "2", "--data", "/no/such/folder"], "no such folder"),
    (["distill", "--teacher", "/no/such.safetensors", "--steps", "2"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    extra = [a for a in TINY if a != DATA and a != "--data"] if "--data" in argv else TINY
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "run", *extra)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_existing_run_needs_resume(tmp_path, capsys):
    args = ["distill", "--no-kd", "--steps", "1", "-o", tmp_path / "run", *TINY]
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in err


def test_distill_command_under_torchrun_with_two_gloo_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "datprl_edge", "distill",
           "--no-kd", "--steps", "2", "-o", str(tmp_path / "ddp"), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("student (no KD)") == 1  # only rank 0 reports
    assert load_model(tmp_path / "ddp/model.safetensors").datprl_checkpoint.stage == "student"


def test_train_teacher_continues_from_init_weights_on_the_fly(teacher_run, tmp_path, capsys):
    args = [a for a in TINY if a not in ("--pairs", "4")]
    code, out, err = run_cli(capsys, "train-teacher", "--init", teacher_run / "model.safetensors",
                             "--steps", "2", "--pairs", "0", "--severity", "random", "--workers", "1",
                             "--task-weights", "adaptive", "--val-every", "1", "-o", tmp_path / "cont", *args)
    assert code == 0, err
    from datprl_edge.io.checkpoint import read_checkpoint_config

    prov = read_checkpoint_config(tmp_path / "cont/model.safetensors").provenance
    assert prov["init"].endswith("model.safetensors") and "on-the-fly" in prov["data"]
    code, _, err = run_cli(capsys, "train-teacher", "--init", "x.safetensors", "--model", "restormer-ref",
                           "--steps", "1", "-o", tmp_path / "bad", *TINY)
    assert code == 2 and "--init" in err
