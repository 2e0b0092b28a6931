"""Stage: export a model to ONNX, OpenVINO and Core ML, verified against PyTorch, with metadata.

`export_model(model, ExportConfig, out_dir) -> list[ArtifactReport]`. Each artifact is written in a
temporary folder, run in its runtime on a few images against the torch reference (the FP32 model,
or the fake-quant model for INT8), and only moved into `out_dir` when it passes; its report goes
to `out_dir/<stem>.json`. The input model is never modified.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from datprl_edge.core.artifacts import (
    artifact_files,
    artifact_size,
    artifact_stem,
    build_metadata,
    io_names,
    macos,
    quiet,
    require,
)
from datprl_edge.core.errors import ConfigError, OutputExistsError, VerificationError
from datprl_edge.core.shapes import format_shapes
from datprl_edge.core.targets import TargetSpec, parse_targets, stage_module
from datprl_edge.export.config import ExportConfig
from datprl_edge.export.verify import (
    MIN_EXACT_INT8_PSNR_DB,
    check_context,
    check_exact_int8,
    compare_outputs,
    int8_drop,
    max_abs_diff,
    structural_only,
    warn_drop,
)
from datprl_edge.io.atomic import check_output_dir, partial_dir, swap_in
from datprl_edge.sources import DROP_DESCRIPTION, fold_for_task, quantize_for_target, verification_images

__all__ = ["ExportConfig", "ArtifactReport", "export_model"]


@dataclasses.dataclass
class ArtifactReport:
    target: str
    precision: str
    path: Path
    files: list
    size_bytes: int
    metadata: dict
    verification: object  # export.verify.Verification
    structure: dict
    notes: dict

    @property
    def passed(self) -> bool:
        return self.verification.passed

    def to_dict(self) -> dict:
        from datprl_edge.core.host import isa_block

        return {"artifact": self.path.name, "files": [Path(f).name for f in self.files],
                "exported_on": isa_block(),
                "target": self.target, "precision": self.precision, "size_bytes": self.size_bytes,
                "numerics_checked": self.verification.numerics_checked,
                "verification": self.verification.to_dict(), "metadata": self.metadata,
                "structure": {k: v for k, v in self.structure.items() if k != "metadata"},
                "notes": self.notes}


@dataclasses.dataclass
class ExportJob:
    """What a target exporter needs for one artifact (plain attributes; see export/<target>.py)."""

    module: object  # float torch module (eval), folded when a task is fixed
    target: str
    precision: str
    shapes: list
    metadata: dict
    channels: int
    pad_multiple: int
    tile_size: int
    compute_units: str
    quant: object = None  # QAT result (int8 only)
    cache: dict = dataclasses.field(default_factory=dict)
    notes: dict = dataclasses.field(default_factory=dict)  # for the report (e.g. the fold)
    # [(name, size)] of the artifact's context inputs; [] for an image-only artifact
    context_layout: list = dataclasses.field(default_factory=list)
    onnx_rewrites: bool = True  # ExportConfig.onnx_rewrites

    @property
    def dynamic(self) -> bool:
        return len(self.shapes) != 1

    @property
    def context_size(self) -> int:
        return sum(int(n) for _, n in self.context_layout)

    def io_names(self) -> tuple[list, list]:
        return io_names(bool(self.context_layout))

    def example_inputs(self) -> tuple:
        """(image,) or (image, context, context_mix): what the programs below are traced with."""
        import torch

        if len(self.shapes) >= 1:
            h, w = self.shapes[0]
        else:
            h = w = max(64, 4 * self.pad_multiple)
        gen = torch.Generator().manual_seed(0)
        image = torch.rand(1, self.channels, h, w, generator=gen)
        if not self.context_layout:
            return (image,)
        k = self.context_size
        return image, torch.rand(1, k, generator=gen), torch.rand(1, k, generator=gen)

    def float_program(self):
        """What float artifacts are converted from, as a program of `example_inputs()` (positional),
        cached: the module with its gated convs cut in halves (`split_copy`, exact), as the INT8
        schemes have them, so that no runtime runs a channel split."""
        from datprl_edge.models.student_blocks import split_copy

        key = ("float_program", id(self.module))
        if key not in self.cache:
            self.cache[key] = self._positional(split_copy(self.module))
        return self.cache[key]

    def _positional(self, module):
        """`module` called like `example_inputs()`: as it is, or through `with_context_inputs`."""
        return with_context_inputs(module) if self.context_layout else module

    def quant_program(self):
        """The QAT result's converted program; with a context it takes (image, context, context_mix)."""
        key = ("converted", id(self.quant))
        if key not in self.cache:
            with quiet():
                self.cache[key] = self.quant.converted()
        return self.cache[key]

    def program(self):
        """What this artifact is converted from: the float program, or the INT8 one."""
        return self.quant_program() if self.precision == "int8" else self.float_program()

    def reference_program(self):
        """The torch reference, called like `program()`: the float module as given, or for INT8 the QAT
        result's fake-quant module (a PT2E graph takes the context positionally, an eager module
        as keywords)."""
        if self.precision != "int8":
            return self._positional(self.module)
        import torch

        prepared = self.quant.prepared
        if self.context_layout and not isinstance(prepared, torch.fx.GraphModule):
            return with_context_inputs(prepared)
        return prepared


