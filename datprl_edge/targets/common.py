"""What every target shares: artifact naming, embedded metadata, the verification rule and the
runtime session base class. numpy only (no torch, no backend): bench/restore run without torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import ChannelCountError, ConfigError, MissingBackendError, NonFiniteInputError

METADATA_PREFIX = "datprl_edge."
INPUT_NAME, OUTPUT_NAME = "input", "output"
# Lowest PSNR (dB) of an artifact against its torch reference: FP32 and FP16 against the FP32
# model, INT8 against the fake-quant model.
MIN_PSNR_DB = {"fp32": 60.0, "fp16": 45.0, "int8": 40.0}
# Lowest PSNR (dB) of an INT8 artifact run with the runtime's default kernels against the same
# artifact run with its exact integer kernels (where the runtime has both): they differ only where
# the fast kernels lose precision on this CPU (int16 saturation without VNNI), which must not happen.
MIN_EXACT_INT8_PSNR_DB = 60.0


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
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path]


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
                   source_sha256: str | None = None, shapes: str = "dynamic",
                   extra: dict | None = None) -> dict:
    """The metadata every artifact embeds, as flat string key/values."""
    from .. import __version__

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
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return meta


def strip_prefix(items) -> dict:
    """Toolkit entries of a (key, value) listing, without the key prefix."""
    return {k[len(METADATA_PREFIX):]: str(v) for k, v in items if str(k).startswith(METADATA_PREFIX)}


def format_shapes(shapes) -> str:
    """'dynamic' or '256x256,512x512'."""
    return "dynamic" if not shapes else ",".join(f"{h}x{w}" for h, w in shapes)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    if not text or text == "dynamic":
        return []
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",")]


# -- verification -------------------------------------------------------------------------------

@dataclasses.dataclass
class Verification:
    """Artifact vs torch reference on a few images (or, without a runtime, a structural check)."""

    precision: str
    reference: str  # what the artifact was compared with
    numerics_checked: bool
    passed: bool
    threshold_db: float
    psnr_db: float | None = None  # worst image; None when not checked (or outputs identical)
    psnr_db_mean: float | None = None
    max_abs_diff: float | None = None
    images: list = dataclasses.field(default_factory=list)  # names/shapes of the images used
    note: str = ""
    # INT8 only, where the runtime has exact integer kernels: default kernels vs exact kernels
    exact_int8_max_abs_diff: float | None = None  # 0.0: the same numbers
    exact_int8_psnr_db: float | None = None  # worst image; None when identical or not checked

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def psnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR in dB for data range 1 (inputs live in [0, 1]); inf when identical."""
    from skimage.metrics import peak_signal_noise_ratio

    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ConfigError(f"artifact output shape {out.shape} differs from the reference {ref.shape}")
    if not np.isfinite(out).all():
        return -math.inf
    if np.array_equal(ref, out):
        return math.inf
    return float(peak_signal_noise_ratio(ref, out, data_range=1.0))


