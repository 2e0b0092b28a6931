"""What the stages above take from the ones below.

MODEL, resolved once for every command: `locate_model` says what a model argument names (bundled:NAME,
a checkpoint file, a registry name), `resolve_model` (`datprl_edge.load_model`) gives its torch module,
`open_model` also opens exported artifacts (runtime session, no torch), and `export_plan` says what
`export` exports when no MODEL is given. For export: the task fold, the INT8 quantization of a float
model, and the images the artifacts are verified on. Importing this module loads neither numpy nor torch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from datprl_edge.core.errors import CheckpointError, ConfigError, InputNotFoundError

if TYPE_CHECKING:
    import numpy as np

BUNDLED_PREFIX = "bundled:"
DEFAULT_STUDENT = "bundled:edge-xs"  # what `export` exports when no MODEL is given
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


# -- MODEL ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ModelSource:
    """What a MODEL argument names. `kind`: "bundled" (weights shipped with the toolkit), "file" (a
    checkpoint) or "registry" (an architecture by name, randomly initialised: no file). `qat`: a
    stage-"qat" checkpoint (INT8 fake-quant). `name` names artifacts made from it; `label` says where
    its weights come from."""

    spec: str
    kind: str
    path: Path | None = None
    network: object = None  # the network_g of a released .pth (YAML/JSON path or dict)
    name: str = ""
    label: str = ""
    qat: bool = False

    @functools.cached_property
    def sha256(self) -> str:
        if self.path is None:
            return "random-init"
        from datprl_edge.io.checkpoint import sha256_file

        return sha256_file(self.path)

    def load(self, *, qat_result: bool = False):
        """The eval-mode torch module; for a QAT checkpoint with `qat_result`, its `QATResult`."""
        if self.kind == "registry":
            from datprl_edge.models.registry import create_model

            return create_model(self.spec)
        if self.qat:
            if qat_result:
                from datprl_edge.quantize.qat import load_qat

                return load_qat(self.path)
            import datprl_edge.quantize.model  # noqa: F401  (registers the QuantizedModel architecture)
        from datprl_edge.models.loading import load_model

        return load_model(self.path, network=self.network)


def locate_model(spec, network=None, *, random_init: bool = False) -> ModelSource:
    """What MODEL names, without loading it: `bundled:NAME`, a checkpoint file (a released `.pth`
    needs `network`), or with `random_init` a registry name such as edge-xs (untrained; an unknown
    name raises with a "did you mean"). A checkpoint path that does not exist raises."""
    spec = str(spec)
    if spec.startswith(BUNDLED_PREFIX):
        from datprl_edge.models.loading import bundled_exists, bundled_path

        name = spec[len(BUNDLED_PREFIX):]
        path = bundled_path(name)
        label = spec
        student, shipped, _ = name.rpartition("-int8-")
        if shipped and bundled_exists(student):  # named as the student's own artifacts
            name, label = student, f"{BUNDLED_PREFIX}{student} (shipped QAT weights {path.name})"
        return _file_source(spec, "bundled", path, network, name, label)
    path = Path(spec)
    if path.exists() or not random_init or os.sep in spec or "/" in spec \
            or spec.lower().endswith(_CHECKPOINT_SUFFIXES):
        if not path.exists():
            raise InputNotFoundError(f"model file not found: {path}")
        return _file_source(spec, "file", path, network, path.stem, str(path))
    if network is not None:
        raise ConfigError("--network describes a released .pth checkpoint; it cannot go with a registry name")
    from datprl_edge.models.registry import resolve

    resolve(spec)  # unknown names raise with a "did you mean"
    return ModelSource(spec, "registry", name=spec,
                       label=f"{spec} (random init: registry name, no trained weights)")


def _file_source(spec, kind, path, network, name, label) -> ModelSource:
    qat = network is None and _checkpoint_stage(path) == "qat"
    return ModelSource(spec, kind, path, network, name, label + (" (QAT checkpoint)" if qat else ""), qat)


def _checkpoint_stage(path: Path):
    """The stage a toolkit checkpoint records; None for anything else (`load_model` says what is wrong)."""
    if not path.is_file():
        return None
    from datprl_edge.io.checkpoint import read_checkpoint_config

    try:
        return read_checkpoint_config(path).stage
    except CheckpointError:
        return None


def resolve_model(spec, network=None, *, random_init: bool = False):
    """The eval-mode torch module MODEL names (this is `datprl_edge.load_model`).

    `spec` is `bundled:NAME` (weights shipped with the toolkit), a toolkit `.safetensors` (config
    embedded; a stage-"qat" one gives its INT8 fake-quant QuantizedModel), a released BasicSR `.pth`
    (`{'params': ...}` or `{'params_ema': ...}`) with `network` (a YAML/JSON path or a dict holding
    `network_g`), or with `random_init` a registry name (untrained weights).
    """
    return locate_model(spec, network, random_init=random_init).load()


def is_artifact(spec) -> bool:
    """Whether MODEL is an exported artifact (.onnx, OpenVINO .xml, .mlpackage) rather than a checkpoint."""
    from datprl_edge.core.targets import target_for_suffix

    return not str(spec).startswith(BUNDLED_PREFIX) and target_for_suffix(spec) is not None


def open_model(spec, network=None, **session_options):
    """An exported artifact's runtime session (numpy and that runtime only, no torch), else the torch
    module of `resolve_model`. `session_options` go to `runtime.sessions.open_artifact`."""
    if not is_artifact(spec):
        return resolve_model(spec, network)
    if network:
        raise ConfigError("--network applies to .pth checkpoints, not to exported artifacts")
    from datprl_edge.runtime.sessions import open_artifact

    return open_artifact(Path(spec), **session_options)


def shipped_int8(target: str, student: str = DEFAULT_STUDENT) -> Path | None:
    """A bundled student's shipped QAT weights for `target` (bundled:NAME-int8-TARGET), if installed."""
    from datprl_edge.models import loading

    path = loading.WEIGHTS_DIR / f"{student[len(BUNDLED_PREFIX):]}-int8-{target}.safetensors"
    return path if path.is_file() else None


