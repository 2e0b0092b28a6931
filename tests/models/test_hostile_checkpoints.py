"""Hostile checkpoint configs: refused from the header before a model is built, in one line."""

import json
import resource
import time

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file

from datprl_edge.core.errors import CheckpointError, ResourceLimitError
from datprl_edge.models.loading import load_model
from datprl_edge.models.registry import create_model, model_config


def _checkpoint(path, config, tensors=None):
    meta = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={"datprl_edge": meta})
    return path


def _xs_config(**changes):
    arch, options = model_config(create_model("edge-xs"))
    return {"format": "datprl-edge-checkpoint/1", "arch": arch, "options": {**options, **changes},
            "stage": "student"}


@pytest.mark.parametrize("changes,message", [
    ({"width": 10**9}, "option width = 1000000000 is far beyond"),
    ({"enc_blk_nums": [10**6, 1, 1]}, "option enc_blk_nums = \\[1000000, 1, 1\\] is far beyond"),
    ({"width": 4096}, "parameters is over the limit"),
])
def test_absurd_sizes_are_refused_before_building(tmp_path, changes, message):
    path = _checkpoint(tmp_path / "big.safetensors", _xs_config(**changes))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ResourceLimitError, match=message):
        load_model(path)
    assert time.perf_counter() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: < 512 MiB more


def test_the_parameter_limit_is_raised_by_its_environment_variable(tmp_path, monkeypatch):
    cfg = _xs_config(width=20)
    model = create_model(cfg["arch"], **cfg["options"])
    path = _checkpoint(tmp_path / "w20.safetensors", cfg, model.state_dict())
    monkeypatch.setenv("DATPRL_EDGE_MAX_PARAMS", "1000")
    with pytest.raises(ResourceLimitError, match="DATPRL_EDGE_MAX_PARAMS"):
        load_model(path)
    monkeypatch.delenv("DATPRL_EDGE_MAX_PARAMS")
    assert load_model(path) is not None


@pytest.mark.parametrize("config,message", [
    ("[1, 2, 3]", "must be a JSON object, got a list"),
    ('{"format": "datprl-edge-checkpoint/1", "options": {}}', "lacks 'arch'"),
    ('{"format": "datprl-edge-checkpoint/1", "arch": "EdgeDATPRL", "options": [1]}',
     "'options' must be a dict"),
    ('{"format": "datprl-edge-checkpoint/1", "arch": "EdgeDATPRL", "options": {}, "extra": 3}',
     "'extra' must be an object"),
])
def test_malformed_configs_are_checkpoint_errors(tmp_path, config, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_checkpoint(tmp_path / "bad.safetensors", config))


def test_cli_reports_an_absurd_config_in_one_line(tmp_path, capsys):
    path = _checkpoint(tmp_path / "big.safetensors", _xs_config(width=10**9))
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "far beyond any model" in err and "Traceback" not in err
