"""Every error the toolkit raises on purpose, one class per kind.

The CLI turns any `DatprlEdgeError` into one line on stderr and exit code 2, without a traceback.
Messages say what went wrong and, where it helps, how to fix it.
"""

from __future__ import annotations

import difflib


class DatprlEdgeError(Exception):
    """Base class: a problem the user can fix (bad input, missing backend, wrong option)."""

    exit_code = 2


class InputNotFoundError(DatprlEdgeError, FileNotFoundError):
    """A file or folder named on the command line does not exist."""


class ImageReadError(DatprlEdgeError):
    """An image file is corrupt, truncated or of a format we do not read."""


class ChannelCountError(DatprlEdgeError):
    """An image or array has a channel count the model cannot take."""


class NonFiniteInputError(DatprlEdgeError):
    """An input array holds NaN or infinite values."""


class ConfigError(DatprlEdgeError, ValueError):
    """An option or config file is invalid."""


class UnknownArchitectureError(ConfigError):
    """A network type or model name that the registry does not know."""


class CheckpointError(DatprlEdgeError):
    """A checkpoint cannot be read or does not describe a model."""


class PickledCheckpointError(CheckpointError):
    """A checkpoint holds pickled Python objects instead of plain tensors."""


class StateDictMismatchError(CheckpointError):
    """A state dict whose keys or shapes do not match the model."""

    def __init__(self, missing, unexpected, shape_mismatch=(), hint=""):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) e.g. {_few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) e.g. {_few(self.unexpected)}")
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} shape mismatch(es) e.g. {_few(self.shape_mismatch)}")
        msg = "checkpoint does not match the model: " + "; ".join(parts)
        if hint:
            msg += f". Hint: {hint}"
        super().__init__(msg)


class MissingBackendError(DatprlEdgeError, ImportError):
    """An optional backend (onnxruntime, openvino, coremltools, ...) is not installed."""

    def __init__(self, module: str, package: str | None = None, purpose: str = ""):
        package = package or module
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{module} is needed{what}: install {package} (pip install {package})")


class ResourceLimitError(DatprlEdgeError):
    """An input or config that would need more memory or time than a limit allows
    (`datprl_edge.core.limits`: pixels per image, model size, crop and batch size)."""


class PlatformError(DatprlEdgeError):
    """An operation this platform cannot do, such as Core ML prediction off macOS."""


class UnknownChoiceError(ConfigError):
    """A name (target, task, recipe, model) that is not one of the known choices."""

    def __init__(self, kind: str, name: str, choices):
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        msg += f"; did you mean {close[0]!r}?" if close else f"; choose from {', '.join(choices)}"
        super().__init__(msg)


class OutputExistsError(DatprlEdgeError, FileExistsError):
    """An output path already exists, or would overwrite an input."""


class VerificationError(DatprlEdgeError):
    """A converted model (fold, export) does not reproduce its reference closely enough."""


class QualityBudgetError(DatprlEdgeError):
    """A quality budget (`--max-drop`) that the result does not meet."""


class TrainingDivergedError(DatprlEdgeError):
    """Training kept producing a non-finite loss or gradient; the last checkpoint is left intact."""


class BenchmarkError(DatprlEdgeError):
    """Some measurements of a benchmark failed; the others are in its report."""


class ArtifactError(DatprlEdgeError):
    """An exported artifact (.onnx, OpenVINO .xml, .mlpackage) is missing parts or cannot be read."""


def _few(items, n=3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")
