"""MODEL -> `restore.Runner`: exported artifacts through their runtime (no torch), checkpoints
through torch (imported only here, only for checkpoints), with `--task`, `--domain` and `--blend`
resolved for each.

Models with a context (edge students, their artifacts: `models.context`) force or blend prompts
through the routing entries of the context, in one forward pass: `--task ID` puts that task's pool
weights there, `--domain NAME` the domain's, `--blend B` mixes them with the model's own routing.
The weights come from the task routing table (`fold.routing`: the pool weights a static fold of the
task bakes in): computed on the task's calibration images for an adaptive torch student, read from
the metadata of an artifact, or one-hot from a checkpoint that records which pool entries belong to
which task (`extra["task_prompts"]`, or a training run with explicit prompts).
An artifact or checkpoint folded for fixed task(s) (metadata `tasks`) accepts only those. Teachers
force a task only where the checkpoint records its pool entries (`PromptOverride`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError, MissingBackendError, UnknownChoiceError
from datprl_edge.restore.context import RoutingRequest, base_context
from datprl_edge.restore.driver import Runner, _to_channels
from datprl_edge.sources import BUNDLED_PREFIX, is_artifact

AUTO = "auto"
_PAD_MULTIPLE = 8  # for models that do not pad their input themselves

__all__ = ["open_runner", "load_runner", "artifact_runner", "torch_runner", "module_runner", "is_artifact"]


def open_runner(model, *, network=None, task: str = AUTO, domain: str | None = None,
                blend: float | None = None) -> Runner:
    """A Runner for a checkpoint (.safetensors, .pth with `network`, bundled:NAME) or an artifact."""
    task = _check_task_text(task)
    routing = dict(domain=domain, blend=blend)
    if is_artifact(model):
        if network:
            raise ConfigError("--network applies to .pth checkpoints, not to exported artifacts")
        return artifact_runner(model, task=task, **routing)
    return torch_runner(model, network=network, task=task, **routing)


def routing_request(task: str, domain, blend, fixed) -> RoutingRequest | None:
    """The request a runner applies, or None: a task the model is folded for needs none."""
    if blend is not None and task == AUTO and domain is None:
        raise ConfigError("--blend mixes the prompts of --task or --domain with the model's own; give one")
    forced_task = None if task == AUTO or task in fixed else task
    if domain is not None:
        from datprl_edge.data.tasks import DOMAINS

        if domain not in DOMAINS:
            raise UnknownChoiceError("domain", domain, DOMAINS)
    request = RoutingRequest(domain=domain, task=forced_task, blend=1.0 if blend is None else blend)
    return request if request.active else None


def load_runner(model, network=None):
    """(callable NCHW float32 -> NCHW float32 with any channel count, model name): `open_runner` with
    the model's channel count adapted, for callers that do their own tiling (`datprl_edge.evaluate`)."""
    runner = open_runner(model, network=network)

    def run(nchw):
        return runner(_to_channels(nchw, runner.channels))

    return run, runner.name


# -- exported artifacts ---------------------------------------------------------------------------

def artifact_runner(path, *, task: str = AUTO, domain: str | None = None, blend: float | None = None,
                    **session_options) -> Runner:
    """Runner over an exported artifact's runtime session (numpy + the runtime only)."""
    from datprl_edge.fold.routing import parse_routing_table
    from datprl_edge.sources import open_model

    path = Path(path)
    session = open_model(path, **session_options)
    meta = session.metadata
    fixed = _task_list(meta.get("tasks", AUTO))
    _check_fixed(task, fixed, f"{path.name} is folded for")
    request = routing_request(task, domain, blend, fixed)
    layout = tuple(getattr(session, "context_layout", ()) or ())
    if request is not None and not layout:
        raise ConfigError(f"{path.name} has no routing input (exported before it existed, or from a "
                          "teacher); re-export it with this version to use --task/--domain/--blend")
    if request is not None:
        given, mix = base_context(layout, request, parse_routing_table(meta.get("routing_table")))
    else:
        given, mix = base_context(layout, None, {})
    task = AUTO if request is not None else task
    if task != AUTO and not fixed:
        raise ConfigError(f"{path.name} was exported with automatic prompt routing (tasks: auto), so it "
                          f"cannot force {task!r}; use --task auto, or export a model folded for the task "
                          f"(datprl-edge export ... --task {task})")
    sizes = _fixed_sizes(session)
    max_tile = max(min(h, w) for h, w in sizes) if sizes else None

    def fitted(nchw: np.ndarray, run):
        if not sizes:
            return run(nchw)
        h, w = nchw.shape[2:]
        fit = [s for s in sizes if s[0] >= h and s[1] >= w]
        if not fit:
            raise ConfigError(f"{path.name} takes the sizes {_sizes_text(sizes)}; a {h}x{w} tile fits none")
        th, tw = min(fit, key=lambda s: s[0] * s[1])
        padded = np.pad(nchw, ((0, 0), (0, 0), (0, th - h), (0, tw - w)), mode="symmetric")
        out = run(np.ascontiguousarray(padded))
        return (out[0][:, :, :h, :w], out[1]) if isinstance(out, tuple) else out[:, :, :h, :w]

    def context_fn(nchw, ctx, mix):
        n = nchw.shape[0]
        return fitted(nchw, lambda x: session.run_with_context(x, np.repeat(ctx, n, 0), np.repeat(mix, n, 0)))

    def fn(nchw: np.ndarray) -> np.ndarray:
        if request is not None:
            return context_fn(nchw, given, mix)[0]
        return fitted(nchw, session.run)

    return Runner(fn, path.name, channels=session.channels, pad_multiple=session.pad_multiple,
                  tile=_int_or_none(meta.get("tile_size")), overlap=_int_or_none(meta.get("tile_overlap")),
                  max_tile=max_tile, tasks=_runner_tasks(fixed, request),
                  context_fn=context_fn if layout else None, context_layout=layout, context=(given, mix),
                  routing=_routing_label(request))


