"""`datprl-edge inspect`: parameters, counted MACs with a per-stage table, and torch CPU latency of a
model; structure, metadata and per-layer times of an exported artifact."""

from __future__ import annotations

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.shapes import format_dims, parse_hw


def register(subparsers):
    p = subparsers.add_parser(
        "inspect",
        help="parameters, GMACs per stage and CPU latency of a model; what an exported artifact runs",
        description="Inspect a model: a registry name (random weights), a toolkit .safetensors "
                    "checkpoint, a released .pth with --network, or bundled:NAME. Or an exported "
                    "artifact (.onnx, OpenVINO .xml, .mlpackage): inputs, op histogram, weight bytes, "
                    "metadata and, for onnxruntime and OpenVINO, per-layer times from the runtime's "
                    "own counters (numpy + that runtime only).",
    )
    p.add_argument("model", metavar="MODEL_OR_NAME",
                   help="registry name, checkpoint path, bundled:NAME, or an exported artifact")
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

    from datprl_edge.sources import is_artifact

    if is_artifact(args.model):
        from datprl_edge.bench.inspect import inspect_artifact_report

        if args.network:
            raise ConfigError("--network is for a released .pth checkpoint, not an exported artifact")
        report = inspect_artifact_report(args.model, size=parse_hw(args.size, "--size"),
                                         latency=not args.no_latency, iters=args.iters, threads=args.threads)
        print(json.dumps(report, indent=2) if args.json else format_artifact_report(report))
        return 0

    from datprl_edge.bench.inspect import inspect_model

    report = inspect_model(args.model, network=args.network, size=parse_hw(args.size, "--size"),
                           latency=not args.no_latency, iters=args.iters, warmup=args.warmup,
                           threads=args.threads)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


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


def format_artifact_report(r: dict) -> str:
    from datprl_edge.cli.zoo_cmd import format_table

    st, meta = r["structure"], r["structure"].get("metadata", {})
    ops = sorted(st["ops"].items(), key=lambda kv: -kv[1])
    about = ", ".join(f"{k} {meta[k]}" for k in ("model_name", "precision", "shapes") if meta.get(k))
    lines = [f"artifact    {r['artifact']} ({r['title']}{', ' + about if about else ''})",
             f"size        {st['size_bytes'] / 1e6:.2f} MB",
             "inputs      " + ", ".join(f"{k} {v}" for k, v in st["inputs"].items()),
             "outputs     " + ", ".join(f"{k} {v}" for k, v in st["outputs"].items()),
             "ops         " + (", ".join(f"{k} {v}" for k, v in ops) or st.get("note", ""))]
    if st.get("int8_weight_peak") is not None:
        lines.append(f"int8 weights up to {st['int8_weight_peak']} (CPUs without VNNI need <= 64)")
    prof = r.get("profile")
    if not prof:
        return "\n".join(lines + [f"times       {r.get('profile_note', '')}"])
    total = prof.get("sum_of_layers_ms", prof.get("sum_of_nodes_ms"))
    lines.append(f"times       {total:.2f} ms summed over layers at {format_dims(prof['shape'])} "
                 f"(mean of {prof['iterations']} runs; the runtime's own counters)")
    if "int8_kernel_time_share" in prof:
        lines.append(f"int8 share  {100 * prof['int8_kernel_time_share']:.1f}% of the time in int8 kernels")
    out = "\n".join(lines)
    for key, title in (("by_layer_type", "layer type"), ("by_op_type", "op type"), ("by_kernel", "kernel"),
                       ("slowest_layers", "slowest layers"), ("slowest_nodes", "slowest nodes")):
        if prof.get(key):
            rows = [(title, "ms", "share")]
            rows += [(_short(e["name"]), f"{e['ms']:.3f}", f"{100 * e['share']:.1f}%") for e in prof[key]]
            out += "\n\n" + format_table(rows)
    return out


def _short(name: str, width: int = 64) -> str:
    name = name.replace("__module.model.", "")  # the exporter's prefix on every torch-derived name
    return name if len(name) <= width else name[: width - 3] + "..."

