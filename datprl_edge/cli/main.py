"""`datprl-edge` entry point: builds the parser from the command modules and maps errors to exit 2.

Command modules must stay cheap to import (no torch, no backends at module level): `bench` and
`restore` on exported artifacts run on devices without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from datprl_edge.core.errors import DatprlEdgeError
from datprl_edge.core.interrupt import Terminated, sigterm_unwinds
from datprl_edge.core.version import __version__

# Order is the order of `--help`; each module defines register(subparsers).
COMMAND_MODULES = (
    "zoo_cmd",
    "inspect_cmd",
    "restore_cmd",
    "tasks_cmd",
    "data_cmd",
    "calib_cmd",
    "fold_cmd",
    "qat_cmd",
    "train_cmd",
    "distill_cmd",
    "export_cmd",
    "bench_cmd",
    "eval_cmd",
    "report_cmd",
    "pipeline_cmd",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse with the toolkit's error format: one line on stderr, exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="datprl-edge",
        description="Distil, fold, quantize, export and benchmark DATPRL-IR restoration for edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"datprl-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("DATPRL_EDGE_DEBUG") == "1"
    try:
        with sigterm_unwinds(), contextlib.nullcontext() if debug else quiet_libraries():
            code = args.func(args)
    except DatprlEdgeError as e:
        if debug:
            raise
        print(f"datprl-edge: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        hint = missing_dependency_hint(e.name or "")
        if debug or hint is None:
            raise
        print(f"datprl-edge: error: {hint}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("datprl-edge: error: out of memory: use smaller images, tiles, batches or --count (see the "
              "limits in the README)", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the file system refused: a full disk, no permission, a file in the way
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"datprl-edge: error: {e.strerror or one_line(e)}{where}", file=sys.stderr)
        return 2
    except Terminated:
        print("datprl-edge: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("datprl-edge: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


# Optional dependencies by top-level module: a device install (numpy + one runtime) has no torch.
_EXTRAS = {"torch": "torch", "torchao": "torch", "safetensors": "torch", "yaml": "torch",
           "matplotlib": "report", "onnx": "export", "onnxscript": "export",
           "onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "export", "coremltools": "export"}


def missing_dependency_hint(module: str) -> str | None:
    top = module.split(".")[0]
    extra = _EXTRAS.get(top)
    if extra is None:
        return None
    return (f"this command needs the Python package '{top}', which is not installed: "
            f"install it, or the toolkit with its extra: pip install 'datprl-edge[{extra}]'")


@contextlib.contextmanager
def quiet_libraries():
    """Keep library chatter off stderr (without --debug): Python warnings, log records below ERROR,
    and what native code writes to file descriptor 2 (protobuf, oneDNN, onnxruntime logs), while
    the toolkit's own messages and progress bars (written through `sys.stderr`) still show."""
    previous_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    saved_stderr, saved_fd = sys.stderr, None
    try:
        if sys.stderr.fileno() != 2:  # stderr already goes elsewhere (captured, embedded): leave it
            raise ValueError("sys.stderr is not file descriptor 2")
        sys.stderr.flush()
        saved_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = open(saved_fd, "w", buffering=1, closefd=False, errors="backslashreplace")
    except (OSError, ValueError, AttributeError):  # no real fd 2 to guard: Python warnings only
        if saved_fd is not None:
            os.close(saved_fd)
        saved_fd = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)
        if saved_fd is not None:
            sys.stderr.flush()
            sys.stderr = saved_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