def _runner_tasks(fixed, request) -> tuple:
    """The task(s) the prompts are fixed to: a fold's, or a task forced with blend 1."""
    if request is not None and request.task and request.blend == 1.0:
        return (request.task,)
    return tuple(fixed)


def _routing_label(request) -> str:
    if request is None:
        return AUTO
    what = f"task {request.task}" if request.task else f"domain {request.domain}"
    return what if request.blend == 1.0 else f"{what}, blend {request.blend:g}"


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

def torch_runner(model, *, network=None, task: str = AUTO, domain: str | None = None,
                 blend: float | None = None) -> Runner:
    """Runner over a toolkit checkpoint, a released .pth (with `network`) or bundled:NAME."""
    try:
        import torch  # noqa: F401  (checkpoints only: artifacts run without it)
    except ImportError:
        raise MissingBackendError("torch", purpose=f"running the checkpoint {model} (exported artifacts "
                                  "run without it)") from None
    from datprl_edge.quantize.scope import set_observers
    from datprl_edge.sources import resolve_model

    net = resolve_model(model, network=network)
    set_observers(net, False)  # a QAT checkpoint restores with its ranges, never moves them
    return module_runner(net, _model_name(net, model), task=task, domain=domain, blend=blend)


def module_runner(net, name: str, *, task: str = AUTO, domain: str | None = None,
                  blend: float | None = None) -> Runner:
    """Runner over an in-memory torch module (never modified)."""
    from datprl_edge.models.context import context_layout

    task = _check_task_text(task)
    layout = tuple(context_layout(net)) or _program_layout(net)
    if layout:
        return _context_runner(net, name, layout, task, domain, blend)
    if domain is not None or blend is not None:
        raise ConfigError(f"{name} ({type(net).__name__}) has no routing input; --domain and --blend work "
                          "with edge students and their artifacts")
    override, fixed = _task_override(net, task, name)
    return _plain_runner(net, name, {} if override is None else {"override": override}, fixed)


def _plain_runner(net, name, kwargs, fixed) -> Runner:
    import torch
    import torch.nn.functional as F

    first_conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    in_channels = int(getattr(net, "img_channel", 0) or (first_conv.in_channels if first_conv else 3))
    own_pad = getattr(net, "pad_multiple", None)
    multiple = int(own_pad) if own_pad else _PAD_MULTIPLE

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


def _geometry(net) -> tuple[int, int]:
    """(image channels, pad multiple) of a student or of its QAT program (from its checkpoint)."""
    cfg = getattr(net, "datprl_checkpoint", None)
    options = dict((getattr(cfg, "extra", None) or {}).get("base_options") or {})
    channels = int(getattr(net, "img_channel", 0) or options.get("img_channel", 3))
    levels = len(options.get("enc_blk_nums", (1, 1, 1)))
    return channels, int(getattr(net, "pad_multiple", 0) or 2 ** levels)