def export_plan(spec, config) -> list[tuple]:
    """[(export config, MODEL)]: what `export` makes of `spec` (one export), or of a bundled student (no
    MODEL: the default one), except that each target's INT8 artifact then comes from that target's
    shipped QAT weights (`shipped_int8`) when installed. A task needs the float student (folded, then
    quantized)."""
    student = DEFAULT_STUDENT if spec is None else str(spec)
    if spec is not None and not (student.startswith(BUNDLED_PREFIX) and "-int8-" not in student):
        return [(config, student)]
    precisions = [p for p in (config.precision or "").split(",") if p]
    shipped = {} if config.task or "int8" not in precisions else \
        {t: p for t in config.targets if (p := shipped_int8(t, student)) is not None}
    if spec is not None and not shipped:
        return [(config, student)]
    plan = [(dataclasses.replace(config, targets=(t,), precision="int8"), BUNDLED_PREFIX + p.stem)
            for t, p in shipped.items()]
    rest = tuple(t for t in config.targets if t not in shipped)
    if rest:
        plan.append((dataclasses.replace(config, targets=rest) if shipped else config, student))
    others = ",".join(p for p in precisions if p != "int8")
    if shipped and others:
        plan.append((dataclasses.replace(config, targets=tuple(shipped), precision=others), student))
    from datprl_edge.models import loading

    weights = loading.WEIGHTS_DIR / f"{DEFAULT_STUDENT[len(BUNDLED_PREFIX):]}.safetensors"
    if spec is None and any(s == DEFAULT_STUDENT for _, s in plan) and not weights.is_file():
        raise InputNotFoundError(f"no bundled student in this install ({DEFAULT_STUDENT} is missing); pass a "
                                 "checkpoint, bundled:NAME or a registry name such as edge-xs")
    return plan


