"""Receptive-field rules: which input positions each output position reads.

One rule per op, keyed by op name in the registry. A rule returns, per spatial axis
(H then W), a window ``(extent, stride, offset)``: output index o reads input indices
from ``floor(o * stride + offset)`` to ``floor(o * stride + offset) + extent - 1``
(clipped to the input). ``None`` means a global dependence (every input position).
Category rules cover most ops; windowed ops spell theirs out.
"""

import math

from framedelta.formats.ops import OPS, Category

ELEMENTWISE_WINDOW = ((1, 1.0, 0.0), (1, 1.0, 0.0))


def windowed(attrs, in_shapes, out_shape):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs["dilation"]
    return ((dh * (kh - 1) + 1, float(sh), float(-pt)), (dw * (kw - 1) + 1, float(sw), float(-pl)))


def elementwise(attrs, in_shapes, out_shape):
    return ELEMENTWISE_WINDOW


def global_(attrs, in_shapes, out_shape):
    return None


def nearest(attrs, in_shapes, out_shape):
    sy, sx = attrs["scales"]
    return ((1, float(sy), 0.0), (1, float(sx), 0.0))


def bilinear(attrs, in_shapes, out_shape):
    if attrs["align_corners"]:
        sy, sx = [(i - 1) / (o - 1) if o > 1 else 0.0
                  for i, o in zip(in_shapes[0][2:], out_shape[2:])]
        return ((2, sy, 0.0), (2, sx, 0.0))
    sy, sx = attrs["scales"]
    return ((2, float(sy), 0.5 * sy - 0.5), (2, float(sx), 0.5 * sx - 0.5))


def by_category(op):
    """The generic rule of an op's category (STYLE.md 2)."""
    cat = OPS[op].category
    if cat in (Category.ELEMENTWISE, Category.MULTI_INPUT):
        return elementwise
    if cat is Category.GLOBAL:
        return global_
    raise KeyError(f"windowed op {op!r} needs its own receptive-field rule")


def receptive_fields(graph, shapes, rules):
    """Per tensor: ((rf_h, rf_w), (jump_h, jump_w)) in input pixels, or None once global.

    rf is the side of the input window one position sees; jump is the input distance
    between neighbouring positions. Standard recurrence: rf += (extent - 1) * jump,
    jump *= stride; a multi-input op takes the largest of its inputs.
    """
    from framedelta.formats.ops import resolve_attrs
    out = {graph.input.name: ((1.0, 1.0), (1.0, 1.0))}
    for node in graph.nodes:
        ins = [out.get(t) for t in node.inputs]
        attrs = resolve_attrs(OPS[node.op], node.attrs)
        win = rules[node.op](attrs, [shapes[t] for t in node.inputs], shapes[node.outputs[0]])
        if win is None or any(i is None for i in ins) or len(shapes[node.outputs[0]]) != 4:
            out[node.outputs[0]] = None
            continue
        rf = [max(i[0][a] for i in ins) for a in range(2)]
        jump = [max(i[1][a] for i in ins) for a in range(2)]
        out[node.outputs[0]] = (
            tuple(rf[a] + (win[a][0] - 1) * jump[a] for a in range(2)),
            tuple(jump[a] * win[a][1] for a in range(2)))
    return out


def total_receptive_field(graph, shapes, rules):
    """Largest (rf_h, rf_w) over the spatial outputs, or None when an output is global."""
    fields = receptive_fields(graph, shapes, rules)
    best = (0, 0)
    for t in graph.outputs:
        f = fields.get(t)
        if f is None:
            return None
        best = (max(best[0], math.ceil(f[0][0])), max(best[1], math.ceil(f[0][1])))
    return best