def _program_layout(net) -> tuple:
    """The context layout of a QAT program that takes one (recorded in its checkpoint), else ()."""
    from datprl_edge.quantize.feed import context_width

    if not context_width(net):
        return ()
    cfg = getattr(net, "datprl_checkpoint", None)
    layout = (getattr(cfg, "extra", None) or {}).get("context_layout") or []
    return tuple((str(n), int(k)) for n, k in layout)


def _context_runner(net, name, layout, task, domain, blend) -> Runner:
    """Runner over an edge student (or its QAT program): routing requests and seam-free tiling
    through its context."""
    import torch

    from datprl_edge.quantize.feed import call_with_context, run_image

    fixed = _fixed_tasks(net)
    _check_fixed(task, fixed, f"{name} is folded for")
    request = routing_request(task, domain, blend, fixed)
    if request is not None and not hasattr(net, "conditioning") and _prompt_map(
            getattr(net, "datprl_checkpoint", None)) is None:
        raise ConfigError(f"{name} is a quantized program: its task routing is not recorded; use "
                          "--task/--domain with the float model or an exported artifact")
    table = _torch_routing_table(net, request, name) if request is not None else {}
    given, mix = base_context(layout, request, table)

    def context_fn(nchw, ctx, m):
        x = torch.from_numpy(np.ascontiguousarray(nchw, dtype=np.float32))
        n = x.shape[0]
        c = torch.from_numpy(np.repeat(ctx, n, 0).astype(np.float32))
        mm = torch.from_numpy(np.repeat(m, n, 0).astype(np.float32))
        with torch.inference_mode():
            y, own = call_with_context(net, x, c, mm)
        return y.float().numpy(), own.double().numpy()

    def fn(nchw):
        if request is None:
            x = torch.from_numpy(np.ascontiguousarray(nchw, dtype=np.float32))
            with torch.inference_mode():
                return run_image(net, x).float().numpy()
        return context_fn(nchw, given, mix)[0]

    channels, multiple = _geometry(net)
    return Runner(fn, name, channels=channels, pad_multiple=multiple,
                  tasks=_runner_tasks(fixed, request), context_fn=context_fn, context_layout=layout,
                  context=(given, mix), routing=_routing_label(request))


def _torch_routing_table(net, request, name) -> dict:
    """The routing table a request needs: recorded pool entries (one-hot), else computed on the
    calibration images of the task (or of the domain's tasks)."""
    cfg = getattr(net, "datprl_checkpoint", None)
    mapping = _prompt_map(cfg)
    if mapping is not None:
        return _one_hot_table(net, mapping)
    from datprl_edge.data.tasks import TASKS
    from datprl_edge.fold.routing import parse_routing_table, routing_table

    recorded = parse_routing_table((getattr(cfg, "extra", None) or {}).get("routing_table"))
    if recorded:  # written with the checkpoint (bundled weights): no calibration images to run
        return recorded

    if request.task is not None:
        from datprl_edge.data.tasks import get_task

        tasks = [get_task(request.task).id]
    else:
        tasks = [t for t in TASKS if t.startswith(request.domain + "/")]
    if not tasks:
        raise ConfigError(f"no task of domain {request.domain} to take {name}'s routing from")
    return routing_table(net, tasks)


def _one_hot_table(net, mapping: dict) -> dict:
    nd, nt = net.domain_prompt_pool.pool_size, net.degradation_prompt_pool.pool_size

    def hot(i, n):
        return [1.0 if j == i else 0.0 for j in range(n)]

    tasks = {t: {"domain_weights": hot(d, nd), "task_weights": hot(k, nt)} for t, (d, k) in mapping.items()}
    domains = {}
    for t, (d, _) in mapping.items():
        domains.setdefault(t.split("/", 1)[0], {"domain_weights": hot(d, nd)})
    return {"tasks": tasks, "domains": domains}


def _fixed_tasks(net) -> list:
    cfg = getattr(net, "datprl_checkpoint", None)
    extra = dict(getattr(cfg, "extra", None) or {})
    tasks = extra.get("tasks", extra.get("task", AUTO))
    if tasks == AUTO and getattr(net, "tasks", None):
        tasks = list(net.tasks)
    return _task_list(tasks)


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
    if mapping is None:
        raise ConfigError(f"{name} was trained with adaptive prompts: its prompt-pool entries are not tied "
                          "to task ids, so --task cannot force one; use --task auto, or a model folded for "
                          "the task")
    if task not in mapping:
        raise UnknownChoiceError(f"task for {name}", task, mapping)
    from datprl_edge.models.student_blocks import PromptOverride

    domain, degradation = mapping[task]
    return PromptOverride(domain=int(domain), task=int(degradation)), [task]


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
