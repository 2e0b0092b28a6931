"""Resource limits: one place, checked before allocation, raised by environment variables; the
commands that size work from options refuse absurd values in one line."""

import pytest
from conftest import run_cli

from datprl_edge.core import limits
from datprl_edge.core.errors import ConfigError, ResourceLimitError


def test_check_names_the_variable_and_formats_sizes(monkeypatch):
    with pytest.raises(ResourceLimitError, match=r"x: 65.54T pixels is over the limit of 64M pixels.*"
                                                 r"DATPRL_EDGE_MAX_PIXELS=N"):
        limits.check("pixels", 65_536 * 10**9, "x")
    monkeypatch.setenv("DATPRL_EDGE_MAX_CROP", "4096")
    limits.check("crop", 4000, "crop")
    monkeypatch.setenv("DATPRL_EDGE_MAX_CROP", "-3")
    with pytest.raises(ConfigError, match="must be a positive number"):
        limits.limit("crop")


def test_override_wins_and_resets():
    limits.set_limit("pixels", 10)
    try:
        with pytest.raises(ResourceLimitError):
            limits.check_image(4, 4, "img")
    finally:
        limits.set_limit("pixels", None)
    limits.check_image(4, 4, "img")


@pytest.mark.parametrize("argv,message", [
    (["eval", "bundled:edge-xs", "--count", "1000000000"], "--count 1000000000 x --size 256"),
    (["eval", "bundled:edge-xs", "--size", "100000"], "--size is 100000x100000"),
    (["export", "bundled:edge-xs", "--target", "onnx", "--shape", "16384x16384", "-o", "{tmp}/x"],
     "16384x16384: 268.4M pixels"),
    (["distill", "--teacher", "bundled:teacher-ref", "--student", "edge-xs", "--steps", "1",
      "--crop", "100000", "-o", "{tmp}/run"], "crop: 100000 px is over the limit"),
])
def test_commands_refuse_absurd_sizes_in_one_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and err.count("\n") == 1 and message in err and "over the limit" in err
    assert list(tmp_path.iterdir()) == []