def compare_outputs(refs, outs, precision: str, reference: str, images=()) -> Verification:
    """Verification from reference and artifact outputs (lists of NCHW arrays)."""
    threshold = MIN_PSNR_DB[precision]
    values = [psnr_db(r, o) for r, o in zip(refs, outs)]
    diffs = [max_abs_diff(r, o) for r, o in zip(refs, outs)]
    worst = min(values)
    finite = [v for v in values if math.isfinite(v)]
    note = ""
    if worst == -math.inf:
        note = "the artifact produced NaN or infinite values"
    elif worst == math.inf:
        note = "outputs identical to the reference"
    return Verification(
        precision=precision, reference=reference, numerics_checked=True, passed=worst >= threshold,
        threshold_db=threshold,
        psnr_db=round(worst, 3) if math.isfinite(worst) else None,
        psnr_db_mean=round(float(np.mean(finite)), 3) if finite else None,
        max_abs_diff=float(max(diffs)) if all(math.isfinite(d) for d in diffs) else None,
        images=list(images), note=note,
    )


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check_exact_int8(verification: Verification, outs, exact_outs) -> Verification:
    """Add the default-vs-exact-kernel comparison of an INT8 artifact to its verification."""
    worst = min(psnr_db(e, o) for e, o in zip(exact_outs, outs))
    verification.exact_int8_psnr_db = round(worst, 3) if math.isfinite(worst) else None
    verification.exact_int8_max_abs_diff = max(max_abs_diff(e, o) for e, o in zip(exact_outs, outs))
    if worst < MIN_EXACT_INT8_PSNR_DB:
        verification.passed = False
        verification.note = (f"on this CPU the runtime's fast INT8 kernels differ from its exact integer "
                             f"kernels ({worst:.1f} dB < {MIN_EXACT_INT8_PSNR_DB} dB): int16 saturation "
                             "without VNNI; re-quantize with this toolkit's scheme (7-bit weights)")
    return verification


def structural_only(precision: str, reference: str, note: str) -> Verification:
    return Verification(precision=precision, reference=reference, numerics_checked=False, passed=True,
                        threshold_db=MIN_PSNR_DB[precision], note=note)


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


# -- runtime sessions ---------------------------------------------------------------------------

class ArtifactSession:
    """Runs one exported artifact on NCHW float32 arrays in [0, 1].

    Subclasses set `metadata`, `static_hw` (the one input size of a static artifact, else None),
    `allowed_hw` (enumerated sizes, else None) and implement `_infer(x)` for one (1, C, H, W) array.
    Inputs of a flexible artifact are zero-padded at the bottom/right to the pad multiple, as the
    model itself does, then cropped back: the same numbers, and graphs traced at a multiple work.
    """

    target = ""
    path: Path
    metadata: dict
    static_hw: tuple | None = None
    allowed_hw: list | None = None

    @property
    def pad_multiple(self) -> int:
        return int(self.metadata.get("pad_multiple", "1") or 1)

    def exact_int8_twin(self):
        """The same artifact with the runtime's exact integer kernels, or None where the runtime has
        no such switch (its INT8 kernels are exact, or it cannot say)."""
        return None

    @property
    def channels(self) -> int:
        return int(self.metadata.get("img_channel", "3") or 3)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        return np.concatenate([self._run_one(x[i:i + 1]) for i in range(x.shape[0])], axis=0)

    def _run_one(self, x):
        h, w = x.shape[2], x.shape[3]
        if self.static_hw is not None:
            if (h, w) != tuple(self.static_hw):
                sh, sw = self.static_hw
                raise ConfigError(f"{self.path.name} takes {sh}x{sw} inputs only, got {h}x{w}: "
                                  "tile the image, or export with --dynamic")
            return np.asarray(self._infer(x), dtype=np.float32)
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        xp = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else x
        if self.allowed_hw and tuple(xp.shape[2:]) not in {tuple(s) for s in self.allowed_hw}:
            sizes = ", ".join(f"{a}x{b}" for a, b in self.allowed_hw)
            raise ConfigError(f"{self.path.name} takes the sizes {sizes}; got {h}x{w}: tile the image")
        out = np.asarray(self._infer(np.ascontiguousarray(xp)), dtype=np.float32)
        return out[:, :, :h, :w]

    def _check(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ConfigError(f"Session.run takes a numpy array, got {type(x).__name__}")
        if x.ndim != 4:
            raise ConfigError(f"Session.run takes an (N, C, H, W) array, got shape {x.shape}")
        if x.shape[1] != self.channels:
            raise ChannelCountError(f"{self.path.name} takes {self.channels}-channel images, "
                                    f"got {x.shape[1]}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise NonFiniteInputError("the input holds NaN or infinite values")
        return x

    def _infer(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({str(self.path)!r})"


def macos() -> bool:
    return sys.platform == "darwin"


def env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None
