"""Run the CLI in a subprocess where some packages cannot be imported (devices that run exported
artifacts have numpy and one runtime, no torch)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Everything a device running `bench` may lack: only numpy and the artifact's runtime are left.
ALL_BUT_NUMPY_AND_RUNTIMES = ("torch", "torchao", "torchvision", "nncf", "coremltools", "onnx", "onnxscript",
                              "PIL", "yaml", "skimage", "scipy", "tifffile", "pydicom", "png", "pywt", "tqdm",
                              "safetensors", "matplotlib")
SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            # what a missing package raises (the name is what the CLI's hint reads)
            raise ModuleNotFoundError(f"{{name}} is blocked: this must run without it", name=name)
        return None


sys.meta_path.insert(0, _Block())
"""


def no_torch_env(folder, blocked=("torch",)) -> dict:
    """Environment whose Python processes (and their children) cannot import `blocked`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=tuple(blocked)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(env, *argv, timeout=300):
    cmd = [sys.executable, "-m", "datprl_edge.cli.main", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def error_line(proc) -> str:
    """The one error line (progress lines may precede it; never a traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert sum(line.startswith("datprl-edge: error:") for line in lines) == 1
    return lines[-1]
