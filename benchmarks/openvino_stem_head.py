"""Can edge-lat's full-resolution ends run faster on the OpenVINO CPU plugin? Its stem (pixel
unshuffle + 3x3 intro conv) and head (3x3 ending conv + pixel shuffle) are the float layers of the
INT8 artifact and, with the reorders around them, about a quarter of its profile at 256x256. Each end
is built as an OpenVINO graph from the shipped weights, as exported and in exactly equivalent forms:

- stem: unshuffle + conv (as exported; OpenVINO keeps the unshuffle a Transpose), one 6x6 stride-2
  conv on the image, SpaceToDepth + conv, and the intro conv in INT8 (u8 image, 7-bit weights);
- head: conv + DepthToSpace (as exported), one 6x6 stride-2 ConvTranspose, and the ending conv in
  INT8 (activations quantized over the range of the timing input).

Reported per form: the largest difference from the as-exported output, the node types of the
compiled runtime graph, and the latency in alternating rounds (in-process; the order flips each
round). The INT8 forms are timing only: what INT8 image convs cost in quality is measured by
`openvino_float_ops.py` (placements "toolkit" and "float_image_convs").

    python benchmarks/openvino_stem_head.py [--student bundled:edge-lat] [--rounds 15] [--threads N]
        [--out benchmarks/results/avx2/openvino_stem_head.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from datprl_edge.core.host import default_threads, isa_block, load_average  # noqa: E402
from datprl_edge.io.atomic import write_text_atomic  # noqa: E402


def end_weights(spec: str) -> tuple[dict, int, int]:
    from datprl_edge.sources import resolve_model

    model = resolve_model(spec)
    stem = model.datprl_config["options"].get("stem", 1)
    if stem != 2:
        raise SystemExit(f"{spec} has stem {stem}; this benchmark is about stem-2 students (edge-lat)")
    w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()
         if k.split(".")[0] in ("intro", "ending")}
    return w, w["intro.weight"].shape[0], model.img_channel


def _fq(ops, node, low, high, levels):
    lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
    return ops.fake_quantize(node, lo, hi, lo, hi, levels)


def _int8_weights(ops, w: np.ndarray):
    """Per-output-channel symmetric weights on 7 bits (|q| <= 63, the scheme's overflow fix) in an
    8-bit FakeQuantize (255 levels, twice the range), the form the CPU plugin runs as int8."""
    step = np.abs(w).reshape(w.shape[0], -1).max(1).reshape(-1, 1, 1, 1).astype(np.float32) / 63
    q = (np.round(w / step) * step).astype(np.float32)
    return _fq(ops, ops.constant(q), -127 * step, 127 * step, 255)


def stem_forms(ops, w, c: int, side: int) -> dict:
    half, wi, bi = side // 2, w["intro.weight"], w["intro.bias"].reshape(1, -1, 1, 1)

    def unshuffled(p):
        r = ops.reshape(p, ops.constant(np.array([1, c, half, 2, half, 2])), False)
        t = ops.transpose(r, ops.constant(np.array([0, 1, 3, 5, 2, 4])))
        return ops.reshape(t, ops.constant(np.array([1, 4 * c, half, half])), False)

    def conv3(x, weights):
        return ops.add(ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1]), ops.constant(bi))

    strided = np.zeros((wi.shape[0], c, 6, 6), np.float32)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                strided[:, ch, i::2, j::2] = wi[:, ch * 4 + i * 2 + j]
    forms = {
        "as_exported": lambda p: conv3(unshuffled(p), ops.constant(wi)),
        "strided_conv": lambda p: ops.add(ops.convolution(p, ops.constant(strided), [2, 2], [2, 2], [2, 2],
                                                          [1, 1]), ops.constant(bi)),
        "space_to_depth": lambda p: conv3(ops.space_to_depth(p, "depth_first", 2), ops.constant(wi)),
        "int8_conv": lambda p: conv3(_fq(ops, unshuffled(p), 0.0, 1.0, 256), _int8_weights(ops, wi)),
    }
    return {name: (build, [1, c, side, side]) for name, build in forms.items()}


def head_forms(ops, w, width: int, c: int, side: int, feat_range: float) -> dict:
    half, we, be = side // 2, w["ending.weight"], w["ending.bias"]

    def conv3(x, weights):
        y = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
        return ops.depth_to_space(ops.add(y, ops.constant(be.reshape(1, -1, 1, 1))), "depth_first", 2)

    # conv(16 -> 4c) + shuffle == ConvTranspose(16 -> c, 6x6, stride 2, pad 2): output row 2y+i reads
    # input rows y+dy-1, i.e. kernel row i + 4 - 2*dy
    wt = np.zeros((width, c, 6, 6), np.float32)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                for dy in range(3):
                    for dx in range(3):
                        wt[:, ch, i + 4 - 2 * dy, j + 4 - 2 * dx] = we[ch * 4 + i * 2 + j, :, dy, dx]

    def deconv(p):
        y = ops.convolution_backprop_data(p, ops.constant(wt), [2, 2], None, [2, 2], [2, 2], [1, 1])
        # the bias differs per output phase (i, j): add it as a shuffled constant plane
        phase = be.reshape(c, 2, 2)
        plane = np.tile(phase, (1, half, half)).reshape(1, c, side, side).astype(np.float32)
        return ops.add(y, ops.constant(plane))

    forms = {
        "as_exported": lambda p: conv3(p, ops.constant(we)),
        "conv_transpose": deconv,
        "int8_conv": lambda p: conv3(_fq(ops, p, -feat_range, feat_range, 256), _int8_weights(ops, we)),
    }
    return {name: (build, [1, width, half, half]) for name, build in forms.items()}


def runtime_node_types(compiled) -> dict:
    """{layer type (kernel for convolutions): count} of the compiled runtime graph."""
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if "onvolution" in kind:
            kind += f" ({info['primitiveType'].astype(str)})"
        counts[kind] += 1
    return dict(sorted((k, v) for k, v in counts.items() if k not in ("Input", "Output", "Const")))


def measure(forms: dict, rounds: int, threads: int, seed: int) -> dict:
    import openvino as ov

    core = ov.Core()
    rng = np.random.default_rng(seed)
    compiled, inputs = {}, {}
    for name, (build, shape) in forms.items():
        p = ov.opset13.parameter(shape, np.float32)
        model = ov.Model([build(p)], [p], name)
        compiled[name] = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": "f32"})
        inputs[name] = shape
    x = {tuple(s): rng.random(s, dtype=np.float32) for s in inputs.values()}
    requests = {n: c.create_infer_request() for n, c in compiled.items()}
    outs = {n: requests[n].infer({0: x[tuple(inputs[n])]})[0].copy() for n in requests}
    ref = outs["as_exported"]
    times = {n: [] for n in requests}
    names = list(requests)
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            req, xin = requests[n], {0: x[tuple(inputs[n])]}
            for _ in range(3):
                req.infer(xin)
            t = time.perf_counter()
            for _ in range(20):
                req.infer(xin)
            times[n].append((time.perf_counter() - t) / 20 * 1e3)
    base = statistics.median(times["as_exported"])
    return {n: {"max_abs_diff": float(np.abs(outs[n] - ref).max()), "runtime_nodes": runtime_node_types(c),
                "ms_median_of_rounds": round(statistics.median(times[n]), 4),
                "ms_rounds": [round(t, 4) for t in times[n]],
                "vs_as_exported": round(statistics.median(times[n]) / base, 3)}
            for n, c in compiled.items()}


def main(argv=None) -> int:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="bundled:edge-lat")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results" / "avx2" / "openvino_stem_head.json"))
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    w, width, c = end_weights(args.student)
    load_start = load_average()
    stem = measure(stem_forms(ov.opset13, w, c, args.size), args.rounds, threads, 0)
    head = measure(head_forms(ov.opset13, w, width, c, args.size, 4.0), args.rounds, threads, 1)
    report = {"command": "python benchmarks/openvino_stem_head.py " + shlex.join(argv or sys.argv[1:]),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "student": args.student, "size": args.size,
              "threads": threads, "openvino": ov.__version__, "environment": isa_block(),
              "load_average_start": load_start, "load_average_end": load_average(),
              "stem": stem, "head": head}
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    for part, forms in (("stem", stem), ("head", head)):
        for name, r in forms.items():
            print(f"{part:5s} {name:15s} {r['ms_median_of_rounds']:7.3f} ms  x{r['vs_as_exported']:.2f}  "
                  f"max diff {r['max_abs_diff']:.2e}  {r['runtime_nodes']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
