import os

import pytest

# Two cores are shared by everything in CI; more threads only add contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # the torch-free tests run without it
        yield
        return
    torch.manual_seed(0)
    yield


def run_cli(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from datprl_edge.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