def export_sources(spec, config, network=None):
    """Yield (config, float model or QAT result, ModelSource) for each part of `export_plan`: the config
    names the source (unless `config.model_name` is set) and records its sha256. A registry name gives
    a randomly initialised model; a QAT checkpoint its QAT result (INT8 from its own weights)."""
    for part, part_spec in export_plan(spec, config):
        source = locate_model(part_spec, network, random_init=True)
        model = source.load(qat_result=True)
        yield dataclasses.replace(part, model_name=part.model_name or source.name,
                                  source_sha256=source.sha256), model, source


# -- export: fold, quantize, verification images ----------------------------------------------------

def fold_for_task(model, task: str, calibration: str | None = None):
    """(the statically folded model for one task, fold report) from the fold stage: the task's
    prompt (its pool weights averaged over calibration images) baked into the convs."""
    if model is None:
        raise ConfigError("--task needs a float model to fold")
    from datprl_edge.fold.folding import FoldConfig, fold_static

    result = fold_static(model, FoldConfig(task=task, calibration=calibration or "all", latency_iters=0))
    check = result.verification[task]
    return result.model, {"folded_task": task, "fold_psnr_db": check.get("psnr_db"),
                          "fold_prompt": result.prompts.get(task)}


def quantize_for_target(float_model, qat, target: str, config, progress=None):
    """(QAT result, how it was obtained) for an INT8 artifact of `target`.

    A QAT checkpoint is used as it is; a float model gets the target's quantization
    (`quantize/<target>.py` through `quantize.qat.run_qat`) on the calibration recipe: post-training
    quantization when `config.qat_steps` is 0, else QAT for that many steps, its progress lines
    going to `progress(message)`.
    """
    if qat is not None:
        return qat, f"the given QAT result {qat.source or ''}".strip()
    from datprl_edge.quantize.qat import QATConfig, run_qat

    calib, described = calibration_data(config.calibration or "all", float_model)
    tasks = (config.task,) if config.task else _calibration_tasks(config.calibration or "all")
    val = drop_pairs(tasks, float_model, search=False)
    search = drop_pairs(tasks, float_model, search=True) if config.max_drop is not None else None
    # val_images=0: the held-out pairs are `val` (the task's val split), never calibration crops
    qconfig = QATConfig(target=target, steps=config.qat_steps, val_images=0, max_drop=config.max_drop)
    with _quiet_torch():
        result = run_qat(float_model, qconfig, calib, val=val, search_val=search,
                         log=(lambda m: progress(f"{target} int8: {m}")) if progress else None)
    how = ("post-training quantization (0 QAT steps)" if config.qat_steps == 0
           else f"quantization-aware training ({config.qat_steps} steps)")
    if config.max_drop is not None:
        layers = ", ".join(result.float_layers) or "none"
        how += f", --max-drop {config.max_drop:g} dB (float layers: {layers})"
    how = f"{how} of the float model with the {target} quantizer on {described}"
    skipped = [(n, what) for what in ("calibration", "training")
               if (n := result.metrics.get(f"{what}_crops_skipped"))]
    if skipped:
        crops = " and ".join(f"{n} {what} crop(s)" for n, what in skipped)
        how += (f"; {crops} left out (the float model runs them only through its activation clamps, "
                "models.bounds)")
    return result, how


DROP_PAIRS, DROP_SIZE = 8, 128  # per task: enough to see a 0.1 dB drop, cheap enough for every export
DROP_DESCRIPTION = f"{DROP_PAIRS} held-out val pairs of {DROP_SIZE} px per task"


def drop_pairs(tasks, model, search: bool):
    """{task: (lq, gt)} the INT8 drop against the float model is measured on: the task's held-out 'val'
    pairs, or (`search`) 'train' pairs apart from them for the `--max-drop` search. None where the
    data stage is missing or the model does not take 3-channel images."""
    from datprl_edge.quantize.inputs import search_pairs, validation_pairs

    if not tasks or int(getattr(model, "img_channel", 3)) != 3:
        return None
    make = search_pairs if search else validation_pairs
    try:
        return make(list(tasks), DROP_PAIRS, DROP_SIZE)
    except ImportError:  # an install without the data stage (its modules import on first use)
        return None


