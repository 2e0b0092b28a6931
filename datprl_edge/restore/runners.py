"""MODEL -> `restore.Runner`: exported artifacts through their runtime (no torch), checkpoints
through torch (imported only here, only for checkpoints), with `--task` resolved for each.

`--task ID` forces a task's prompts. An artifact folded for fixed task(s) (metadata `tasks`)
accepts only those; one exported with automatic routing ("auto") cannot force a task. A torch
student forces the prompt-pool entries of the task through `PromptOverride` when its checkpoint
says which entries belong to which task: `extra["task_prompts"]` ({task id: [domain index, task
index]}), or a training run with explicit prompts (`extra["train_config"]["prompt_mode"] ==
"explicit"`, the catalogue indices the training used). Adaptive-prompt training ties no pool
entry to a task, so there `--task` is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError, MissingBackendError, UnknownChoiceError
from datprl_edge.restore.driver import Runner, _to_channels
from datprl_edge.sources import BUNDLED_PREFIX, is_artifact

AUTO = "auto"
_PAD_MULTIPLE = 8  # for models that do not pad their input themselves

__all__ = ["open_runner", "load_runner", "artifact_runner", "torch_runner", "module_runner", "is_artifact"]


def open_runner(model, *, network=None, task: str = AUTO) -> Runner:
    """A Runner for a checkpoint (.safetensors, .pth with `network`, bundled:NAME) or an artifact."""
    task = _check_task_text(task)
    if is_artifact(model):
        if network:
            raise ConfigError("--network applies to .pth checkpoints, not to exported artifacts")
        return artifact_runner(model, task=task)
    return torch_runner(model, network=network, task=task)


def load_runner(model, network=None):
    """(callable NCHW float32 -> NCHW float32 with any channel count, model name): `open_runner` with
    the model's channel count adapted, for callers that do their own tiling (`datprl_edge.evaluate`)."""
    runner = open_runner(model, network=network)

    def run(nchw):
        return runner(_to_channels(nchw, runner.channels))

    return run, runner.name


# -- exported artifacts ---------------------------------------------------------------------------

def artifact_runner(path, *, task: str = AUTO, **session_options) -> Runner:
    """Runner over an exported artifact's runtime session (numpy + the runtime only)."""
    from datprl_edge.sources import open_model

    path = Path(path)
    session = open_model(path, **session_options)
    meta = session.metadata
    fixed = _task_list(meta.get("tasks", AUTO))
    _check_fixed(task, fixed, f"{path.name} is folded for")
    if task != AUTO and not fixed:
        raise ConfigError(f"{path.name} was exported with automatic prompt routing (tasks: auto), so it "
                          f"cannot force {task!r}; use --task auto, or export a model folded for the task "
                          f"(datprl-edge export ... --task {task})")
    sizes = _fixed_sizes(session)
    max_tile = max(min(h, w) for h, w in sizes) if sizes else None

    def fn(nchw: np.ndarray) -> np.ndarray:
        if not sizes:
            return session.run(nchw)
        h, w = nchw.shape[2:]
        fit = [s for s in sizes if s[0] >= h and s[1] >= w]
        if not fit:
            raise ConfigError(f"{path.name} takes the sizes {_sizes_text(sizes)}; a {h}x{w} tile fits none")
        th, tw = min(fit, key=lambda s: s[0] * s[1])
        padded = np.pad(nchw, ((0, 0), (0, 0), (0, th - h), (0, tw - w)), mode="symmetric")
        return session.run(np.ascontiguousarray(padded))[:, :, :h, :w]

    return Runner(fn, path.name, channels=session.channels, pad_multiple=session.pad_multiple,
                  tile=_int_or_none(meta.get("tile_size")), overlap=_int_or_none(meta.get("tile_overlap")),
                  max_tile=max_tile, tasks=tuple(fixed))


def _fixed_sizes(session) -> list:
    if session.static_hw is not None:
        return [tuple(int(v) for v in session.static_hw)]
    return [tuple(int(v) for v in s) for s in (session.allowed_hw or [])]


def _sizes_text(sizes) -> str:
    return ", ".join(f"{h}x{w}" for h, w in sizes)


def _int_or_none(text):
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


# -- torch checkpoints ----------------------------------------------------------------------------

def torch_runner(model, *, network=None, task: str = AUTO) -> Runner:
    """Runner over a toolkit checkpoint, a released .pth (with `network`) or bundled:NAME."""
    try:
        import torch  # noqa: F401  (checkpoints only: artifacts run without it)
    except ImportError:
        raise MissingBackendError("torch", purpose=f"running the checkpoint {model} (exported artifacts "
                                  "run without it)") from None
    from datprl_edge.sources import resolve_model

    net = resolve_model(model, network=network)
    return module_runner(net, _model_name(net, model), task=task)