def with_context_inputs(module):
    """A student as a module of (image, context, context_mix) -> (restored, context_out), positional
    (the students take the context as keywords after their other options)."""
    from datprl_edge.quantize.feed import ContextCall

    return ContextCall(module).eval()


def export_model(model, config: ExportConfig, out_dir, *, progress=None) -> list[ArtifactReport]:
    """Export `model` (a float nn.Module, or a QAT result for INT8) to every configured target.

    Raises VerificationError after trying every target if any artifact failed its check (the
    passing ones are kept). `progress(message)` is called before each artifact.
    """
    from datprl_edge.models.context import context_layout

    out_dir = check_output_dir(out_dir)
    float_model, qat = _split_source(model)
    plan = [(spec, p) for spec in parse_targets(config.targets)
            for p in config.precisions_for(spec.default_precision)]
    channels, pad_multiple = _geometry(float_model if float_model is not None else qat.prepared)
    if config.task:
        from datprl_edge.data.tasks import get_task

        get_task(config.task)  # a typo gets "did you mean" before any work
    for spec, precision in plan:
        _check_combination(spec, precision, config, qat, pad_multiple)
        _require_backends(spec, precision)
    name = config.model_name or _model_name(float_model if float_model is not None else qat.prepared)
    stem_name = f"{name}-{config.task}" if config.task else name
    stems = {(spec.name, p): artifact_stem(stem_name, spec.name, p) for spec, p in plan}
    for spec, precision in plan:
        stem = stems[(spec.name, precision)]
        for p in artifact_files(out_dir / f"{stem}{spec.suffix}") + [out_dir / f"{stem}.json"]:
            if p.exists() and not config.overwrite:
                raise OutputExistsError(f"{p} exists; pass --overwrite or choose another output folder")
    fold_notes: dict = {}
    if float_model is not None:
        float_model = copy.deepcopy(float_model).eval()
        if config.task:
            if progress:
                progress(f"folding the prompts for {config.task}")
            float_model, fold_notes = fold_for_task(float_model, config.task, config.calibration)
    images = verification_images(config, channels)
    routing = _routing_table(float_model, qat, config, progress)
    with _new_folder(out_dir):
        cache: dict = {}
        reports, failures = [], []
        for spec, precision in plan:
            if progress:
                progress(f"exporting {spec.name} {precision}")
            quant, int8_source, drop = None, None, None
            layout = context_layout(float_model) if float_model is not None else []
            if precision == "int8":
                quant, int8_source = quantize_for_target(float_model, qat, spec.name, config, progress)
                layout = [tuple(e) for e in getattr(quant, "context_layout", None) or []]
                drop = int8_drop(quant, float_model is not None and qat is None, DROP_DESCRIPTION)
                warn_drop(progress, spec.name, drop, config)
            meta = build_metadata(
                model_name=name, target=spec.name, precision=precision,
                tasks=[config.task] if config.task else _folded_tasks(float_model, qat),
                pad_multiple=pad_multiple, img_channel=channels,
                tile_size=config.tile_size, tile_overlap=config.tile_overlap,
                source_sha256=config.source_sha256,
                shapes=format_shapes(config.shapes), context_layout=layout,
                extra={**_target_extra(spec, precision, config, pad_multiple, quant), **routing})
            job = ExportJob(module=float_model, target=spec.name, precision=precision,
                            shapes=list(config.shapes), metadata=meta, channels=channels,
                            pad_multiple=pad_multiple,
                            tile_size=config.tile_size, compute_units=config.compute_units, quant=quant,
                            cache=cache, notes={**fold_notes, **({"int8_drop_db": drop} if drop else {})},
                            context_layout=list(layout), onnx_rewrites=config.onnx_rewrites)
            report = _export_one(spec, job, images, out_dir, stems[(spec.name, precision)], int8_source)
            (reports if report.passed else failures).append(report)
        if failures:
            text = "; ".join(f"{r.path.name}: {_failure(r.verification)}" for r in failures)
            raise VerificationError(f"export verification failed, artifact not kept: {text}")
    return reports