def _calibration_tasks(spec: str) -> tuple:
    try:
        return tuple(calibration_set(spec).tasks)
    except ImportError:
        return ()


_SETS: dict = {}


def calibration_set(spec: str):
    """`data.calib.calibration_images(spec)`, kept per process: an export reads it for QAT and for
    the verification images, and building a recipe takes a while."""
    from datprl_edge.data.calib import calibration_images

    key = str(spec)
    if key not in _SETS:
        _SETS[key] = calibration_images(key)
    return _SETS[key]


def calibration_data(spec: str, model):
    """(calibration items for `qat.run_qat`, description)."""
    try:
        calib = calibration_set(spec)
    except ImportError:  # an install without the data stage: stand-in images
        channels = int(getattr(model, "img_channel", 3))
        images = [img[0] for _, img in _stand_in_images(8, (96, 96), channels)]
        return images, f"{len(images)} stand-in images (no calibration recipes in this install)"
    items = calib.pairs()
    return items, f"{calib.description} ({len(items)} pairs)"


def _stand_in_images(count, size, channels):
    images = [(n, _to_channels(_crop(img, *size), channels)) for n, img in _from_samples(count)]
    seed = 0
    while len(images) < count:
        images.append((f"synthetic-{seed}", _synthetic(*size, channels, seed)))
        seed += 1
    return images


def _quiet_torch():
    from datprl_edge.core.artifacts import quiet

    return quiet()


def verification_images(config, channels: int) -> list[tuple[str, np.ndarray]]:
    """`config.verify_images` (name, (1, C, H, W) float32 in [0, 1]) images at `config.verify_size`.

    From the calibration recipe when one is set, else the bundled validation samples, else
    deterministic synthetic images (smooth gradients, edges and noise) when no samples ship.
    """
    count, (h, w) = config.verify_images, config.verify_size
    if config.calibration:
        images = [(name, _to_channels(_crop(img, h, w), channels))
                  for name, img in _from_calibration(config.calibration, count)]
        if images:
            return images[:count]
    return _stand_in_images(count, (h, w), channels)


def _from_calibration(spec: str, count: int) -> list:
    """The first input of each task in turn, so that a few images cover several tasks."""
    try:
        tasks = calibration_set(spec).tasks
    except ImportError:  # no recipes in this install: the stand-in images are used
        return []
    out, i = [], 0
    while len(out) < count and any(i < len(t.lq) for t in tasks.values()):
        out += [(f"{t.task} #{i}", t.lq[i]) for t in tasks.values() if i < len(t.lq)]
        i += 1
    return out[:count]


def _from_samples(count: int) -> list:
    try:
        from datprl_edge.data.samples import list_samples, load_sample

        samples = list_samples(split="val") or list_samples()
        return [(s.name, load_sample(s)) for s in samples[:count]]
    except (ImportError, OSError):
        return []


def _hwc(arr) -> np.ndarray:
    import numpy as np

    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    return arr if arr.ndim == 3 else arr[:, :, None]


def _crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre crop to h x w, tiling first (reflected) when the image is smaller."""
    import numpy as np

    img = _hwc(img)
    if img.shape[0] < h or img.shape[1] < w:
        grow = ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0))
        img = np.pad(img, grow, mode="reflect")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    import numpy as np

    if img.shape[2] != channels:
        img = img.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(img[:, :, :1], channels, axis=2)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1)[None], dtype=np.float32)


def _synthetic(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((channels, h, w), np.float32)
    for c in range(channels):
        fx, fy = rng.uniform(1, 4, size=2)
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + c)
        edges = 0.15 * ((xx // max(w // 4, 1) + yy // max(h // 4, 1)) % 2)
        img[c] = base + edges + 0.05 * rng.standard_normal((h, w))
    return np.clip(img, 0.0, 1.0)[None]
