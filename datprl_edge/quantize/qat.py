"""INT8 quantization-aware training per target, with distillation from the float model.

`run_qat(model, QATConfig(target=...), calib)` prepares a fake-quant copy with the target's
quantizer (`quantize/<target>.py`), calibrates its ranges on the calibration images, and,
for steps > 0, fine-tunes it against the FP32 model's (or a teacher's) output. `steps=0` is the
post-training (PTQ) baseline. Calibration skips crops the float model runs only through its
activation clamps (`models.bounds.within_bounds`); the INT8 model is distilled from and scored against
the model as exported, clamps included. `max_drop` runs the sensitivity search (`sensitivity.py`) that keeps
the most sensitive layers in float. `save_qat` / `load_qat` store the prepared state as a
stage-"qat" checkpoint that rebuilds by re-running the same prepare on the base model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

from datprl_edge.core import limits
from datprl_edge.core.errors import CheckpointError, ConfigError, QualityBudgetError, UnknownChoiceError
from datprl_edge.core.metrics import check_drop_budget
from datprl_edge.core.targets import target_names

TARGETS = target_names()
DISTILL_LOSSES = ("l1", "psnr")
QUANTIZED_ARCH = "QuantizedModel"
_LAYOUT_ATTR = "_datprl_context_layout"


@dataclasses.dataclass(frozen=True)
class QATConfig:
    target: str
    steps: int = 300
    batch_size: int = 4
    crop: int = 64
    lr: float = 3e-5
    gt_weight: float = 0.1  # weight of L1 to ground truth, when the calibration data has it
    routing_weight: float = 0.0  # weight of the routing-logit match to the reference (loop.train)
    distill_loss: str = "l1"  # match to the reference output: "l1", or "psnr" (mean per-image dB, loop.train)
    calib_batches: int = 8  # batches that set the activation ranges before training
    # fraction of the steps after which ranges stop moving; None: the scheme's (scope.scheme_freeze_at)
    freeze_observers_at: float | None = None
    float_layers: tuple = ()
    max_drop: float | None = None  # dB; runs the sensitivity search, and the result must meet it
    best_effort: bool = False  # with max_drop: keep the closest result instead of failing
    val_images: int = 8  # held-out calibration images for metrics when no validation set is given
    seed: int = 0
    checkpoint_every: int = 0  # with run_qat(state_dir=...): atomic resumable state every N steps
    # every N steps (and before the first) score the worst-task drop on the search pairs and keep the
    # best state (loop.train); 0: keep the last
    select_every: int = 0
    example_size: int = 64
    context: bool = True  # a model with a context (models.context): the INT8 program takes it too

    def __post_init__(self):
        if self.target not in TARGETS:
            raise UnknownChoiceError("QAT target", str(self.target), TARGETS)
        _int(self.steps, "steps", 0, "use 0 for post-training quantization")
        _int(self.batch_size, "batch_size", 1)
        _int(self.crop, "crop", 16)
        limits.check("batch", self.batch_size, "QAT batch_size")
        limits.check("crop", self.crop, "QAT crop")
        _int(self.calib_batches, "calib_batches", 1)
        _int(self.val_images, "val_images", 0)
        _int(self.checkpoint_every, "checkpoint_every", 0)
        _int(self.select_every, "select_every", 0, "0 keeps the last step")
        _int(self.example_size, "example_size", 16)
        if self.crop % 8 or self.example_size % 8:
            raise ConfigError(f"crop ({self.crop}) and example_size ({self.example_size}) must be "
                              "multiples of 8")
        if self.distill_loss not in DISTILL_LOSSES:
            raise UnknownChoiceError("QAT distill_loss", str(self.distill_loss), DISTILL_LOSSES)
        if not isinstance(self.context, bool):
            raise ConfigError(f"QAT context must be true or false, got {self.context!r}")
        for name in ("lr", "gt_weight", "routing_weight", "freeze_observers_at"):
            v = getattr(self, name)
            if v is None and name == "freeze_observers_at":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"QAT {name} must be a finite number >= 0, got {v!r}")
        if self.freeze_observers_at is not None and self.freeze_observers_at > 1:
            raise ConfigError(f"freeze_observers_at is a fraction of the steps (0..1), "
                              f"got {self.freeze_observers_at}")
        if self.max_drop is not None:
            check_drop_budget(self.max_drop, "max_drop")
        layers = self.float_layers
        if isinstance(layers, str):
            layers = [s.strip() for s in layers.split(",") if s.strip()]
        object.__setattr__(self, "float_layers", tuple(layers))


def _int(v, name, minimum, hint=""):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"QAT {name} must be an integer >= {minimum}, got {v!r}"
                          + (f" ({hint})" if hint else ""))


@dataclasses.dataclass
class QATResult:
    prepared: object  # torch fake-quant module: the INT8 reference
    target: str
    config: QATConfig
    float_layers: tuple
    base_arch: str
    base_options: dict
    example_shape: tuple
    metrics: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    # [[name, size], ...] of the context the INT8 program takes next to the image ([]: image only)
    context_layout: list = dataclasses.field(default_factory=list)

    @property
    def scheme(self) -> dict:
        return quant_module(self.target).SCHEME

    @property
    def steps(self) -> int:
        return self.config.steps

    def converted(self):
        """What the target's INT8 exporter takes (see the target's SCHEME["export"]). With a
        `context_layout`, it is called as (image, context, context_mix) and returns (restored,
        context_out), like the float student with a context."""
        import torch

        from datprl_edge.quantize.feed import ContextCall

        program = quant_module(self.target).convert(self.prepared)
        if self.context_layout and not isinstance(program, torch.fx.GraphModule):
            program = ContextCall(program).eval()
        return program


def quant_module(target: str):
    if target not in TARGETS:
        raise UnknownChoiceError("QAT target", str(target), TARGETS)
    from datprl_edge.core.targets import stage_module

    return stage_module(target, "quantize")


def run_qat(model, config: QATConfig, calib, teacher=None, val=None, *, search_val=None, state_dir=None,
            log=None) -> QATResult:
    """INT8 QAT (or PTQ for steps=0) of a copy of `model` for `config.target`.

    `calib`: calibration items (see `loop.as_pairs`). `teacher`: distil from it instead of the
    FP32 model. `val`: {task: (lq, gt)} tensors for the reported metrics (default: held-out
    calibration pairs); `search_val`: pairs the sensitivity search decides on (default: `val`; pass
    other pairs to keep the reported numbers unbiased) and, with `config.select_every`, the pairs
    the kept training step is chosen on (required then). `state_dir`: resumable training state.
    `log(message)` receives progress lines.
    """
    from datprl_edge.models.bounds import OUT_OF_RANGE, current_bounds, set_act_bounds, within_bounds
    from datprl_edge.models.context import context_layout
    from datprl_edge.models.registry import model_config
    from datprl_edge.quantize.loop import (
        as_pairs,
        calibration_batches,
        drops,
        evaluate,
        freeze_fraction,
        train,
    )
    from datprl_edge.quantize.scope import (
        calibrate,
        check_float_layers,
        example_inputs,
        prompt_path_modules,
        scheme_ranges,
    )

    if not hasattr(model, "state_dict"):
        raise ConfigError("run_qat needs a torch model (nn.Module)")
    # `bounded`: the FP32 model as exported, clamps included (models.bounds): the reference the INT8
    # model is distilled from and scored against. `base`, without them, is quantized: its fake-quant
    # ranges bound the activations, calibrated on crops the float model runs within its bounds.
    bounded = copy.deepcopy(model).eval()
    base = copy.deepcopy(model).eval()
    set_act_bounds(base, None)
    try:
        arch, options = model_config(base)
    except Exception:
        raise ConfigError("QAT needs a model built by the toolkit (create_model / load_model) so that the "
                          "result can be rebuilt") from None
    channels = int(getattr(base, "img_channel", 3))
    multiple = int(getattr(base, "pad_multiple", 8))
    pairs = as_pairs(calib, channels)
    train_pairs, val = _split_validation(pairs, val, config, multiple)
    float_layers = check_float_layers(base, config.float_layers)
    layout = [[name, int(size)] for name, size in context_layout(base)] if config.context else []
    example = example_inputs(base, config.example_size, with_context=bool(layout))

    def in_bounds(x):
        return within_bounds(bounded, x)

    batches, skipped = calibration_batches(train_pairs, config.calib_batches, config.batch_size, config.crop,
                                           config.seed, keep=in_bounds)
    ref = bounded if teacher is None else (copy.deepcopy(teacher).eval() if teacher.training else teacher)
    say = log or (lambda _msg: None)
    if skipped:
        say(f"left {skipped} calibration crop(s) out: the float model runs them only through its "
            f"activation clamps (a conv past {OUT_OF_RANGE:g}x its bound)")
    qm = quant_module(config.target)
    if config.freeze_observers_at is None:  # recorded as the value used
        config = dataclasses.replace(config, freeze_observers_at=freeze_fraction(config))

    selection, search_ref = {}, None  # search_ref: FP32 scores on search_val, computed once
    turned_down = {}  # training crops left out as calibration crops are (the same draws in every build)
    if config.select_every and config.steps:
        if not search_val:
            raise ConfigError("select_every needs selection pairs apart from the reported ones (search_val, "
                              "e.g. quantize.inputs.search_pairs)")
        search_ref = evaluate(bounded, search_val, multiple)

        def select(prepared, ref=search_ref):  # lower is better: the worst-task drop on the selection pairs
            return drops(ref, evaluate(prepared, search_val, multiple))["worst"]
    else:
        select = None

    def build(floats):
        prepared = qm.prepare(base, example, floats, calib=batches)
        calibrate(prepared, batches, ranges=scheme_ranges(qm))
        if config.steps:
            # The routing modules (float activations in every scheme) stay as trained, so the INT8 model
            # picks the prompts the FP32 model picks: Adam moves every trained weight by about lr
            # per step, and the top-k prompt choice is discrete.
            stats = train(prepared, ref, train_pairs, config, state_dir=_state_dir(state_dir, floats),
                          log=progress, frozen=prompt_path_modules(base), select=select,
                          keep=in_bounds if current_bounds(bounded) else None)
            turned_down["crops"] = stats["turned_down_crops"]
            if stats["turned_down_crops"]:
                say(f"left {stats['turned_down_crops']} training crop(s) out (past the activation clamps)")
            if "selection" in stats:
                selection.clear()
                selection.update(stats["selection"])
                say(f"kept step {selection['kept_step']} of {config.steps} (worst drop "
                    f"{selection['kept_score']:.3f} dB on the selection pairs)")
        return prepared

    def progress(step, loss):
        if step % max(1, config.steps // 10) == 0:
            say(f"step {step}/{config.steps} loss {loss:.5f}")

    fp32 = evaluate(bounded, val, multiple) if val else {}
    sensitivity = None
    if config.max_drop is not None:
        search_val = search_val or val
        if not search_val:
            raise ConfigError("--max-drop needs validation pairs with ground truth (a calibration recipe "
                              "with clean targets, or a validation set)")
        from datprl_edge.quantize.sensitivity import search

        if search_val is val:
            search_ref = fp32
        elif search_ref is None:
            search_ref = evaluate(bounded, search_val, multiple)
        prepared, float_layers, sensitivity = search(base, config, example, batches, search_val, search_ref,
                                                     float_layers, build, say)
        sensitivity["decided_on"] = "the reported validation pairs" if search_val is val else "separate pairs"
    else:
        say(f"preparing {config.target} ({qm.STACK})")
        prepared = build(float_layers)
    source = "held-out calibration" if isinstance(val, _HeldOut) else "given"
    metrics = {"val_source": source if val else "none", "calibration_crops_skipped": skipped}
    if turned_down:
        metrics["training_crops_skipped"] = turned_down["crops"]
    if selection:
        metrics["selection"] = dict(selection)
    if val:
        quant = evaluate(prepared, val, multiple)
        fidelity = evaluate(prepared, fp32_outputs(bounded, val, multiple), multiple)
        metrics.update({"psnr_fp32": fp32, "psnr_int8": quant, "drop_db": drops(fp32, quant),
                        "psnr_int8_vs_fp32": fidelity})
    if sensitivity is not None:
        metrics["sensitivity"] = sensitivity
        _check_budget(config, sensitivity, metrics)
    how = "PTQ" if config.steps == 0 else f"QAT {config.steps} steps"
    return QATResult(prepared, config.target, config, tuple(float_layers), arch, options,
                     tuple(example[0].shape), metrics, source=how, context_layout=layout)


def _check_budget(config: QATConfig, sensitivity: dict, metrics: dict) -> None:
    """The search's choice must meet `max_drop` on the pairs it decided on and again on the held-out
    validation pairs; otherwise QualityBudgetError (nothing is saved) unless `best_effort`."""
    held = (metrics.get("drop_db") or {}).get("worst")
    sensitivity["held_out_worst_db"] = held
    if sensitivity.get("all_float") and not config.best_effort:
        raise QualityBudgetError(
            f"--max-drop {config.max_drop:g} dB is met for {config.target} only with every quantizable layer "
            f"float, which leaves no INT8 (with none float the worst-task drop is "
            f"{sensitivity['rounds'][0]['drop_worst']:.2f} dB); raise --max-drop, train the INT8 model "
            "(--qat-steps / --steps), or export FP32")
    sensitivity["within_budget_held_out"] = held is None or held <= config.max_drop
    met = sensitivity["within_budget"] and sensitivity["within_budget_held_out"]
    sensitivity["met"] = met
    if met or config.best_effort:
        return
    rounds = sensitivity["rounds"]
    best = min(r["drop_worst"] for r in rounds)
    where = (f"{held:.3f} dB on the held-out pairs" if sensitivity["within_budget"]
             else f"{best:.3f} dB at best on the search pairs")
    raise QualityBudgetError(
        f"--max-drop {config.max_drop:g} dB is not met for {config.target}: the worst-task drop is {where} "
        f"after {len(rounds)} float-layer choice(s) (up to {max(len(r['float_layers']) for r in rounds)} "
        "layers in float); raise --max-drop, train longer (--steps), or pass --best-effort to keep the "
        "closest result")


def fp32_outputs(base, val: dict, multiple: int) -> dict:
    """{task: (lq, FP32 output clipped to [0, 1])}: scoring INT8 against it gives its fidelity."""
    import torch

    from datprl_edge.quantize.loop import run_padded

    with torch.no_grad():  # run_padded goes through feed.run_image
        return {t: (lq, run_padded(base, lq, multiple).clamp(0, 1)) for t, (lq, _gt) in val.items()}


def _state_dir(state_dir, floats):
    """Resumable state of one float-layer choice (the sensitivity search tries several)."""
    if state_dir is None:
        return None
    import hashlib

    return Path(state_dir) / ("float-" + hashlib.sha256(",".join(floats).encode()).hexdigest()[:10])


class _HeldOut(dict):
    """Validation pairs cut from the calibration set."""


def _split_validation(pairs, val, config, multiple):
    """(training pairs, validation) where validation, if not given, is every k-th calibration pair
    with ground truth (centre crops of config.crop), grouped by task."""
    import torch

    from datprl_edge.quantize.loop import _fit

    if val is not None:
        return pairs, val
    with_gt = [i for i, p in enumerate(pairs) if p.gt is not None]
    if len(with_gt) < 2 or config.val_images == 0:
        return pairs, None
    n = min(config.val_images, len(with_gt) // 2)
    held = set(with_gt[::max(1, len(with_gt) // n)][:n])
    groups: dict = {}
    for i in sorted(held):
        p, c = pairs[i], config.crop
        pair = (_centre(_fit(p.lq, c), c), _centre(_fit(p.gt, c), c))
        groups.setdefault(p.task or "calibration", []).append(pair)
    out = _HeldOut({t: (torch.stack([a for a, _ in v]), torch.stack([b for _, b in v]))
                    for t, v in groups.items()})
    return [p for i, p in enumerate(pairs) if i not in held], out


def _centre(t, size):
    top, left = (t.shape[1] - size) // 2, (t.shape[2] - size) // 2
    return t[:, top:top + size, left:left + size]


def save_qat(result: QATResult, path, provenance: dict | None = None) -> Path:
    """Write a stage-"qat" toolkit checkpoint (prepared state + how to rebuild it)."""
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint

    qm = quant_module(result.target)
    options = {"base_arch": result.base_arch, "base_options": result.base_options, "target": result.target,
               "float_layers": list(result.float_layers), "example_shape": list(result.example_shape),
               "backend_state": qm.backend_state(result.prepared)}
    if result.context_layout:  # absent in checkpoints made before the context (image-only programs)
        options["with_context"] = True
    extra = {"target": result.target, "scheme": qm.SCHEME, "example_shape": list(result.example_shape),
             "float_layers": list(result.float_layers), "base_arch": result.base_arch,
             "base_options": result.base_options, "steps": result.config.steps, "metrics": result.metrics,
             "qat_config": _jsonable(dataclasses.asdict(result.config)), "source": result.source,
             "context_layout": [list(e) for e in result.context_layout]}
    cfg = CheckpointConfig(QUANTIZED_ARCH, options, stage="qat", provenance=dict(provenance or {}),
                           extra=extra)
    return save_checkpoint(path, result.prepared.state_dict(), cfg)


def load_qat(path) -> QATResult:
    """Rebuild a saved QAT result: the same prepare on the base model, then its saved state."""
    from datprl_edge.io.checkpoint import read_checkpoint
    from datprl_edge.models.loading import BUNDLED_PREFIX, bundled_path, load_state_strict

    if isinstance(path, str) and path.startswith(BUNDLED_PREFIX):
        path = bundled_path(path[len(BUNDLED_PREFIX):])
    state, cfg = read_checkpoint(path)
    if cfg.stage != "qat" or cfg.arch != QUANTIZED_ARCH:
        raise CheckpointError(f"{path} is a {cfg.stage!r} checkpoint, not a QAT result; make one with "
                              "datprl-edge qat")
    extra = cfg.extra
    target = cfg.options.get("target")
    if target in TARGETS:
        made = (extra.get("scheme") or {}).get("version", 1)
        current = quant_module(target).SCHEME.get("version", 1)
        if made != current:
            raise CheckpointError(f"{path} was made with {target} INT8 scheme version {made}; this toolkit "
                                  f"uses version {current}: run datprl-edge qat again on the float model")
    prepared = build_quantized(**cfg.options)
    load_state_strict(prepared, state, source=path)
    qc = extra.get("qat_config", {})
    known = {f.name for f in dataclasses.fields(QATConfig)}
    qc = {**qc, "context": bool(cfg.options.get("with_context", False))}
    config = QATConfig(**{k: (tuple(v) if k == "float_layers" else v) for k, v in qc.items() if k in known})
    prepared.datprl_checkpoint = cfg
    return QATResult(prepared, cfg.options["target"], config, tuple(cfg.options["float_layers"]),
                     cfg.options["base_arch"], dict(cfg.options["base_options"]),
                     tuple(cfg.options["example_shape"]), extra.get("metrics", {}),
                     source=f"{Path(path).name} ({extra.get('source', 'QAT')})",
                     context_layout=list(prepared.__dict__.pop(_LAYOUT_ATTR, [])))


def build_quantized(base_arch, base_options, target, float_layers=(), example_shape=(2, 3, 64, 64),
                    backend_state=None, with_context=False):
    """The prepared module of a saved QAT result, with a freshly built base (weights come after).
    `with_context`: the program takes the base model's context (absent in older checkpoints)."""
    import torch

    from datprl_edge.models.context import context_layout
    from datprl_edge.models.registry import create_model
    from datprl_edge.quantize.feed import example_with_context, run_image
    from datprl_edge.quantize.scope import set_observers

    base = create_model(base_arch, **base_options)
    layout = [[name, int(size)] for name, size in context_layout(base)] if with_context else []
    if with_context and not layout:
        raise CheckpointError(f"this QAT checkpoint takes a context, but {base_arch} has none")
    image = torch.rand(*example_shape, generator=torch.Generator().manual_seed(0))
    example = example_with_context(image, sum(n for _, n in layout))
    prepared = quant_module(target).rebuild(base, example, tuple(float_layers), backend_state)
    # one observed forward gives the range buffers their saved shapes (per-channel sizes)
    set_observers(prepared, True)
    with torch.no_grad():
        run_image(prepared, image)
    set_observers(prepared, False)
    prepared.__dict__[_LAYOUT_ATTR] = layout  # taken by load_qat
    return prepared


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
