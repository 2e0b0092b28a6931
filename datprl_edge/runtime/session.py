"""The base class of every runtime's session (`ArtifactSession`): input checks, padding to the
artifact's pad multiple and cropping back, static and enumerated sizes. numpy only (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ArtifactError, ChannelCountError, ConfigError, NonFiniteInputError


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
        return self._meta_int("pad_multiple", 1, 1, 1024)

    def exact_int8_twin(self):
        """The same artifact with the runtime's exact integer kernels, or None where the runtime has
        no such switch (its INT8 kernels are exact, or it cannot say)."""
        return None

    @property
    def channels(self) -> int:
        value = self._meta_int("img_channel", 3, 1, 3)
        if value == 2:
            raise ArtifactError(f"{self.path.name}: metadata img_channel is 2; artifacts take 1 or 3")
        return value

    def _meta_int(self, key: str, default: int, lo: int, hi: int) -> int:
        """An integer entry of the embedded metadata, checked: a damaged or hand-edited artifact gives
        one error naming the entry, never a division by zero later."""
        text = str(self.metadata.get(key, "") or "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise ArtifactError(f"{self.path.name}: metadata {key} = {text[:20]!r} is not an integer in "
                                f"[{lo}, {hi}]; re-export the artifact")
        return value

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


def env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None
