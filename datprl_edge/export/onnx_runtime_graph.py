"""ONNX target: rewrites of the exported graph into ops onnxruntime's CPU kernels run fastest.

Each pass computes exactly what it replaces (the export then verifies the file against torch):

- `upsampler_to_conv_transpose`: a bias-free 1x1 Conv followed by DepthToSpace(CRD, r) (the
  student's up-samplers: conv, pixel shuffle; an elementwise Clip in between moves after) equals a
  ConvTranspose with an r x r kernel and stride r, which onnxruntime ran 2.3-4.2x faster than the
  pair at the students' sizes (its DepthToSpace is a six-dimensional transpose). An int8 weight
  stays int8: its DequantizeLinear output is reordered (Reshape, Transpose) into ConvTranspose's
  layout.
- `fold_float_weight_dequant`: a conv that INT8 export keeps float (its output or its input is not
  8-bit) but whose weight is a DequantizeLinear of int8 values runs in onnxruntime's plain NCHW
  kernel, the weight dequantized again on every inference: the blocked-layout (NCHWc) kernels need a
  constant weight, and onnxruntime keeps DequantizeLinear out of its constant folding. Such weights
  are stored dequantized, as float32 (the same (q - zero_point) * scale products). Gemm weights on
  the prompt path stay int8 (no measurable gain there).
- `space_to_depth`: the Reshape -> Transpose(0,1,3,5,2,4) -> Reshape chain that pixel_unshuffle
  exports to becomes SpaceToDepth plus a Gather of its channels into pixel_unshuffle's order
  (6-8x faster at 3x256x256).
"""

from __future__ import annotations

import numpy as np

from datprl_edge.core.artifacts import require

UNSHUFFLE_PERM = [0, 1, 3, 5, 2, 4]
# what the rewrites do, recorded in each ONNX artifact's metadata (`onnx_graph`); a new rewrite gets a
# new version, so that benchmark artifacts built by an older one are rebuilt
REWRITES = ("onnxruntime rewrites v1 (ConvTranspose up-samplers, SpaceToDepth pixel unshuffles, "
            "float convs' weights dequantized)")


def optimize_for_onnxruntime(proto) -> dict:
    """Apply every pass to `proto` in place; returns {pass name: rewrites} for the export report."""
    counts = {
        "upsamplers_to_conv_transpose": upsampler_to_conv_transpose(proto),
        "float_conv_weights_dequantized": fold_float_weight_dequant(proto),
        "pixel_unshuffle_to_space_to_depth": space_to_depth(proto),
    }
    remove_dead_nodes(proto)
    return counts


class _Graph:
    """Producer / consumer / initializer lookups over a GraphProto, rebuilt after each rewrite."""

    def __init__(self, graph):
        self.g = graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def array(self, name):
        onnx = require("onnx")
        if name in self.inits:
            return onnx.numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return onnx.numpy_helper.to_array(node.attribute[0].t)
        return None

    def weight(self, name):
        """(constant values, None) of a float weight; (int8 values, its DequantizeLinear) of a
        dequantized one; (None, None) when the weight is computed."""
        value = self.array(name)
        if value is None and self.op(name) == "DequantizeLinear":
            dq = self.producer[name]
            value = self.array(dq.input[0])
            return (value, dq) if value is not None else (None, None)
        return value, None

    def op(self, name):
        node = self.producer.get(name)
        return node.op_type if node is not None else None

    # A tiny shape analysis, enough for the exporter's dynamic-size arithmetic: a shape tensor is a
    # list of pieces, each an int, ("dim", tensor, axis) or None (computed, one element).
    ELEMENTWISE = ("Relu", "Clip", "Cast", "QuantizeLinear", "DequantizeLinear")

    def rank(self, name):
        for i in self.g.input:
            if i.name == name:
                return len(i.type.tensor_type.shape.dim)
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in self.ELEMENTWISE + ("Pad", "Conv"):
            return self.rank(node.input[0])
        if node.op_type == "Reshape":
            pieces = self.pieces(node.input[1])
            return len(pieces) if pieces is not None else None
        return None

    def dim(self, name, axis: int):
        """The size of `name` along `axis` where it is fixed by the graph, else None."""
        for i in self.g.input:
            if i.name == name:
                dims = i.type.tensor_type.shape.dim
                d = dims[axis] if axis < len(dims) else None
                return d.dim_value if d is not None and d.HasField("dim_value") and d.dim_value > 0 else None
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in self.ELEMENTWISE:
            return self.dim(node.input[0], axis)
        if node.op_type == "Conv" and axis == 1:  # its weight's output channels
            weight, _ = self.weight(node.input[1])
            return int(weight.shape[0]) if weight is not None else None
        if node.op_type == "Pad":
            if len(node.input) > 3 and node.input[3]:  # pads over chosen `axes`: not analysed
                return None
            pads, rank = self.pieces(node.input[1]), self.rank(node.input[0])
            if pads is None or rank is None or len(pads) != 2 * rank:
                return None
            if pads[axis] != 0 or pads[rank + axis] != 0:  # padded along `axis`, or computed (None)
                return None
            return self.dim(node.input[0], axis)
        if node.op_type == "Reshape" and not self.attr(node, "allowzero", 0):
            pieces = self.pieces(node.input[1])
            if pieces is None or axis >= len(pieces):
                return None
            return self.dim(node.input[0], axis) if pieces[axis] == 0 else self.value(pieces[axis])
        return None

    def value(self, piece):
        if isinstance(piece, tuple):
            return self.dim(*piece[1:])
        return piece if isinstance(piece, int) and piece > 0 else None

    def pieces(self, name):
        const = self.array(name)
        if const is not None:
            return [int(v) for v in const.reshape(-1)]
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Shape":
            rank = self.rank(node.input[0])
            if rank is None:
                return None
            start, end = self.attr(node, "start", 0), self.attr(node, "end", rank)
            return [("dim", node.input[0], a) for a in range(rank)[start:end]]
        if node.op_type == "Concat":
            out = []
            for part in node.input:
                more = self.pieces(part)
                if more is None:
                    return None
                out.extend(more)
            return out
        if node.op_type in ("Div", "Mul", "Add", "Sub", "Mod", "Reshape", "Squeeze", "Unsqueeze", "Cast"):
            # arithmetic on one-element pieces (a size, a padding amount) gives one computed piece
            parts = [self.pieces(i) for i in node.input if i]
            return [None] if all(p is not None and len(p) == 1 for p in parts) else None
        return None

    def sole_consumer(self, name):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def attr(self, node, key, default=None):
        onnx = require("onnx")
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def add_init(self, name: str, value) -> str:
        onnx = require("onnx")
        name = self.unique(name)
        self.g.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.inits[name] = self.g.initializer[-1]
        return name

    def unique(self, base: str) -> str:
        taken = set(self.inits) | set(self.producer) | {i.name for i in self.g.input}
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name


