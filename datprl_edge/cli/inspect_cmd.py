"""`datprl-edge inspect`: parameters, counted MACs with a per-stage table, and torch CPU latency."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, InputNotFoundError

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
MAC_CONVENTION = "conv + linear + matmul multiply-accumulates, counted with torch FlopCounterMode"


def register(subparsers):
    p = subparsers.add_parser(
        "inspect",
        help="parameters, GMACs per stage and CPU latency of a model",
        description="Inspect a model: a registry name (random weights), a toolkit .safetensors "
                    "checkpoint, a released .pth with --network, or bundled:NAME.",
    )
    p.add_argument("model", metavar="MODEL_OR_NAME", help="registry name, checkpoint path, or bundled:NAME")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON with the network_g block of a released .pth")
    p.add_argument("--size", default="256x256", metavar="HxW", help="input height x width (default 256x256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--iters", type=int, default=10, metavar="N", help="timed iterations (default 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed warm-up runs (default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's own)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    report = inspect_model(args.model, network=args.network, size=parse_size(args.size),
                           latency=not args.no_latency, iters=args.iters, warmup=args.warmup,
                           threads=args.threads)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def parse_size(text: str) -> tuple[int, int]:
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--size must look like 256x256 or 256, got {text!r}") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"--size must be HxW with positive sizes, got {text!r}")
    return hw[0], hw[1]


def inspect_model(spec: str, network=None, size=(256, 256), latency=True, iters=10, warmup=2,
                  threads=None) -> dict:
    """Everything `inspect` prints, as a dict (JSON-ready)."""
    from ..models.complexity import count_macs, count_params, measure_latency, stage_params

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
    return report


def load_for_inspect(spec: str, network=None, need_weights=True):
    """(model, info) for a registry name, checkpoint path or bundled:NAME."""
    from ..models.loading import BUNDLED_PREFIX, load_model
    from ..models.registry import list_models, model_config, resolve

    spec = str(spec)
    if spec.startswith(BUNDLED_PREFIX) or Path(spec).exists():
        model = load_model(spec, network=network)
        arch, _ = model_config(model)
        ckpt = getattr(model, "datprl_checkpoint", None)
        kind = "bundled" if spec.startswith(BUNDLED_PREFIX) else "checkpoint"
        return model, {"model": spec, "arch": arch, "role": ckpt.stage if ckpt else "released",
                       "weights": kind, "weights_note": f"weights loaded from {spec}"}
    if os.sep in spec or "/" in spec or spec.lower().endswith(_CHECKPOINT_SUFFIXES):
        raise InputNotFoundError(f"model file not found: {spec}")
    if network is not None:
        raise ConfigError("--network describes a released .pth checkpoint; it cannot go with a registry name")
    arch, _ = resolve(spec)  # unknown names raise with a "did you mean"
    roles = {s.name: s.role for s in list_models()}
    model = _build(spec, on_meta=not need_weights)
    return model, {"model": spec, "arch": arch, "role": roles.get(spec, "architecture"), "weights": "random",
                   "weights_note": "random init: registry name, no trained weights loaded"}


def _build(name: str, on_meta: bool):
    import torch

    from ..models.registry import create_model

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


def format_report(r: dict) -> str:
    from .zoo_cmd import format_table

    shape = "x".join(str(s) for s in r["input_shape"])
    lines = [
        f"model       {r['model']} ({r['arch']}, {r['role']})",
        f"weights     {r['weights_note']}",
        f"input       {shape}",
        f"parameters  {r['params']:,} ({r['params'] / 1e6:.2f} M)",
        f"GMACs       {r['gmacs']:.2f} [{r['mac_convention']}]",
    ]
    lat = r.get("latency")
    if lat:
        lines.append(f"latency     {lat['median_ms']:.1f} ms median, {lat['min_ms']:.1f} ms min (torch CPU, "
                     f"{lat['threads']} thread(s), {lat['iters']} iters after {lat['warmup']} warm-up)")
    else:
        lines.append("latency     not measured (--no-latency)")
    rows = [("stage", "params", "GMACs", "share")]
    rows += [(s["name"], f"{s['params']:,}", f"{s['gmacs']:.3f}", f"{100 * s['share']:.1f}%")
             for s in r["stages"]]
    rows.append(("total", f"{r['params']:,}", f"{r['gmacs']:.3f}", "100.0%"))
    return "\n".join(lines) + "\n\n" + format_table(rows)