@contextlib.contextmanager
def _new_folder(path: Path):
    """Create `path` if missing; a failed export removes it again when it left it empty."""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not any(path.iterdir()):
            path.rmdir()
        raise


def _failure(v) -> str:
    if v.exact_int8_psnr_db is not None and v.exact_int8_psnr_db < MIN_EXACT_INT8_PSNR_DB:
        return v.note
    main_failed = v.max_abs_diff is None or (v.psnr_db is not None and v.psnr_db < v.threshold_db)
    if v.context_passed is False and not main_failed:
        return v.note
    return f"{v.psnr_db} dB < {v.threshold_db} dB (max abs diff {v.max_abs_diff})"


def _export_one(spec: TargetSpec, job: ExportJob, images, out_dir: Path, stem: str,
                int8_source) -> ArtifactReport:
    from datprl_edge.runtime.sessions import inspect_artifact

    final = out_dir / f"{stem}{spec.suffix}"
    with _work_dir(out_dir, stem) as tmp:
        path = Path(tmp) / final.name
        notes = stage_module(spec, "export").export(job, path)
        if int8_source:
            notes["int8_source"] = int8_source
        notes.update(job.notes)
        structure = inspect_artifact(path)
        verification = _verify(spec, job, path, images, structure)
        files = [out_dir / p.name for p in artifact_files(path)]
        report = ArtifactReport(spec.name, job.precision, final, files, artifact_size(path), job.metadata,
                                verification, structure, notes)
        if not verification.passed:
            return report  # the temporary folder (and the artifact) goes away
        (Path(tmp) / f"{stem}.json").write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        for p in artifact_files(path) + [Path(tmp) / f"{stem}.json"]:
            _replace(p, out_dir / p.name)
    return report


def _verify(spec, job: ExportJob, path: Path, images, structure: dict):
    int8 = job.precision == "int8"
    reference_model = job.reference_program()
    reference = "fake-quant torch model (QAT prepared)" if int8 else "FP32 torch model"
    if spec.structure_check:
        runtime = stage_module(spec, "runtime")
        float_module = job.module if job.module is not None else job.quant.prepared
        problems = runtime.check_structure(structure, job.precision, _param_count(float_module), job.shapes)
        if problems:
            raise VerificationError(f"{spec.label} package failed its structural check: "
                                    f"{'; '.join(problems)}")
        if spec.needs_macos and not macos():
            return structural_only(job.precision, reference,
                                   f"numerics not checked: {spec.label} prediction needs macOS. Structure "
                                   f"checked: {runtime.STRUCTURE_CHECKED}")
    from datprl_edge.runtime.sessions import open_artifact

    session = open_artifact(path)
    batches = [_fit(img, job) for _, img in images]
    with _reference_mode(job):
        refs = [_own_reference(reference_model, x, job)[0] for x in batches]
    outs = [session.run(x) for x in batches]
    names = [f"{name} {x.shape[2]}x{x.shape[3]}" for (name, _), x in zip(images, batches)]
    verification = compare_outputs(refs, outs, job.precision, reference, names)
    if job.context_layout:
        verification = _check_context_input(verification, session, reference_model, batches, refs[0], job)
    twin = session.exact_int8_twin() if int8 else None
    if twin is not None:
        verification = check_exact_int8(verification, outs, [twin.run(x) for x in batches])
    return verification


def _check_context_input(verification, session, reference_model, batches, own_ref, job: ExportJob):
    """Run the first image with the own context of another (the second image, else the first one
    inverted) at mix 1, in torch and in the artifact: the context inputs must be wired."""
    a = batches[0]
    b = batches[1] if len(batches) > 1 else np.ascontiguousarray(1.0 - a)
    ones = np.ones((1, job.context_size), np.float32)
    with _reference_mode(job):
        other = _own_reference(reference_model, b, job)[1]
        ref, ref_own = reference_output(reference_model, a, job.pad_multiple, other, ones)
    out, out_own = session.run_with_context(a, other, ones)
    verification = check_context(verification, ref, out, ref_own, out_own)
    verification.context_effect_max_abs_diff = max_abs_diff(ref, own_ref)
    return verification