def module_runner(net, name: str, *, task: str = AUTO) -> Runner:
    """Runner over an in-memory torch module (never modified)."""
    import torch
    import torch.nn.functional as F

    task = _check_task_text(task)
    override, fixed = _task_override(net, task, name)
    if override is FOLD:
        from datprl_edge.sources import fold_for_task

        # adaptive prompts are not tied to task ids: the task's prompt is its composed prompt,
        # averaged over the task's calibration images and baked into static weights (as export --task)
        net, _ = fold_for_task(net, task)
        override, name = None, f"{name} folded for {task}"
    first_conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    in_channels = int(getattr(net, "img_channel", 0) or (first_conv.in_channels if first_conv else 3))
    own_pad = getattr(net, "pad_multiple", None)
    multiple = int(own_pad) if own_pad else _PAD_MULTIPLE
    kwargs = {} if override is None else {"override": override}

    def fn(nchw: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(nchw, dtype=np.float32))
        h, w = x.shape[2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if not own_pad and (ph or pw):  # the model cannot pad itself
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        with torch.inference_mode():
            y = net(x, **kwargs)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y[:, :, :h, :w].float().numpy()

    return Runner(fn, name, channels=in_channels if in_channels in (1, 3) else 3, pad_multiple=multiple,
                  tasks=tuple(fixed))


def _task_override(net, task: str, name: str):
    """(PromptOverride or None, fixed tasks) for `--task` on a torch model."""
    cfg = getattr(net, "datprl_checkpoint", None)
    extra = dict(getattr(cfg, "extra", None) or {})
    fixed = _task_list(extra.get("tasks", extra.get("task", AUTO)))
    _check_fixed(task, fixed, f"{name} is folded for")
    if task == AUTO or fixed:
        return None, fixed
    import inspect

    if "override" not in inspect.signature(net.forward).parameters:
        raise ConfigError(f"{name} ({type(net).__name__}) has no prompt override, so --task cannot force a "
                          "task; use --task auto")
    mapping = _prompt_map(cfg)
    if mapping is None and _foldable(net):
        from datprl_edge.data.tasks import get_task

        get_task(task)  # a typo gets "did you mean" before any work
        return FOLD, [task]
    if mapping is None:
        raise ConfigError(f"{name} was trained with adaptive prompts: its prompt-pool entries are not tied "
                          "to task ids, so --task cannot force one; use --task auto, or a model folded for "
                          "the task")
    if task not in mapping:
        raise UnknownChoiceError(f"task for {name}", task, mapping)
    from datprl_edge.models.student_blocks import PromptOverride

    domain, degradation = mapping[task]
    return PromptOverride(domain=int(domain), task=int(degradation)), [task]


FOLD = "fold"  # _task_override's answer for an adaptive student: fold the task's prompt first


def _foldable(net) -> bool:
    from datprl_edge.models.student import EdgeDATPRL

    return isinstance(net, EdgeDATPRL)


def _prompt_map(cfg) -> dict | None:
    """{task id: (domain index, task index)} recorded by a checkpoint, or None."""
    if cfg is None:
        return None
    extra = cfg.extra or {}
    recorded = extra.get("task_prompts")
    if isinstance(recorded, dict) and recorded:
        try:
            return {str(k): (int(v[0]), int(v[1])) for k, v in recorded.items()}
        except (TypeError, ValueError, IndexError, KeyError):
            raise ConfigError("the checkpoint's task_prompts must map task ids to [domain index, task "
                              "index]") from None
    train = extra.get("train_config") or {}
    if not isinstance(train, dict) or train.get("prompt_mode") != "explicit":
        return None
    from datprl_edge.data.tasks import TASKS
    from datprl_edge.train.data import CUSTOM_TASK, _catalogue_ids

    data = str((cfg.provenance or {}).get("data", ""))
    if data.startswith("folder:"):
        return {CUSTOM_TASK: (0, 0)}
    trained = data.split(" ", 1)[0].partition(":")[2].split(",") if data.startswith("synthetic:") else []
    ids = [t for t in trained if t in TASKS] or list(TASKS)
    return {t: _catalogue_ids(t) for t in ids}


def _model_name(net, model) -> str:
    cfg = getattr(net, "datprl_config", None) or {}
    label = cfg.get("name") or cfg.get("arch")
    base = str(model) if str(model).startswith(BUNDLED_PREFIX) else Path(str(model)).name
    return f"{base} ({label})" if label and label not in base else base


# -- tasks ----------------------------------------------------------------------------------------

def _check_task_text(task) -> str:
    text = AUTO if task is None else str(task).strip()
    if not text:
        raise ConfigError("--task takes auto or a task id such as medical/ct_denoise")
    return text


def _task_list(value) -> list:
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [t.strip() for t in str(value or AUTO).split(",")]
    items = [t for t in items if t and t != AUTO]
    return items


def _check_fixed(task: str, fixed: list, what: str) -> None:
    if task != AUTO and fixed and task not in fixed:
        raise ConfigError(f"{what} {', '.join(fixed)}; --task {task} does not match (use --task auto or "
                          f"--task {fixed[0]})")
