"""Where an INT8 model's error comes from: each activation quantizer's share, per task.

    .venv/bin/python benchmarks/int8_error_sources.py --target coreml --tasks medical/ct_denoise \
        --steps 300 --lr 1e-5 [--float-layers L1,L2] [--seed 0] [-o benchmarks/results/FILE.json]

Runs `quantize.qat.run_qat` on the bundled student (--student, default edge-xs; PTQ with --steps 0),
then scores the fake-quant model against the FP32 model's own output (PSNR in dB,
`quantize.loop.evaluate`, validation pairs of `qat_accuracy.py`) with every quantizer on, with the
weight quantizers off, with the activation quantizers off, and with one activation quantizer on at a
time (all others off). The last list, sorted, ranks the activation quantizers by the error each alone
adds: the ones to keep in float (`--float-layers` of `datprl-edge qat`) when a task misses its budget. A
drop <= 0.1 dB against the ground truth needs the INT8 output within 10*log10(1/(10^0.01 - 1)) = 16.3 dB
of the FP32 model's own PSNR, if the INT8 error is independent of the FP32 error (e.g. >= 56 dB for CT
at 39.8 dB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "int8_error_sources.json"


def quantizer_nodes(prepared) -> list:
    """[(label, fake-quant module, is_weight)] over every fx graph inside `prepared` (PT2E programs
    are one graph; the Core ML scheme prepares one graph per block)."""
    import torch.fx

    graphs = [(n, g) for n, g in prepared.named_modules() if isinstance(g, torch.fx.GraphModule)]
    out = []
    for unit, gm in graphs:
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = gm.get_submodule(node.target)
            if not hasattr(mod, "disable_fake_quant"):
                continue
            weight = any(a.op == "get_attr" for a in node.all_input_nodes)
            src = [_where(a) for a in node.all_input_nodes]
            users = [_where(u) for u in node.users]
            label = f"{unit + ': ' if unit else ''}{', '.join(src)} -> {', '.join(users)}"
            out.append((label, mod, weight))
    return out


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0].replace("L['self'].", "").replace("L__self___", "")
        return f"{node.name} ({path})"
    return node.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="coreml")
    ap.add_argument("--student", default="edge-xs", help="the bundled student (default edge-xs)")
    ap.add_argument("--tasks", default="medical/ct_denoise")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--float-layers", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-count", type=int, default=16)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--top", type=int, default=12, help="activation quantizers listed per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import torch
    from qat_accuracy import student

    from datprl_edge.core.host import isa_block
    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.quantize.inputs import calibration_pairs, validation_pairs
    from datprl_edge.quantize.loop import evaluate
    from datprl_edge.quantize.qat import QATConfig, fp32_outputs, run_qat
    from datprl_edge.quantize.scope import frozen_observers

    torch.set_num_threads(args.threads)
    model, desc, placeholder = student(name=args.student)
    calib, tasks = calibration_pairs("all")
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    val = validation_pairs(wanted, args.val_count, args.val_size)
    extra = {"float_layers": args.float_layers} if args.float_layers else {}
    cfg = QATConfig(target=args.target, steps=args.steps, lr=args.lr, batch_size=4, crop=64, seed=args.seed,
                    **extra)
    t0 = time.time()
    result = run_qat(model, cfg, calib, val=validation_pairs(tasks, args.val_count, args.val_size))
    prepared, multiple = result.prepared, int(getattr(model, "pad_multiple", 8))
    ref = fp32_outputs(model.eval(), val, multiple)
    nodes = quantizer_nodes(prepared)
    acts = [(label, m) for label, m, w in nodes if not w]
    weights = [m for _, m, w in nodes if w]

    def score() -> dict:
        return {t: round(v, 2) for t, v in evaluate(prepared, ref, multiple).items()}

    def switch(mods, on: bool) -> None:
        for m in mods:
            (m.enable_fake_quant if on else m.disable_fake_quant)()

    with frozen_observers(prepared):
        all_on = score()
        switch(weights, False)
        weights_off = score()
        switch(weights, True)
        switch([m for _, m in acts], False)
        acts_off = score()
        single = []
        for label, m in acts:
            switch([m], True)
            single.append((label, score()))
            switch([m], False)
        switch([m for _, m in acts], True)
    ranking = {t: [{"quantizer": label, "psnr_vs_fp32_alone": s[t]}
                   for label, s in sorted(single, key=lambda kv: kv[1][t])[:args.top]] for t in wanted}
    report = {
        "what": "INT8-vs-FP32 PSNR (dB, fake-quant model against the FP32 model's output) with all "
                "quantizers, without the weight quantizers, without the activation quantizers, and with "
                "one activation quantizer alone (ranking: the lowest first)",
        "command": "python benchmarks/int8_error_sources.py " + " ".join(sys.argv[1:] if argv is None
                                                                         else argv),
        "model": desc, "placeholder": placeholder, "target": args.target,
        "qat": {"steps": args.steps, "lr": args.lr, "seed": args.seed,
                "float_layers": list(result.float_layers)},
        "drop_db_vs_ground_truth": {t: round(result.metrics["drop_db"]["tasks"][t], 3) for t in wanted},
        "validation": f"validation_set(task, count={args.val_count}, size={args.val_size}, seed=0), "
                      "'val' split",
        "env": {"cpu_threads": torch.get_num_threads(), **isa_block()},
        "activation_quantizers": len(acts), "weight_quantizers": len(weights),
        "psnr_vs_fp32": {"all_int8": all_on, "weights_float": weights_off, "activations_float": acts_off},
        "ranking": ranking, "seconds": round(time.time() - t0, 1),
    }
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("drop_db_vs_ground_truth", "psnr_vs_fp32")}, indent=1))
    for t in wanted:
        print(t)
        for row in ranking[t][:6]:
            print(f"  {row['psnr_vs_fp32_alone']:.2f}  {row['quantizer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
