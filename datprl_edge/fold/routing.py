"""Task routing of an adaptive student: each task's prompt-pool weights, the same ones a static fold
bakes in (`folding._task_prompt`: the model's own pool weights averaged over the task's calibration
images), as plain lists.

Forcing these weights through the student's context (`models.context`, routing entries, mix 1)
gives exactly the prompt of the task's static fold, without folding: `restore --task` uses them on
torch models, and export writes the table into artifacts so devices can do the same without torch.
A domain's weights are the mean of its tasks' domain weights.
"""

from __future__ import annotations

import json

from datprl_edge.core.errors import ConfigError

TABLE_VERSION = 1


TABLE_IMAGES, TABLE_CROP = 4, 128  # per task: enough for a stable mean of the routing weights


def routing_table(model, tasks=None, *, calibration: str = "all", images=None) -> dict:
    """{"version": 1, "tasks": {task: {"domain_weights": [...], "task_weights": [...]}},
    "domains": {domain: {"domain_weights": [...]}}} for an adaptive student (`tasks` None: every
    task of the calibration recipe). Runs only the encoder and routing on the calibration images."""
    from datprl_edge.fold.folding import FoldConfig, _task_images, _task_prompt
    from datprl_edge.fold.support import load_fold_images

    if not has_routing(model):
        raise ConfigError(f"{type(model).__name__} has no prompt routing to tabulate")
    config = FoldConfig(task=list(tasks) if tasks else None, calibration=calibration, latency_iters=0,
                        images=TABLE_IMAGES, crop=TABLE_CROP)
    if images is None:
        channels = int(getattr(model, "img_channel", 3))
        imgs = load_fold_images(config, config.tasks or None, channels)
    else:
        imgs = _task_images(config, images, model, config.tasks)
    table: dict = {}
    for task, x in imgs.items():
        _, record = _task_prompt(model, config, task, x)
        table[task] = {"domain_weights": record["domain_weights"], "task_weights": record["task_weights"],
                       "images": record["images"]}
    return {"version": TABLE_VERSION, "tasks": table, "domains": _domains(table)}


def has_routing(model) -> bool:
    from datprl_edge.models.context import ROUTING_ENTRIES, context_layout

    names = {name for name, _ in context_layout(model)}
    return all(e in names for e in ROUTING_ENTRIES)


def _domains(table: dict) -> dict:
    out: dict = {}
    for task, entry in table.items():
        out.setdefault(task.split("/", 1)[0], []).append(entry["domain_weights"])
    means = {}
    for domain, rows in out.items():
        n = len(rows[0])
        means[domain] = {"domain_weights": [round(sum(r[i] for r in rows) / len(rows), 6) for i in range(n)],
                         "tasks": sum(1 for t in table if t.startswith(domain + "/"))}
    return means


def parse_routing_table(text) -> dict:
    """A routing table from artifact metadata (JSON text) or a dict, checked; {} when absent."""
    if text in (None, "", {}):
        return {}
    try:
        table = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        raise ConfigError("the artifact's routing_table metadata is not valid JSON; re-export it") from None
    ok = isinstance(table, dict) and all(isinstance(table.get(k), dict) for k in ("tasks", "domains"))
    if ok:
        for entry in list(table["tasks"].values()) + list(table["domains"].values()):
            ok = ok and isinstance(entry, dict) and all(
                isinstance(entry.get(k), list) and all(isinstance(v, (int, float)) for v in entry[k])
                for k in ("domain_weights", "task_weights") if k in entry)
    if not ok:
        raise ConfigError("the artifact's routing_table metadata has the wrong structure; re-export it")
    return table
