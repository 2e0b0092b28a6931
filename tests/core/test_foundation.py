"""Checkpoint format, registry, loader errors and the CLI's error contract."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from datprl_edge import create_model, list_models, load_model
from datprl_edge.core.errors import (
    CheckpointError,
    ConfigError,
    PickledCheckpointError,
    StateDictMismatchError,
    UnknownArchitectureError,
)
from datprl_edge.io.checkpoint import CheckpointConfig, read_checkpoint, save_checkpoint

BACKENDS = ("onnx", "onnxruntime", "openvino", "coremltools", "nncf")


def test_import_is_lean():
    code = (
        "import sys, datprl_edge, datprl_edge.cli.main as m; m.build_parser();"
        f"print([b for b in {BACKENDS!r} if b in sys.modules], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"


def test_zoo_has_teachers_and_students():
    roles = {s.name: s.role for s in list_models()}
    assert roles.get("restormer-6t") == "teacher"
    assert roles.get("nafnet-default") == "teacher"
    assert sum(r == "student" for r in roles.values()) >= 2


def test_unknown_model_suggests(capsys):
    with pytest.raises(UnknownArchitectureError, match="did you mean 'edge-xs'"):
        create_model("edge-xss")
    code, _, err = run_cli(capsys, "inspect", "edge-xss", "--no-latency")
    assert code == 2 and "did you mean" in err and "Traceback" not in err


def test_checkpoint_round_trip(tmp_path):
    model = create_model("edge-xs")
    cfg = CheckpointConfig(*_arch_opts(model), stage="student", provenance={"note": "test"})
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), cfg)
    state, back = read_checkpoint(path)
    assert back.arch == cfg.arch and back.options == cfg.options and back.provenance["note"] == "test"
    assert "toolkit_version" in back.provenance
    loaded = load_model(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_config_validates():
    with pytest.raises(CheckpointError, match="unknown checkpoint stage"):
        CheckpointConfig("EdgeDATPRL", {}, stage="final")


def test_wrong_keys_named(tmp_path):
    model = create_model("edge-xs")
    state = model.state_dict()
    first = next(iter(state))
    state["bogus.weight"] = state.pop(first)
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, state, CheckpointConfig(*_arch_opts(model)))
    with pytest.raises(StateDictMismatchError) as e:
        load_model(path)
    assert first in str(e.value) and "bogus.weight" in str(e.value)


def test_pickled_checkpoint_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "obj": _Custom()}, path)
    net = tmp_path / "net.json"
    net.write_text(json.dumps({"network_g": {"type": "EdgeDATPRL"}}))
    with pytest.raises(PickledCheckpointError, match="pickled"):
        load_model(path, network=net)
    code, out, err = run_cli(capsys, "inspect", path, "--network", net, "--no-latency")
    assert code == 2 and err.count("\n") == 1 and "pickled" in err


def test_released_checkpoint_needs_network(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"params": create_model("edge-xs").state_dict()}, path)
    with pytest.raises(ConfigError, match="--network"):
        load_model(path)
    assert load_model(path, network={"network_g": {"type": "EdgeDATPRL", **_arch_opts_of("edge-xs")}})


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError):
        load_model(path)


def test_missing_file_cli(capsys, tmp_path):
    code, _, err = run_cli(capsys, "inspect", tmp_path / "nope.safetensors", "--no-latency")
    assert code == 2 and "not found" in err


def test_version(capsys):
    from datprl_edge import __version__

    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "--version")
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


class _Custom:
    pass


def _arch_opts(model):
    from datprl_edge.models.registry import model_config

    return model_config(model)


def _arch_opts_of(name):
    return _arch_opts(create_model(name))[1]


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    import os

    from datprl_edge.io.atomic import atomic_path

    dest = tmp_path / "out.bin"
    with atomic_path(dest) as tmp:
        tmp.unlink()  # a writer that creates its own file, as safetensors does, with mode 0600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    assert dest.read_bytes() == b"x" and (dest.stat().st_mode & 0o777) == 0o666 & ~umask


def test_usage_errors_are_one_line(capsys):
    from datprl_edge.cli.main import main

    for argv in (["fold", "x.safetensors", "-o", "y.safetensors"], ["nosuch"], ["export", "--bogus"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "error:" in err and "--help" in err