def fold_float_weight_dequant(proto) -> int:
    return _rewrite_all(proto, _fold_one_dequant)


def _fold_one_dequant(g: _Graph, node):
    if node.op_type != "DequantizeLinear" or node.input[0] not in g.inits:
        return None
    users = g.consumers.get(node.output[0], [])
    if not users or node.output[0] in g.outputs or any(_keeps_dequant(g, u) for u in users):
        return None
    q, scale = g.array(node.input[0]), g.array(node.input[1])
    zero = g.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), q.dtype)
    if q.dtype not in (np.int8, np.uint8) or scale is None or zero is None:
        return None
    if scale.ndim == 1:  # per channel along `axis`
        shape = [1] * q.ndim
        shape[g.attr(node, "axis", 1)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    weight = (q.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale.astype(np.float32)
    return [node], [], {node.output[0]: g.add_init(node.output[0] + "_float", weight)}


def _keeps_dequant(g: _Graph, node) -> bool:
    """Whether this consumer of a dequantized weight needs the DequantizeLinear: anything but a
    conv, and a conv that onnxruntime fuses into an integer kernel (input dequantized, output
    quantized again; given a float weight it would quantize it itself, with its own scales)."""
    if node.op_type != "Conv":
        return True
    if g.op(node.input[0]) != "DequantizeLinear":
        return False
    out = node.output[0]
    while g.sole_consumer(out) is not None and g.sole_consumer(out).op_type in ("Relu", "Clip"):
        out = g.sole_consumer(out).output[0]  # an activation before the QuantizeLinear fuses too
    users = g.consumers.get(out, [])
    return bool(users) and all(u.op_type == "QuantizeLinear" for u in users)


def upsampler_to_conv_transpose(proto) -> int:
    return _rewrite_all(proto, _one_upsampler)


def _one_upsampler(g: _Graph, conv):
    onnx = require("onnx")
    if conv.op_type != "Conv" or (len(conv.input) > 2 and conv.input[2]):
        return None
    w, dq = g.weight(conv.input[1])  # an int8 weight (dq given) stays int8
    if (w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or g.attr(conv, "group", 1) != 1
            or any(s != 1 for s in g.attr(conv, "strides", [1, 1]))
            or any(p != 0 for p in g.attr(conv, "pads", [0, 0, 0, 0]))):
        return None
    clip = g.sole_consumer(conv.output[0])
    if clip is not None and clip.op_type != "Clip":
        clip = None
    shuffle = g.sole_consumer((clip or conv).output[0])
    if shuffle is None or shuffle.op_type != "DepthToSpace" or g.attr(shuffle, "mode", b"DCR") != b"CRD":
        return None
    r = g.attr(shuffle, "blocksize")
    cout, rest = divmod(w.shape[0], r * r)
    if rest:
        return None
    # ConvTranspose weight (Cin, Cout, r, r): element [ci, co, i, j] = w[co*r*r + i*r + j, ci]
    new = []
    if dq is None:
        grouped = w[:, :, 0, 0].reshape(cout, r, r, w.shape[1])
        weight = g.add_init(conv.input[1] + "_t", grouped.transpose(3, 0, 1, 2))
    else:  # per-output-channel scales cannot follow the weight into that layout: reorder after DQ
        shape = g.add_init(conv.input[1] + "_shape", np.array([cout, r, r, w.shape[1]], np.int64))
        grouped, weight = g.unique(conv.input[1] + "_grouped"), g.unique(conv.input[1] + "_t")
        new += [onnx.helper.make_node("Reshape", [conv.input[1], shape], [grouped], name=grouped),
                onnx.helper.make_node("Transpose", [grouped], [weight], perm=[3, 0, 1, 2], name=weight)]
    up = shuffle.output[0] if clip is None else g.unique(conv.output[0] + "_up")
    new.append(onnx.helper.make_node("ConvTranspose", [conv.input[0], weight], [up], kernel_shape=[r, r],
                                     strides=[r, r], name=g.unique(conv.name + "_transposed")))
    if clip is not None:  # Clip is elementwise: clip the transposed conv's output instead
        new.append(onnx.helper.make_node("Clip", [up, *clip.input[1:]], [shuffle.output[0]], name=clip.name))
    return [n for n in (conv, clip, shuffle) if n is not None], new, {}


def space_to_depth(proto) -> int:
    return _rewrite_all(proto, _one_unshuffle)


def _one_unshuffle(g: _Graph, tr):
    onnx = require("onnx")
    if tr.op_type != "Transpose" or list(g.attr(tr, "perm", [])) != UNSHUFFLE_PERM:
        return None
    first, last = g.producer.get(tr.input[0]), g.sole_consumer(tr.output[0])
    if (first is None or first.op_type != "Reshape" or last is None or last.op_type != "Reshape"
            or g.sole_consumer(first.output[0]) is not tr):
        return None
    pieces = g.pieces(first.input[1])  # (N, C, H/r, r, W/r, r)
    x = first.input[0]
    if pieces is None or len(pieces) != 6 or g.rank(x) != 4:
        return None
    r, channels = g.value(pieces[3]), g.dim(x, 1)
    last_pieces = g.pieces(last.input[1])
    if (not isinstance(r, int) or r < 2 or g.value(pieces[5]) != r or not channels
            or g.value(pieces[1]) != channels or last_pieces is None or len(last_pieces) != 4):
        return None
    # SpaceToDepth's channel k*C + c holds pixel_unshuffle's channel c*r*r + k
    order = [c * r * r + k for k in range(r * r) for c in range(channels)]
    mid = g.unique(tr.output[0] + "_s2d")
    gather = g.add_init(mid + "_order", np.argsort(order).astype(np.int64))
    new = [onnx.helper.make_node("SpaceToDepth", [x], [mid], blocksize=r, name=g.unique(tr.name + "_s2d")),
           onnx.helper.make_node("Gather", [mid, gather], [last.output[0]], axis=1,
                                 name=g.unique(tr.name + "_channel_order"))]
    return [first, tr, last], new, {}


def _rewrite_all(proto, match) -> int:
    """Apply `match` (graph, node) -> (old nodes, new nodes, input renames) | None until no node
    matches; returns the number of rewrites."""
    done = 0
    while True:
        g = _Graph(proto.graph)
        for node in proto.graph.node:
            found = match(g, node)
            if found:
                _replace(proto.graph, *found)
                done += 1
                break
        else:
            return done


def _replace(graph, old: list, new: list, renames: dict) -> None:
    """Put `new` where the last node of `old` stood (its inputs exist there: the graph stays sorted)
    and point every input named in `renames` at its replacement."""
    gone = {o for n in old for o in n.output}
    nodes = [n for n in graph.node if not gone & set(n.output)]
    last = max(i for i, n in enumerate(graph.node) if gone & set(n.output))
    at = sum(1 for n in graph.node[:last] if not gone & set(n.output))
    nodes[at:at] = new
    for n in nodes:
        for k, name in enumerate(n.input):
            if name in renames:
                n.input[k] = renames[name]
    del graph.node[:]
    graph.node.extend(nodes)


def remove_dead_nodes(proto) -> None:
    """Drop nodes (shape arithmetic of a replaced chain) and initializers nothing reads any more."""
    graph = proto.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inputs = {i.name for i in graph.input}
    live = [i for i in graph.initializer if i.name in needed or i.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(live)


def _subgraph_inputs(node) -> set:
    names = set()
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in sub.node:
                names.update(n.input)
    return names
