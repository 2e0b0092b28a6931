"""What `datprl-edge inspect` reports: for a torch model (registry name, checkpoint or bundled:NAME)
parameters, counted MACs per stage and torch CPU latency per stage (`models.complexity`); for an
exported artifact its structure and metadata and, where the runtime has counters, where its time
goes (numpy + that runtime only)."""

from __future__ import annotations

from pathlib import Path

from datprl_edge.core.errors import ConfigError, InputNotFoundError

MAC_CONVENTION = "conv + linear + matmul multiply-accumulates, counted with torch FlopCounterMode"


def inspect_model(spec: str, network=None, size=(256, 256), latency=True, iters=10, warmup=2,
                  threads=None) -> dict:
    """Everything `inspect` prints, as a dict (JSON-ready)."""
    from datprl_edge.models.complexity import (
        count_macs,
        count_params,
        measure_latency,
        stage_latency,
        stage_params,
    )

    if iters < 1 or warmup < 0:
        raise ConfigError(f"--iters must be >= 1 and --warmup >= 0, got {iters} and {warmup}")
    model, info = load_for_inspect(spec, network, need_weights=latency)
    shape = (1, _channels(model), size[0], size[1])
    macs = count_macs(model, shape)
    params = stage_params(model)
    stages = [{"name": name, "params": params.get(name, 0), "macs": m, "gmacs": round(m / 1e9, 4),
               "share": round(m / macs.total, 4) if macs.total else 0.0}
              for name, m in macs.stages.items()]
    stages += [{"name": n, "params": p, "macs": 0, "gmacs": 0.0, "share": 0.0}
               for n, p in params.items() if n not in macs.stages and p]
    report = {
        **info,
        "input_shape": list(shape),
        "params": count_params(model),
        "macs": macs.total,
        "gmacs": round(macs.gmacs, 4),
        "mac_convention": MAC_CONVENTION,
        "stages": stages,
        "latency": None,
    }
    if latency:
        lat = measure_latency(model, shape, warmup=warmup, iters=iters, threads=threads)
        report["latency"] = {"backend": "torch-cpu", **{k: (round(v, 3) if isinstance(v, float) else v)
                                                        for k, v in lat.items()}}
        per_stage = stage_latency(model, shape, warmup=warmup, iters=iters, threads=threads)
        total_ms = sum(per_stage.values()) or 1.0
        known = {s["name"] for s in stages}
        for s in stages:
            ms = per_stage.get(s["name"], 0.0)
            s["latency_ms"], s["latency_share"] = round(ms, 3), round(ms / total_ms, 4)
        for name, ms in per_stage.items():
            if name not in known and ms > 0:
                stages.append({"name": name, "params": 0, "macs": 0, "gmacs": 0.0, "share": 0.0,
                               "latency_ms": round(ms, 3), "latency_share": round(ms / total_ms, 4)})
    return report


def inspect_artifact_report(path, size=(256, 256), latency=True, iters=10, threads=None) -> dict:
    """Everything `inspect ARTIFACT` prints, as a dict: the artifact's structure (inputs, op histogram,
    weight bytes, metadata; `runtime.sessions.inspect_artifact`) and, with `latency` and a runtime that
    profiles (the targets table's `profiles`), its per-layer times at `size`."""
    from datprl_edge.core.targets import stage_module
    from datprl_edge.runtime.sessions import artifact_spec, inspect_artifact

    if iters < 1:
        raise ConfigError(f"--iters must be >= 1, got {iters}")
    spec = artifact_spec(path)
    if not Path(path).exists():
        raise InputNotFoundError(f"artifact not found: {path}")
    report = {"artifact": str(path), "target": spec.name, "title": spec.title,
              "structure": inspect_artifact(path), "profile": None}
    if not latency:
        report["profile_note"] = "not measured (--no-latency)"
    elif not spec.profiles:
        report["profile_note"] = (f"{spec.label} has no per-layer counters here; `bench` times the whole "
                                  "artifact")
    else:
        report["profile"] = stage_module(spec, "runtime").profile(path, tuple(size), iters, threads)
    return report


def load_for_inspect(spec: str, network=None, need_weights=True):
    """(model, info) for a registry name, checkpoint path or bundled:NAME."""
    from datprl_edge.models.registry import list_models, model_config, resolve
    from datprl_edge.sources import locate_model

    spec = str(spec)
    source = locate_model(spec, network, random_init=True)
    if source.kind != "registry":
        model = source.load()
        arch, options = model_config(model)
        ckpt = getattr(model, "datprl_checkpoint", None)
        if ckpt is not None and ckpt.stage == "qat":
            raise ConfigError(f"{spec} is an INT8 QAT checkpoint (fake-quant {options.get('target')} "
                              f"program); inspect its float model ({options.get('base_arch')}) or bench "
                              "its exported artifact")
        kind = "bundled" if source.kind == "bundled" else "checkpoint"
        return model, {"model": spec, "arch": arch, "role": ckpt.stage if ckpt else "released",
                       "weights": kind, "weights_note": f"weights loaded from {spec}"}
    arch, _ = resolve(spec)
    roles = {s.name: s.role for s in list_models()}
    model = _build(spec, on_meta=not need_weights)
    return model, {"model": spec, "arch": arch, "role": roles.get(spec, "architecture"), "weights": "random",
                   "weights_note": "random init: registry name, no trained weights loaded"}


def _build(name: str, on_meta: bool):
    import torch

    from datprl_edge.models.registry import create_model

    if on_meta:  # shapes only: counting a 53 M parameter teacher allocates nothing
        try:
            with torch.device("meta"):
                return create_model(name)
        except (RuntimeError, NotImplementedError):
            pass
    return create_model(name)


def _channels(model) -> int:
    cfg = getattr(model, "datprl_config", None) or {}
    return int(cfg.get("options", {}).get("img_channel", getattr(model, "img_channel", 3)))