def _reference_mode(job: ExportJob):
    if job.precision != "int8":
        return contextlib.nullcontext()
    from datprl_edge.quantize.scope import frozen_observers

    # the reference must not move the ranges the artifact was built with
    return frozen_observers(job.quant.prepared)


def _own_reference(module, x: np.ndarray, job: ExportJob):
    """(restored, own context or None) of the reference program with a zero context (own behaviour)."""
    if not job.context_layout:
        return reference_output(module, x, job.pad_multiple), None
    zeros = np.zeros((x.shape[0], job.context_size), np.float32)
    return reference_output(module, x, job.pad_multiple, zeros, zeros)


def _routing_table(float_model, qat, config: ExportConfig, progress) -> dict:
    """{"routing_table": JSON} for a model whose prompts are routed (not folded): each task's and
    domain's prompt-pool weights (`fold.routing`), so `restore --task/--domain` can force them through
    the artifact's context on a device. A QAT result alone gives them through its own context output."""
    from datprl_edge.core.context import ROUTING_ENTRIES
    from datprl_edge.fold.routing import has_routing, routing_table

    layout = [tuple(e) for e in getattr(qat, "context_layout", None) or []]
    if config.task:
        return {}
    if float_model is not None and has_routing(float_model):
        source = float_model
    elif float_model is None and all(e in {n for n, _ in layout} for e in ROUTING_ENTRIES):
        source = _ProgramRouting(qat.prepared, layout, int((qat.base_options or {}).get("img_channel", 3)))
    else:
        return {}
    if progress:
        progress("tabulating the routing of each task (calibration images)")
    table = routing_table(source, calibration=config.calibration or "all")
    return {"routing_table": json.dumps(table, separators=(",", ":"))}


class _ProgramRouting:
    """A QAT program seen by `fold.routing`: `conditioning(x)` gives the pool weights its own context
    output holds (mix 0: the program's own routing)."""

    def __init__(self, program, layout, img_channel: int):
        from datprl_edge.core.context import layout_size, layout_slices

        self.program, self.layout, self.slices = program, layout, layout_slices(layout)
        self.size = layout_size(layout)
        self.img_channel = img_channel

    def context_layout(self):
        return self.layout

    def conditioning(self, x):
        import types

        import torch

        from datprl_edge.quantize.feed import call_with_context
        from datprl_edge.quantize.scope import frozen_observers

        zeros = x.new_zeros(x.shape[0], self.size)
        with torch.no_grad(), frozen_observers(self.program):
            _, own = call_with_context(self.program, x, zeros, zeros)
        return types.SimpleNamespace(domain_weights=own[:, self.slices["domain_weights"]],
                                     task_weights=own[:, self.slices["task_weights"]])


def reference_output(module, x: np.ndarray, pad_multiple: int, context=None, context_mix=None):
    """The torch output for an NCHW array, padded to the pad multiple as the model does itself
    (so programs traced at a multiple of it run at any size) and cropped back.

    With `context` and `context_mix` (N, K) arrays, `module` is a program of (image, context,
    context_mix) (see `with_context_inputs`) and the result is (restored, own context)."""
    import torch

    h, w = x.shape[2], x.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (0, (-h) % pad_multiple), (0, (-w) % pad_multiple)))
    args = [torch.from_numpy(np.ascontiguousarray(xp))]
    if context is not None:
        args += [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (context, context_mix)]
    with torch.no_grad():
        if context is None:  # the image alone: a zero context where the program takes one
            from datprl_edge.quantize.feed import run_image

            return run_image(module, args[0]).detach().float().numpy()[:, :, :h, :w]
        out = module(*args)
    restored, own = out
    return restored.detach().float().numpy()[:, :, :h, :w], own.detach().float().numpy()


