"""`datprl-edge inspect`: parameters, counted MACs with a per-stage table, and torch CPU latency."""

from __future__ import annotations

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.shapes import format_dims, parse_hw

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

    report = inspect_model(args.model, network=args.network, size=parse_hw(args.size, "--size"),
                           latency=not args.no_latency, iters=args.iters, warmup=args.warmup,
                           threads=args.threads)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


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


def load_for_inspect(spec: str, network=None, need_weights=True):
    """(model, info) for a registry name, checkpoint path or bundled:NAME."""
    from datprl_edge.models.registry import list_models, model_config, resolve
    from datprl_edge.sources import locate_model

    spec = str(spec)
    source = locate_model(spec, network, random_init=True)
    if source.kind != "registry":
        model = source.load()
        arch, _ = model_config(model)
        ckpt = getattr(model, "datprl_checkpoint", None)
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


def format_report(r: dict) -> str:
    from datprl_edge.cli.zoo_cmd import format_table

    shape = format_dims(r["input_shape"])
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
    timed = bool(lat) and any("latency_ms" in s for s in r["stages"])
    rows = [("stage", "params", "GMACs", "share") + (("ms", "time share") if timed else ())]
    rows += [(s["name"], f"{s['params']:,}", f"{s['gmacs']:.3f}", f"{100 * s['share']:.1f}%")
             + ((f"{s.get('latency_ms', 0.0):.2f}", f"{100 * s.get('latency_share', 0.0):.1f}%")
                if timed else ())
             for s in r["stages"]]
    total_ms = sum(s.get("latency_ms", 0.0) for s in r["stages"])
    rows.append(("total", f"{r['params']:,}", f"{r['gmacs']:.3f}", "100.0%")
                + ((f"{total_ms:.2f}", "100.0%") if timed else ()))
    return "\n".join(lines) + "\n\n" + format_table(rows)
