"""What every target shares: artifact naming, embedded metadata, PSNR of outputs, loading optional
backends. numpy only (no torch, no backend): bench/restore run without torch. The export check
lives in `export/verify.py`, the runtime session base class in `runtime/session.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import MissingBackendError
from datprl_edge.core.targets import target_for_suffix

METADATA_PREFIX = "datprl_edge."
INPUT_NAME, OUTPUT_NAME = "input", "output"
# A model with a context (models/context.py) also takes these (1, K) float32 inputs and returns its
# own context; artifacts of models without one have only the image tensors.
CONTEXT_NAME, CONTEXT_MIX_NAME, CONTEXT_OUT_NAME = "context", "context_mix", "context_out"
CONTEXT_DOC = (f"optional inputs {CONTEXT_NAME}, {CONTEXT_MIX_NAME} (1, context_size) float32, zeros when "
               "not given (the model's own behaviour); entry by entry the model uses "
               f"own + {CONTEXT_MIX_NAME} * ({CONTEXT_NAME} - own), where own is this input's value; output "
               f"{CONTEXT_OUT_NAME} (1, context_size) = own; entries and sizes in context_layout")


def io_names(with_context: bool) -> tuple[list, list]:
    """(input names, output names) of an artifact, in order."""
    if not with_context:
        return [INPUT_NAME], [OUTPUT_NAME]
    return [INPUT_NAME, CONTEXT_NAME, CONTEXT_MIX_NAME], [OUTPUT_NAME, CONTEXT_OUT_NAME]


# -- naming -------------------------------------------------------------------------------------

def safe_name(text: str) -> str:
    """A file-name-safe version of a model or task name ('bundled:edge-xs' -> 'edge-xs')."""
    text = str(text)
    if text.startswith("bundled:"):
        text = text[len("bundled:"):]
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-.") or "model"


def artifact_stem(model_name: str, target: str, precision: str) -> str:
    return f"{safe_name(model_name)}_{target}_{precision}"


def artifact_files(path) -> list[Path]:
    """The files that make up an artifact: OpenVINO's .xml has its .bin beside it."""
    path = Path(path)
    spec = target_for_suffix(path)
    return [path] + [path.with_suffix(s) for s in (spec.sidecars if spec else ())]


def artifact_size(path) -> int:
    """Bytes on disk of an artifact (all its files; a .mlpackage is a folder)."""
    total = 0
    for p in artifact_files(path):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


# -- metadata -----------------------------------------------------------------------------------

def build_metadata(*, model_name: str, target: str, precision: str, tasks=None, pad_multiple: int = 8,
                   img_channel: int = 3, tile_size: int = 256, tile_overlap: int = 16,
                   source_sha256: str | None = None, shapes: str = "dynamic", context_layout=(),
                   extra: dict | None = None) -> dict:
    """The metadata every artifact embeds, as flat string key/values. `context_layout` [(name, size)]:
    the artifact's context entries (empty: it takes the image only)."""
    from datprl_edge.core.version import __version__

    meta = {
        "toolkit": "datprl-edge",
        "toolkit_version": __version__,
        "model_name": str(model_name),
        "target": target,
        "precision": precision,
        "tasks": ",".join(tasks) if tasks else "auto",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NCHW",
        "input_range": "[0,1]",
        "input_dtype": "float32",
        "img_channel": str(int(img_channel)),
        "pad_multiple": str(int(pad_multiple)),
        "shapes": shapes,
        "tile_size": str(int(tile_size)),
        "tile_overlap": str(int(tile_overlap)),
        "source_sha256": source_sha256 or "none",
    }
    if context_layout:
        layout = [[str(name), int(size)] for name, size in context_layout]
        meta.update(context_layout=json.dumps(layout), context_size=str(sum(n for _, n in layout)),
                    context=CONTEXT_DOC)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return meta


def strip_prefix(items) -> dict:
    """Toolkit entries of a (key, value) listing, without the key prefix."""
    return {k[len(METADATA_PREFIX):]: str(v) for k, v in items if str(k).startswith(METADATA_PREFIX)}


# -- comparing outputs ---------------------------------------------------------------------

def psnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """`core.metrics.psnr` of an artifact's output against its reference (unclipped): data range 1,
    inf when identical, -inf when the output is not finite."""
    from datprl_edge.core.metrics import psnr

    return psnr(ref, out)


# -- backends and noise -------------------------------------------------------------------------

def require(module: str, package: str | None = None, purpose: str = ""):
    """Import an optional backend or raise MissingBackendError saying what to install."""
    try:
        with quiet():  # coremltools and torchao print version warnings on import
            return importlib.import_module(module)
    except ImportError:
        raise MissingBackendError(module, package, purpose) from None


@contextlib.contextmanager
def quiet():
    """Silence converter chatter (progress bars, warnings, log lines) written from Python."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        logging.disable(previous)


# -- platform ----------------------------------------------------------------------------------

def macos() -> bool:
    return sys.platform == "darwin"
