"""Atomic outputs: a run killed with SIGKILL leaves partials that the next write removes."""

import signal
import subprocess
import sys
import time

import pytest

from datprl_edge.io.atomic import atomic_dir, atomic_path, remove_stale_partials

KILLED_WRITER = """
import sys, time
from pathlib import Path
from datprl_edge.io.atomic import atomic_dir, atomic_path
out = Path(sys.argv[1])
with atomic_path(out / "result.onnx") as tmp, atomic_dir(out / "bundle") as d:
    tmp.write_bytes(b"half an artifact")
    (d / "weights.bin").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def _killed_run(out):
    cmd = [sys.executable, "-c", KILLED_WRITER, str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(".partial" in name for name in left), left
    return left


def test_next_write_removes_what_a_killed_run_left(tmp_path, capsys):
    _killed_run(tmp_path)
    with atomic_path(tmp_path / "result.onnx") as tmp:
        tmp.write_bytes(b"whole")
    err = capsys.readouterr().err
    assert "removed .result." in err and "killed" in err
    with atomic_dir(tmp_path / "bundle") as d:
        (d / "weights.bin").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "result.onnx"]
    assert (tmp_path / "result.onnx").read_bytes() == b"whole"


def test_partials_of_a_live_process_are_left_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine = tmp_path / f".result.{live.pid}.abcd1234.partial.onnx"
        mine.write_bytes(b"in progress")
        other = tmp_path / f".result.2.{live.pid}.abcd1234.partial.onnx"  # another output, "result.2"
        other.write_bytes(b"in progress")
        assert remove_stale_partials(tmp_path, "result", log=lambda s: None) == []
        assert mine.exists()
    finally:
        live.kill()
        live.wait()
    time.sleep(0.05)
    assert remove_stale_partials(tmp_path, "result", log=lambda s: None) == [mine] and other.exists()


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["export", "--target", "onnx", "-o", "{f}"], ["pipeline", "-o", "{f}/run"]])
def test_output_folder_that_is_a_file_is_one_error(tmp_path, capsys, argv):
    from conftest import run_cli

    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    code, _, err = run_cli(capsys, *[a.format(f=blocker) for a in argv])
    assert code == 2 and err.count("\n") == 1 and ("is a file" in err or "existing file" in err)
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
