"""Accuracy-aware mixed precision: keep the most sensitive layers in float until the INT8
validation drop is within budget.

1. Ranking. One calibrated fake-quant model that can switch single layers off without
   re-preparing: the target's own scheme where it offers `layer_fake_quants` (ONNX, OpenVINO),
   else the ONNX scheme's PT2E model. A layer's sensitivity is how much the worst-task PSNR drop
   shrinks when only that layer's quantizers (`SWITCHED` of the proxy scheme) are off.
2. Greedy choice on that model: switch layers off in ranking order until the drop is within
   budget.
3. Check with the target's own quantizer (prepare, calibrate, QAT): first with no float layer
   (QAT alone may already be within budget), then with the greedy choice, then adding the next
   layers in ranking order (at most `MAX_ROUNDS` tries). The config records the ranking, the
   choice and every measured drop.
"""

from __future__ import annotations

from datprl_edge.quantize.loop import drops, evaluate
from datprl_edge.quantize.scope import calibrate, frozen_observers, quantizable_layers, scheme_ranges

MAX_ROUNDS = 4


def proxy_scheme(target: str):
    """The quantize module whose fake-quant model ranks the layers for `target`."""
    from datprl_edge.core.targets import stage_module
    from datprl_edge.quantize import onnx as onnx_quant

    own = stage_module(target, "quantize")
    return own if hasattr(own, "layer_fake_quants") else onnx_quant


def rank_layers(qm, base, example, batches, val, fp32, float_layers, multiple):
    """[(layer, gain_db)] sorted by gain (most sensitive first), plus the proxy model's full drop.
    `qm`: the proxy scheme's quantize module (`proxy_scheme`)."""
    proxy = qm.prepare(base, example, float_layers, calib=batches)
    calibrate(proxy, batches, ranges=scheme_ranges(qm))
    full = drops(fp32, evaluate(proxy, val, multiple))["worst"]
    ranking = []
    with frozen_observers(proxy):
        for layer in [n for n in quantizable_layers(base) if n not in float_layers]:
            mods = qm.layer_fake_quants(proxy, layer)
            with _switched_off(mods):
                gain = full - drops(fp32, evaluate(proxy, val, multiple))["worst"]
            ranking.append((layer, float(gain)))
    ranking.sort(key=lambda kv: -kv[1])
    return proxy, ranking, full


def greedy_count(qm, proxy, ranking, val, fp32, max_drop, multiple) -> tuple[int, list]:
    """How many top-ranked layers the proxy needs in float for a drop within `max_drop`."""
    trace, off = [], []
    with frozen_observers(proxy):
        try:
            for k, (layer, _gain) in enumerate(ranking, start=1):
                mods = qm.layer_fake_quants(proxy, layer)
                for m in mods:
                    m.disable_fake_quant()
                off += mods
                worst = drops(fp32, evaluate(proxy, val, multiple))["worst"]
                trace.append([k, float(worst)])
                if worst <= max_drop:
                    return k, trace
        finally:
            for m in off:
                m.enable_fake_quant()
    return len(ranking), trace


def search(base, config, example, batches, val, fp32, user_float, build, say):
    """(prepared, float_layers, report) for `config.max_drop`; `build(floats)` makes the real model."""
    multiple = int(getattr(base, "pad_multiple", 8))
    user_float = tuple(user_float)
    qm = proxy_scheme(config.target)
    say(f"sensitivity: ranking layers on the {qm.TARGET} scheme")
    proxy, ranking, full = rank_layers(qm, base, example, batches, val, fp32, user_float, multiple)
    if full <= config.max_drop:
        k, trace = 0, []
    else:
        k, trace = greedy_count(qm, proxy, ranking, val, fp32, config.max_drop, multiple)
    rounds = []
    order = [name for name, _ in ranking]
    tries, n = [0] + ([k] if k else []), 0
    best = None
    while True:
        n = tries.pop(0) if tries else min(len(order), max(n + 1, 2 * n))
        floats = _in_model_order(base, user_float + tuple(order[:n]))
        say(f"sensitivity: {config.target} with {len(floats)} float layer(s)")
        prepared = build(floats)
        measured = drops(fp32, evaluate(prepared, val, multiple))
        rounds.append({"float_layers": list(floats), "drop_worst": measured["worst"],
                       "drop_mean": measured["mean"]})
        if best is None or measured["worst"] < best[2]:
            best = (prepared, floats, measured["worst"])
        if measured["worst"] <= config.max_drop or n >= len(order) or len(rounds) >= MAX_ROUNDS:
            break
    # more float layers need not lower the drop: keep the best choice measured, not the last one
    prepared, floats, _ = best
    report = {"budget_db": config.max_drop, "metric": "worst-task PSNR drop vs FP32 (dB)",
              "ranking_scheme": f"{qm.TARGET} scheme ({qm.STACK}): {qm.SWITCHED}",
              "proxy_drop_all_int8": float(full),
              "ranking": [[layer, g] for layer, g in ranking], "proxy_greedy": trace, "rounds": rounds,
              "chosen_round": next(i for i, r in enumerate(rounds) if r["float_layers"] == list(floats)),
              "within_budget": min(r["drop_worst"] for r in rounds) <= config.max_drop,
              "all_float": len(floats) == len(quantizable_layers(base))}
    return prepared, floats, report


def _in_model_order(base, names) -> tuple:
    wanted = set(names)
    return tuple(n for n in quantizable_layers(base) if n in wanted)


class _switched_off:
    def __init__(self, mods):
        self.mods = mods

    def __enter__(self):
        for m in self.mods:
            m.disable_fake_quant()

    def __exit__(self, *exc):
        for m in self.mods:
            m.enable_fake_quant()
