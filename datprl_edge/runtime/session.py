"""The base class of every runtime's session (`ArtifactSession`): input checks, padding to the
artifact's pad multiple and cropping back, static and enumerated sizes, the context inputs of
artifacts that have them. numpy only (no torch).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from datprl_edge.core.artifacts import io_names
from datprl_edge.core.context import layout_size
from datprl_edge.core.errors import ArtifactError, ChannelCountError, ConfigError, NonFiniteInputError


class ArtifactSession:
    """Runs one exported artifact on NCHW float32 arrays in [0, 1].

    Subclasses set `metadata`, `static_hw` (the one input size of a static artifact, else None),
    `allowed_hw` (enumerated sizes, else None) and implement `_infer(x)` for one (1, C, H, W) array
    and, for artifacts with a context, `_infer_context(x, context, context_mix)` -> (restored,
    context_out) with (1, K) arrays (`_infer` then feeds a zero context: the model's own behaviour).
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

    @functools.cached_property
    def context_layout(self) -> list[tuple[str, int]]:
        """[(entry name, size), ...] of the artifact's context inputs (models/context.py); [] when it
        takes the image only. Parsed once: every inference reads it (zero feeds, input checks)."""
        text = str(self.metadata.get("context_layout", "") or "").strip()
        if not text:
            return []
        try:
            layout = json.loads(text)
        except ValueError:
            layout = None
        ok = isinstance(layout, list) and all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and type(e[1]) is int and e[1] > 0
            for e in layout)
        if not ok:
            raise ArtifactError(f"{self.path.name}: metadata context_layout = {text[:40]!r} is not a JSON "
                                "list of [name, size] pairs; re-export the artifact")
        layout = [(name, size) for name, size in layout]
        size = self._meta_int("context_size", sum(n for _, n in layout), 0, 1 << 20)
        if size != sum(n for _, n in layout):
            raise ArtifactError(f"{self.path.name}: metadata context_size {size} is not the sum of the "
                                f"context_layout sizes ({sum(n for _, n in layout)}); re-export the artifact")
        return layout

    @property
    def context_size(self) -> int:
        """K, the length of the context vector (0: no context inputs)."""
        return layout_size(self.context_layout)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        return np.concatenate([self._run_one(x[i:i + 1]) for i in range(x.shape[0])], axis=0)

    def run_with_context(self, x: np.ndarray, context: np.ndarray, context_mix: np.ndarray):
        """(restored (N, C, H, W), context_out (N, K)) for images with a given context: entry by entry
        the artifact uses own + context_mix * (context - own). `context`, `context_mix`: (N, K) arrays,
        or (1, K) for every image; context_out is each image's own context."""
        k = self.context_size
        if not k:
            raise ConfigError(f"{self.path.name} has no context inputs (a model without a context, or "
                              "exported before they existed): use run(), or re-export the model")
        x = self._check(x)
        context = self._check_context(context, "context", x.shape[0], k)
        context_mix = self._check_context(context_mix, "context_mix", x.shape[0], k)
        def row(a, i):
            return a[i:i + 1] if a.shape[0] > 1 else a

        pairs = [self._run_one(x[i:i + 1], (row(context, i), row(context_mix, i))) for i in range(x.shape[0])]
        return (np.concatenate([p[0] for p in pairs], axis=0),
                np.concatenate([p[1] for p in pairs], axis=0))

    def _check_context(self, a, name: str, n: int, k: int) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise ConfigError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.ndim != 2 or a.shape[1] != k or a.shape[0] not in (1, n):
            raise ConfigError(f"{name} must be an (N, {k}) array for {self.path.name} "
                              f"(N = {n} images, or 1 for all), got shape {a.shape}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise NonFiniteInputError(f"{name} holds NaN or infinite values")
        return a

    def _run_one(self, x, context=None):
        """Restored (1, C, H, W) for one image; with `context` = (context, context_mix) (1, K) arrays,
        (restored, context_out)."""
        h, w = x.shape[2], x.shape[3]
        if self.static_hw is not None:
            if (h, w) != tuple(self.static_hw):
                sh, sw = self.static_hw
                raise ConfigError(f"{self.path.name} takes {sh}x{sw} inputs only, got {h}x{w}: "
                                  "tile the image, or export with --dynamic")
            xp = x
        else:
            m = self.pad_multiple
            ph, pw = (-h) % m, (-w) % m
            xp = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else x
            if self.allowed_hw and tuple(xp.shape[2:]) not in {tuple(s) for s in self.allowed_hw}:
                sizes = ", ".join(f"{a}x{b}" for a, b in self.allowed_hw)
                raise ConfigError(f"{self.path.name} takes the sizes {sizes}; got {h}x{w}: tile the image")
            xp = np.ascontiguousarray(xp)
        if context is None:
            return np.asarray(self._infer(xp), dtype=np.float32)[:, :, :h, :w]
        out, own = self._infer_context(xp, *context)
        return np.asarray(out, dtype=np.float32)[:, :, :h, :w], np.asarray(own, dtype=np.float32)

    def _zero_context(self) -> np.ndarray:
        return np.zeros((1, self.context_size), np.float32)

    def _check_io(self, inputs, outputs) -> None:
        """An artifact whose metadata names a context must have the context inputs and output (one
        without a context runs its first input, whatever its name)."""
        if not self.context_layout:
            return
        want_in, want_out = io_names(True)
        missing = [n for n in want_in if n not in inputs] + [n for n in want_out if n not in outputs]
        if missing:
            have = f"{', '.join(inputs)} -> {', '.join(outputs)}"
            raise ArtifactError(f"{self.path.name} lacks the tensors {', '.join(missing)} its metadata "
                                f"promises (it has {have}); re-export it")

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

    def _infer_context(self, x: np.ndarray, context: np.ndarray, context_mix: np.ndarray):  # pragma: no cover
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({str(self.path)!r})"


def env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def time_table(counter, runs: int, total: float, top: int) -> list:
    """The `top` entries of a {name: microseconds summed over `runs`} counter: ms per run and share
    of `total` (what the runtimes' `profile` functions report)."""
    total = total or 1
    return [{"name": k, "ms": round(v / runs / 1e3, 3), "share": round(v / total, 4)}
            for k, v in counter.most_common(top)]


def check_profile_shape(name: str, dims, shape) -> None:
    """A static artifact is profiled at its own size only (`dims`: its input's H, W)."""
    if all(isinstance(d, int) for d in dims) and tuple(dims) != tuple(shape):
        size = f"{dims[0]}x{dims[1]}"
        raise ConfigError(f"{name} takes {size} only; profile it with --size {size}")

