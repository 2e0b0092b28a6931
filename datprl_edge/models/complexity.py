"""Model complexity: parameters, multiply-accumulates (counted, not estimated) and CPU latency.

MAC convention: the operations that `torch.utils.flop_counter.FlopCounterMode` counts, halved
(it reports 2 FLOPs per multiply-accumulate). That is every convolution (including depthwise,
per output element: in_channels/groups * kernel area), every matrix product (Linear layers,
attention products such as Restormer's channel attention q k^T and attn v, the single-token
prompt cross-attention), and scaled-dot-product attention. Elementwise ops, normalisation,
activations, softmax and pooling count zero: they are memory-bound and small next to the
products. This matches fvcore's convention (conv + linear + matmul MACs); module-hook counters
(thop, ptflops) give less because they miss functional matmuls such as `q @ k`.

With it the released teacher `restormer-6t` at 1x3x256x256 counts 186.52 GMACs (convolutions
152.67, attention/cross-attention bmm 25.07, Linear 8.78), the "about 186.5 GMACs" quoted for it.

Counting runs on the meta device (shapes only, no arithmetic, no weights copied), so a 53 M
parameter teacher costs well under a second; a model that needs real values falls back to CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from datprl_edge.core.errors import ConfigError

DEFAULT_SHAPE = (1, 3, 256, 256)
OTHER_STAGE = "(top level)"


@dataclasses.dataclass(frozen=True)
class MacCount:
    total: int  # MACs for one forward pass at `input_shape`
    stages: dict  # top-level child module -> MACs, in module order; OTHER_STAGE for ops in the root
    by_op: dict  # aten op name -> MACs
    input_shape: tuple
    device: str  # where the count ran: "meta" or "cpu"

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def count_params(model) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


def stage_params(model) -> dict:
    """Parameters of each top-level child, in module order; OTHER_STAGE for the root's own."""
    out = {name: count_params(child) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        out[OTHER_STAGE] = own
    return out


def count_macs(model, input_shape=DEFAULT_SHAPE) -> MacCount:
    """Count the MACs of `model(x)` for x of `input_shape`, with a per-stage breakdown.

    The model is not modified (hooks are removed afterwards, parameters are swapped for meta
    tensors only inside the call).
    """
    shape = _check_shape(input_shape)
    try:
        return _count(model, shape, meta=True)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError) or _on_meta(model):
            raise
    return _count(model, shape, meta=False)


def measure_latency(model, shape=DEFAULT_SHAPE, warmup: int = 2, iters: int = 10,
                    threads: int | None = None) -> dict:
    """Torch CPU latency of `model(x)` under `torch.inference_mode()`.

    Returns {"median_ms", "min_ms", "iters", "warmup", "threads"}. `threads` sets torch's
    intra-op thread count for the measurement only.
    """
    shape = _check_shape(shape)
    if iters < 1 or warmup < 0:
        raise ConfigError(f"latency needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if _on_meta(model):
        raise ConfigError("this model has no weights (built on the meta device); it cannot be timed")
    import torch

    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        times = []
        with torch.inference_mode():
            for i in range(warmup + iters):
                t0 = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": iters, "warmup": warmup,
            "threads": used}


def stage_latency(model, shape=DEFAULT_SHAPE, warmup: int = 2, iters: int = 10,
                  threads: int | None = None) -> dict:
    """Torch CPU wall time per top-level stage (as `count_macs` charges MACs): {stage: median ms
    over `iters` runs}; time spent in the root module's own code goes to OTHER_STAGE. Hooks cost a
    few microseconds per submodule, so the stages add up to slightly more than `measure_latency`."""
    shape = _check_shape(shape)
    if iters < 1 or warmup < 0:
        raise ConfigError(f"latency needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if _on_meta(model):
        raise ConfigError("this model has no weights (built on the meta device); it cannot be timed")
    import torch

    runs: list[dict] = []
    current: dict = {}

    def charge(stage, start):
        current[stage] = current.get(stage, 0.0) + (time.perf_counter() - start) * 1e3

    handles = _stage_hooks(model, time.perf_counter, charge)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            for i in range(warmup + iters):
                current.clear()
                t0 = time.perf_counter()
                model(x)
                total = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    runs.append({**current, OTHER_STAGE: max(0.0, total - sum(current.values()))})
    finally:
        torch.set_num_threads(old_threads)
        for h in handles:
            h.remove()
    names = [name for name, _ in model.named_children()] + [OTHER_STAGE]
    return {n: statistics.median(r.get(n, 0.0) for r in runs) for n in names}


def _stage_hooks(model, read, charge) -> list:
    """Forward hooks that charge each top-level stage: `read()` on entering a submodule, and
    `charge(stage, value read at entry)` on leaving the outermost one. Containers such as ModuleList
    never run forward themselves, so every submodule is hooked and charged to its top-level
    ancestor. Returns the hook handles (remove them when done)."""
    active: list = []

    def pre(name):
        def hook(_mod, _inp):
            active.append((name, read()))
        return hook

    def post(_mod, _inp, _out):
        stage, start = active.pop()
        if not active:
            charge(stage, start)

    handles = []
    for path, mod in model.named_modules():
        if path:
            handles.append(mod.register_forward_pre_hook(pre(path.split(".", 1)[0])))
            handles.append(mod.register_forward_hook(post))
    return handles


def _count(model, shape, meta: bool) -> MacCount:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    stages = {name: 0 for name, _ in model.named_children()}

    def charge(stage, start):
        stages[stage] += counter.get_total_flops() - start

    handles = _stage_hooks(model, counter.get_total_flops, charge)
    try:
        with torch.inference_mode():
            if meta:
                x = torch.zeros(shape, device="meta")
                with counter:
                    _call_on_meta(model, x)
            else:
                x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
                with counter:
                    model(x)
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts().get("Global", {})
    total = sum(flops.values()) // 2
    macs = {k: v // 2 for k, v in stages.items()}
    other = total - sum(macs.values())
    if other:
        macs[OTHER_STAGE] = other
    by_op = {str(op): v // 2 for op, v in sorted(flops.items(), key=lambda kv: -kv[1])}
    return MacCount(total, macs, by_op, tuple(shape), "meta" if meta else "cpu")


def _call_on_meta(model, x):
    import torch
    from torch.func import functional_call

    if _on_meta(model):
        return model(x)
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    tensors = {k: torch.empty_like(v, device="meta") for k, v in named}
    return functional_call(model, tensors, (x,), strict=False, tie_weights=True)


def _on_meta(model) -> bool:
    p = next(iter(model.parameters()), None)
    return p is not None and p.device.type == "meta"


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input shape must be a sequence of integers, got {shape!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"input shape must be (batch, channels, height, width), sizes >= 1, got {shape}")
    return shape
