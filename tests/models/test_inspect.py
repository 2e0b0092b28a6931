"""The MAC counter, latency helper and `datprl-edge inspect`."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli
from torch import nn

from datprl_edge import create_model
from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
from datprl_edge.models.complexity import count_macs, count_params, measure_latency, stage_params
from datprl_edge.models.registry import model_config

RESTORMER_6T_PARAMS = 53_133_552
RESTORMER_6T_GMACS = 186.5


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.dw(self.conv(x))  # (B, 8, H, W)
        tokens = h.flatten(2).transpose(1, 2)  # (B, HW, 8)
        attn = tokens.transpose(1, 2) @ tokens  # (B, 8, 8): 8*HW*8 MACs
        return self.fc(tokens).sum() + attn.sum()


def test_macs_match_hand_count():
    h, w = 10, 12
    model = _Tiny()
    got = count_macs(model, (2, 3, h, w))
    px = h * w
    conv, dw, fc, attn = 8 * 3 * 9 * px, 8 * 9 * px, px * 8 * 4, 8 * px * 8
    assert got.stages == {"conv": 2 * conv, "dw": 2 * dw, "fc": 2 * fc, "(top level)": 2 * attn}
    assert got.total == 2 * (conv + dw + fc + attn)
    assert got.device == "meta"


def test_counting_leaves_the_model_alone():
    model = create_model("edge-xs")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"


def test_params_and_stage_params():
    model = create_model("edge-xs")
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert sum(stage_params(model).values()) == count_params(model)


def test_latency_reports_and_restores_threads():
    model = create_model("edge-xs")
    threads = torch.get_num_threads()
    lat = measure_latency(model, (1, 3, 32, 32), warmup=0, iters=2, threads=1)
    assert lat["threads"] == 1 and lat["iters"] == 2 and 0 < lat["min_ms"] <= lat["median_ms"]
    assert torch.get_num_threads() == threads


def test_inspect_json_student(capsys):
    code, out, err = run_cli(capsys, "inspect", "edge-xs", "--json", "--no-latency")
    assert code == 0, err
    report = json.loads(out)
    assert report["params"] == count_params(create_model("edge-xs"))
    assert report["macs"] <= 1e9 and report["input_shape"] == [1, 3, 256, 256]
    assert sum(s["macs"] for s in report["stages"]) == report["macs"]
    assert report["weights"] == "random" and report["latency"] is None


def test_inspect_json_teacher_6t(capsys):
    code, out, err = run_cli(capsys, "inspect", "restormer-6t", "--json", "--no-latency", "--size", "256x256")
    assert code == 0, err
    report = json.loads(out)
    assert report["params"] == RESTORMER_6T_PARAMS
    assert abs(report["gmacs"] - RESTORMER_6T_GMACS) <= 0.01 * RESTORMER_6T_GMACS


def test_inspect_table_with_latency(capsys):
    code, out, err = run_cli(capsys, "inspect", "edge-xs", "--size", "32", "--iters", "1", "--warmup", "0")
    assert code == 0, err
    assert "random init" in out and "1x3x32x32" in out
    assert "decoders" in out and "total" in out and "ms median" in out


def test_inspect_checkpoint(capsys, tmp_path):
    model = create_model("edge-xs")
    path = save_checkpoint(tmp_path / "s.safetensors", model.state_dict(),
                           CheckpointConfig(*model_config(model), stage="distilled"))
    code, out, err = run_cli(capsys, "inspect", path, "--json", "--no-latency", "--size", "64x48")
    assert code == 0, err
    report = json.loads(out)
    assert report["weights"] == "checkpoint" and report["role"] == "distilled"
    assert report["input_shape"] == [1, 3, 64, 48]


@pytest.mark.parametrize("argv, message", [
    (["edge-xss"], "did you mean 'edge-xs'"),
    (["missing/model.safetensors"], "not found"),
    (["edge-xs", "--network", "net.yml"], "--network"),
    (["edge-xs", "--size", "big"], "--size"),
    (["edge-xs", "--iters", "0"], "--iters"),
    (["bundled:nothing-here"], "nothing-here"),
])
def test_inspect_errors(capsys, argv, message):
    code, out, err = run_cli(capsys, "inspect", *argv, "--no-latency")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_inspect_module_is_torch_free():
    code = "import sys, datprl_edge.cli.inspect_cmd; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_stage_latency_covers_every_stage(capsys):
    from datprl_edge.models.complexity import OTHER_STAGE, stage_latency

    model = create_model("edge-xs")
    threads = torch.get_num_threads()
    per_stage = stage_latency(model, (1, 3, 32, 32), warmup=0, iters=2, threads=1)
    assert list(per_stage) == [n for n, _ in model.named_children()] + [OTHER_STAGE]
    assert per_stage["encoders"] > 0 and per_stage["decoders"] > 0 and torch.get_num_threads() == threads
    code, out, err = run_cli(capsys, "inspect", "edge-xs", "--json", "--size", "32", "--iters", "2",
                             "--warmup", "0", "--threads", "1")
    assert code == 0, err
    stages = {s["name"]: s for s in json.loads(out)["stages"]}
    assert stages["decoders"]["latency_ms"] > 0
    assert abs(sum(s["latency_share"] for s in stages.values()) - 1) < 0.01