def _fit(img: np.ndarray, job: ExportJob) -> np.ndarray:
    """A verification image at a size the artifact takes (its static size when it has one)."""
    if len(job.shapes) == 1:
        h, w = job.shapes[0]
        reps = (1, 1, -(-h // img.shape[2]), -(-w // img.shape[3]))
        return np.ascontiguousarray(np.tile(img, reps)[:, :, :h, :w])
    if job.shapes:
        h, w = job.shapes[0]
        return _fit(img, dataclasses.replace(job, shapes=[(h, w)]))
    return img


def _split_source(model):
    """(float module or None, QAT result or None)."""
    if hasattr(model, "prepared") and hasattr(model, "converted"):
        return getattr(model, "base_model", None), model
    return model, None


def _check_combination(spec: TargetSpec, precision: str, config: ExportConfig, qat,
                       pad_multiple: int) -> None:
    if config.tile_size % pad_multiple:
        raise ConfigError(f"tile size {config.tile_size} must be a multiple of the model's pad multiple "
                          f"{pad_multiple}")
    if spec.pad_traced:
        for h, w in config.shapes:
            if h % pad_multiple or w % pad_multiple:
                hint = f"{h + (-h) % pad_multiple}x{w + (-w) % pad_multiple}"
                raise ConfigError(f"{spec.label} shapes must be multiples of the model's pad multiple "
                                  f"{pad_multiple}; got {h}x{w} (try {hint})")
    if precision not in spec.precisions:
        raise ConfigError(f"{spec.name} does not support {precision}; choose {', '.join(spec.precisions)}")
    if qat is not None:
        if precision != "int8":
            raise ConfigError(f"this is a QAT checkpoint: it exports at int8 only, not {precision} "
                              "(export the float checkpoint it came from for fp32/fp16)")
        if config.task:
            raise ConfigError("--task folds the float model before quantization; fold first, then run QAT, "
                              "then export the QAT checkpoint without --task")
        qat_target = getattr(qat, "target", None)
        if qat_target and not spec.accepts_qat(qat_target):
            raise ConfigError(f"this QAT checkpoint was trained for {qat_target}; export it with --target "
                              f"{qat_target}, or run qat for {spec.name}")
    if not spec.shape_list and len(config.shapes) > 1:
        raise ConfigError(f"{spec.title} takes one static shape or dynamic shapes, not a list; "
                          "pass one --shape or --dynamic")


def _require_backends(spec: TargetSpec, precision: str) -> None:
    for module, package in spec.export_modules:
        require(module, package, f"{spec.title} export")
    if not spec.needs_macos or macos():
        require(spec.runtime_module, spec.runtime_package, f"verifying {spec.title} artifacts")
    if precision == "fp16":
        for module, package in spec.fp16_modules:
            require(module, package, f"FP16 {spec.label} conversion")


def _replace(src: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        swap_in(src, dest)
    else:
        os.replace(src, dest)


def _geometry(model) -> tuple[int, int]:
    channels = int(getattr(model, "img_channel", 0) or _options(model).get("img_channel", 3))
    pad = int(getattr(model, "pad_multiple", 0) or 2 ** len(_options(model).get("enc_blk_nums", [0, 0, 0])))
    return channels, pad


def _options(model) -> dict:
    cfg = getattr(model, "datprl_config", None) or {}
    return dict(cfg.get("options", {}))


def _folded_tasks(float_model, qat) -> list | None:
    """The task(s) a statically folded model (or a QAT result of one) was folded for, else None."""
    if float_model is not None:
        tasks = getattr(float_model, "tasks", None)
    else:
        tasks = (getattr(qat, "base_options", None) or {}).get("tasks")
    return list(tasks) if isinstance(tasks, (list, tuple)) and tasks else None


def _model_name(model) -> str:
    cfg = getattr(model, "datprl_config", None) or {}
    return str(cfg.get("name") or cfg.get("arch") or "model")


def _target_extra(spec: TargetSpec, precision: str, config: ExportConfig, pad_multiple: int,
                  quant) -> dict:
    extra = {"profile": config.profile} if config.profile else {}
    if spec.compute_units:
        extra["compute_units"] = config.compute_units
    own_int8 = precision == "int8" and spec.own_int8_pad_traced and quant.target == spec.name
    if spec.pad_traced or own_int8:  # traced at a multiple of the pad multiple: pad other sizes first
        extra["input_multiple"] = str(pad_multiple)
    if quant is not None:
        extra["int8_scheme"] = getattr(quant, "scheme", {}).get("stack", quant.target)
    return extra


def _param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters())) if model is not None else 0



@contextlib.contextmanager
def _work_dir(out_dir: Path, stem: str):
    """A `.STEM.PID.*.partial` folder beside the outputs (what a killed export left is removed first,
    see `io.atomic`), deleted when the artifact is in place or has failed."""
    tmp = partial_dir(out_dir, stem)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
