"""User-guided routing and seam-free tiling through a model's context (numpy only).

A model with a context (an edge student, or an artifact exported from one: see `models.context`)
takes a (1, K) `context` and `context_mix` next to the image. Here:

- `RoutingRequest` (`--domain`, `--task`, `--blend`) becomes the base (context, mix): the forced pool
  weights in the routing entries, mixed in with weight `blend`; every other entry is the model's own.
- `seamless_tiles` restores a tiled image with one context for all tiles: one forward pass over the
  whole image, box-downscaled so its longer side is at most `stats_size` (not at all when it fits),
  gives the image's statistics (routing queries, channel-attention means); every tile then runs with
  them (mix 1) and the request's routing, so no tile is routed or normalised on its own.
  Averaging the tiles' own statistics instead is not enough: a tile's deep features are wrong near
  its borders, which moved deep means by 20-40 % and flipped the top-k task routing (measured on the
  512x512 astronaut, tiles 256/32, even after a second pass: up to 15 levels off the whole image).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from datprl_edge.core.context import DOMAIN_WEIGHTS, ROUTING_ENTRIES, TASK_WEIGHTS, layout_size, layout_slices
from datprl_edge.core.errors import ConfigError, UnknownChoiceError
from datprl_edge.core.tiling import tile_apply

# Longest side of the image the statistics are taken from: the whole image up to ~1 MP (exact), a box
# downscale of larger ones (a 4K frame by 4: one extra pass of 6 % of its pixels).
DEFAULT_STATS_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class RoutingRequest:
    """Force or blend prompts: `domain` a domain name (natural, medical, remote), `task` a task id;
    `blend` in [0, 1]: 0 = the model's own routing, 1 = the forced weights only."""

    domain: str | None = None
    task: str | None = None
    blend: float = 1.0

    def __post_init__(self):
        if isinstance(self.blend, bool) or not isinstance(self.blend, (int, float)) \
                or math.isnan(float(self.blend)) or not 0.0 <= float(self.blend) <= 1.0:
            raise ConfigError(f"--blend must be a number in [0, 1], got {self.blend!r}")
        if self.domain is not None and self.task is not None \
                and self.task.split("/", 1)[0] != self.domain:
            raise ConfigError(f"--domain {self.domain} and --task {self.task} disagree: the task belongs to "
                              f"{self.task.split('/', 1)[0]}; give one of them")

    @property
    def active(self) -> bool:
        return self.domain is not None or self.task is not None


def base_context(layout, request: RoutingRequest | None, table: dict) -> tuple[np.ndarray, np.ndarray]:
    """(context, mix), each (1, K) float32, for a routing request (zeros: the model's own routing)."""
    k = layout_size(layout)
    given, mix = np.zeros((1, k), np.float32), np.zeros((1, k), np.float32)
    if request is None or not request.active:
        return given, mix
    slices = layout_slices(layout)
    if not all(e in slices for e in ROUTING_ENTRIES):
        raise ConfigError("this model has no prompt routing to force (--domain/--task/--blend); its prompts "
                          "are fixed")
    for entry, weights in forced_weights(request, table).items():
        s = slices[entry]
        w = np.asarray(weights, np.float64)
        if w.shape != (s.stop - s.start,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"the routing table's {entry} for this request do not fit the model "
                              f"({w.size} weights for a pool of {s.stop - s.start}); re-export the model")
        given[0, s] = (w / w.sum()).astype(np.float32)
        mix[0, s] = float(request.blend)
    return given, mix


def forced_weights(request: RoutingRequest, table: dict) -> dict:
    """{entry: pool weights} the request forces, from a routing table (`fold.routing`)."""
    tasks, domains = table.get("tasks", {}), table.get("domains", {})
    if request.task is not None:
        if request.task not in tasks:
            if not tasks:
                raise ConfigError("this model records no task routing, so --task cannot force one")
            raise UnknownChoiceError("task", request.task, sorted(tasks))
        entry = tasks[request.task]
        return {DOMAIN_WEIGHTS: entry["domain_weights"], TASK_WEIGHTS: entry["task_weights"]}
    if request.domain not in domains:
        if not domains:
            raise ConfigError("this model records no domain routing, so --domain cannot force one")
        raise UnknownChoiceError("domain", request.domain, sorted(domains))
    return {DOMAIN_WEIGHTS: domains[request.domain]["domain_weights"]}


def fixed_context(layout, stats: np.ndarray, given: np.ndarray, mix: np.ndarray):
    """(context, mix) for the tiles: the image's statistics with mix 1, and the request's routing
    (given/mix) in the routing entries, where the image's query statistics decide the automatic part."""
    ctx, m = stats.astype(np.float32).reshape(1, -1).copy(), np.ones_like(mix)
    for entry, s in layout_slices(layout).items():
        if entry in ROUTING_ENTRIES:
            ctx[0, s], m[0, s] = given[0, s], mix[0, s]
    return ctx, m


def seamless_tiles(context_fn, nchw: np.ndarray, tile, overlap: int, multiple: int, layout,
                   given: np.ndarray, mix: np.ndarray, *, stats_size: int = DEFAULT_STATS_SIZE,
                   progress=None):
    """Tiled restoration with one shared context. `context_fn(x, context, mix) -> (restored, own)`
    for an (N, C, h, w) batch and (1, K) context/mix; N must be 1."""
    if nchw.shape[0] != 1:
        raise ConfigError(f"seam-free tiling takes one image at a time, got {nchw.shape[0]}")
    stats = context_fn(box_downscale(nchw, stats_size), given, mix)[1]
    ctx, m = fixed_context(layout, np.asarray(stats, np.float64), given, mix)
    return tile_apply(lambda t: context_fn(t, ctx, m)[0], nchw, tile, overlap, multiple, progress=progress)


def box_downscale(nchw: np.ndarray, size: int) -> np.ndarray:
    """The image with its longer side at most `size`: the mean of f x f blocks (edge-padded to a
    multiple of f) for the smallest integer f that fits; the image itself when it fits."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ConfigError(f"the statistics size must be a whole number of pixels >= 16, got {size!r}")
    n, c, h, w = nchw.shape
    f = math.ceil(max(h, w) / size)
    if f <= 1:
        return nchw
    ph, pw = (-h) % f, (-w) % f
    x = np.pad(nchw, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else nchw
    hh, ww = x.shape[2] // f, x.shape[3] // f
    return np.ascontiguousarray(x.reshape(n, c, hh, f, ww, f).mean(axis=(3, 5), dtype=np.float64),
                                dtype=np.float32)
