"""Shapes and layout: Reshape, Flatten, Transpose, (Un)Squeeze, Concat, Slice, Split,
Shape, Pad, Resize / Upsample, Gemm, MatMul, ReduceMean, ReduceSum.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import math

import numpy as np

from ...rules import Data
from ...rules.rearrange import _emit_slice
from ...rules.tails import _linear, _matmul, emit_reshape
from ...rules.windows import mean_dim, sum_dim
from ..fold import axes_of, reshape_target, slice_params
from . import axis, image, onnx_rule


def _reshaped(ctx, ins, shape, what):
    return emit_reshape(ctx, ctx.data(ins[0], "data"), what, tuple(int(d) for d in shape))


@onnx_rule("Reshape", produces=("reshape", "identity"))
def reshape(ctx, ins, attrs):
    """To a constant shape (0 copies a dimension, -1 is inferred)."""
    x = ctx.data(ins[0], "data")
    target = reshape_target(ctx.shape(x), ctx.const(ins[1], "shape"), attrs.get("allowzero", 0))
    return _reshaped(ctx, ins, target, f"input 'shape' {list(target)}")


@onnx_rule("Flatten", produces=("reshape", "identity"))
def flatten(ctx, ins, attrs):
    """To (prod of the axes before ``axis``, prod of the rest)."""
    shape = ctx.shape(ctx.data(ins[0], "input"))
    a = axis(ctx, attrs.get("axis", 1), len(shape) + 1)
    return _reshaped(ctx, ins, (math.prod(shape[:a]), math.prod(shape[a:])), "the flattened")


@onnx_rule("Squeeze", produces=("reshape", "identity"))
def squeeze(ctx, ins, attrs):
    """Drop the given axes of size 1 (all of them without axes)."""
    shape = ctx.shape(ctx.data(ins[0], "data"))
    axes = axes_of(ins, attrs, ctx.opset, 13, len(shape))
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else axes
    return _reshaped(ctx, ins, [d for i, d in enumerate(shape) if i not in axes], "the squeezed")


@onnx_rule("Unsqueeze", produces=("reshape", "identity"))
def unsqueeze(ctx, ins, attrs):
    """Insert axes of size 1."""
    shape = list(ctx.shape(ctx.data(ins[0], "data")))
    axes = axes_of(ins, attrs, ctx.opset, 13)
    for a in sorted(a + len(shape) + len(axes) if a < 0 else a for a in axes):
        shape.insert(a, 1)
    return _reshaped(ctx, ins, shape, "the unsqueezed")


@onnx_rule("Transpose", produces=("permute", "identity"))
def transpose(ctx, ins, attrs):
    """permute; the identity permutation is an identity."""
    x = ctx.data(ins[0], "data")
    shape = ctx.shape(x)
    perm = tuple(int(p) for p in attrs.get("perm", range(len(shape) - 1, -1, -1)))
    if perm == tuple(range(len(shape))):
        return ctx.emit("identity", [x])
    return ctx.emit("permute", [x], {"dims": perm})


@onnx_rule("Shape", produces=())
def shape(ctx, ins, attrs):
    """The shape of a computed tensor is known once the input shape is fixed: a
    constant (start and end of opset 15 honoured)."""
    s = np.asarray(ctx.shape(ctx.data(ins[0], "data")), np.int64)
    return s[attrs.get("start", 0):attrs.get("end", len(s))]


@onnx_rule("Concat", produces=("concat",))
def concat(ctx, ins, attrs):
    """Along any axis but the batch; every input computed from the input."""
    xs = [ctx.data(v, f"inputs[{i}]") for i, v in enumerate(ins)]
    a = axis(ctx, attrs["axis"], len(ctx.shape(xs[0])))
    if a == 0:
        raise ctx.unsupported("attribute 'axis'=0: concatenation along the batch is not "
                              "supported, the batch stays 1")
    return ctx.emit("concat", xs, {"axis": a})


@onnx_rule("Slice", produces=("slice", "identity"))
def slice_(ctx, ins, attrs):
    """One `slice` per sliced axis, positive steps."""
    x = ctx.data(ins[0], "data")
    y = Data(x)
    for a, start, end, step in slice_params(ins, attrs, ctx.opset, ctx.shape(x)):
        if step < 1:
            raise ctx.unsupported(f"step {step} on axis {a}: only positive steps are "
                                  f"supported")
        y = _emit_slice(ctx, y.name, a, start, end, step)
    return y


@onnx_rule("Split", produces=("slice", "identity"))
def split(ctx, ins, attrs):
    """Pieces of the given sizes (attribute before opset 13, input from it), or equal
    pieces (the last smaller: num_outputs of opset 18)."""
    x = ctx.data(ins[0], "input")
    shape = ctx.shape(x)
    a = axis(ctx, attrs.get("axis", 0), len(shape))
    sizes = attrs.get("split") if ctx.opset < 13 else (ins[1] if len(ins) > 1 else None)
    if sizes is None:
        n = int(attrs.get("num_outputs", len(ctx.onnx_node.output)))
        step = -(-shape[a] // n)
        sizes = [min(step, shape[a] - i) for i in range(0, shape[a], step)]
    parts, start = [], 0
    for size in (int(s) for s in np.asarray(sizes).reshape(-1)):
        parts.append(_emit_slice(ctx, x, a, start, start + size))
        start += size
    return parts


@onnx_rule("Pad", produces=("pad",))
def pad(ctx, ins, attrs):
    """Constant padding of H and W (pads and value from attributes before opset 11,
    inputs from it)."""
    x = image(ctx, ins[0], "data")
    if attrs.get("mode", "constant") != "constant":
        raise ctx.unsupported(f"attribute 'mode'={attrs['mode']!r}: only constant padding "
                              f"is supported")
    if ctx.opset < 11:
        pads, value = attrs["pads"], float(attrs.get("value", 0.0))
    else:
        pads = ctx.const(ins[1], "pads")
        value = 0.0 if len(ins) < 3 or ins[2] is None else float(np.asarray(ins[2]).reshape(-1)[0])
        if len(ins) > 3 and ins[3] is not None:
            raise ctx.unsupported("input 'axes' is not supported")
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    if len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)) or min(p) < 0:
        raise ctx.unsupported(f"pads {p}: only non-negative padding of H and W is "
                              f"supported")
    return ctx.emit("pad", [x], {"pads": (p[2], p[3], p[6], p[7]), "value": value})


def _resize_size(ctx, ins, attrs, shape):
    """(output (oh, ow), scale factors (fh, fw) or None when sizes were given)."""
    if ctx.op == "Upsample" or ctx.opset < 11:
        scales = attrs.get("scales") if len(ins) < 2 else ctx.const(ins[1], "scales")
        sizes = None
    else:
        scales = ins[2] if len(ins) > 2 else None
        sizes = ins[3] if len(ins) > 3 else None
        if scales is not None and np.asarray(scales).size == 0:
            scales = None
    if sizes is not None:
        sizes = [int(s) for s in np.asarray(ctx.const(sizes, "sizes")).reshape(-1)]
        if len(sizes) != 4 or sizes[:2] != list(shape[:2]):
            raise ctx.unsupported(f"sizes {sizes}: only H and W may change")
        return tuple(sizes[2:]), None
    f = [float(s) for s in np.asarray(ctx.const(scales, "scales")).reshape(-1)]
    if len(f) != 4 or f[:2] != [1.0, 1.0] or min(f) <= 0:
        raise ctx.unsupported(f"scales {f}: only positive scales of H and W are supported")
    return (int(math.floor(shape[2] * f[2])), int(math.floor(shape[3] * f[3]))), tuple(f[2:])


@onnx_rule("Resize", "Upsample", produces=("upsample_nearest", "upsample_bilinear"))
def resize(ctx, ins, attrs):
    """nearest (asymmetric + floor; or half-pixel rounding at an integer factor, which
    picks the same pixels) and linear (half_pixel, pytorch_half_pixel, align_corners)
    resizing of H and W, by scales or sizes."""
    x = image(ctx, ins[0], "X")
    shape = ctx.shape(x)
    (oh, ow), f = _resize_size(ctx, ins, attrs, shape)
    mode = attrs.get("mode", "nearest")
    coord = attrs.get("coordinate_transformation_mode",
                      "asymmetric" if ctx.op == "Upsample" or ctx.opset < 11 else "half_pixel")
    step = (1.0 / f[0], 1.0 / f[1]) if f else (shape[2] / oh, shape[3] / ow)
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        integer = oh % shape[2] == 0 and ow % shape[3] == 0 and \
            (f is None or (f[0] == oh // shape[2] and f[1] == ow // shape[3]))
        floor = coord == "asymmetric" and (nearest == "floor" or ctx.opset < 11)
        half = coord in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round")
        if floor or (half and integer):
            return ctx.emit("upsample_nearest", [x], {"size": (oh, ow), "scales": step})
        raise ctx.unsupported(f"nearest resize with coordinate_transformation_mode "
                              f"{coord!r} and nearest_mode {nearest!r} is not supported "
                              f"(asymmetric + floor is)")
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        if coord == "pytorch_half_pixel" and 1 in (oh, ow):
            raise ctx.unsupported("pytorch_half_pixel to a size of 1 is not supported")
        return ctx.emit("upsample_bilinear", [x], {
            "size": (oh, ow), "align_corners": int(coord == "align_corners"), "scales": step})
    raise ctx.unsupported(f"mode {mode!r} with coordinate_transformation_mode {coord!r} is "
                          f"not supported (nearest, and linear with half_pixel or "
                          f"align_corners, are)")


@onnx_rule("Gemm", produces=("linear",))
def gemm(ctx, ins, attrs):
    """alpha * A @ op(B) + beta * C with A computed (not transposed), B and C constant:
    a linear layer."""
    x = ctx.data(ins[0], "A")
    if attrs.get("transA", 0):
        raise ctx.unsupported("attribute 'transA'=1 is not supported")
    w = ctx.const(ins[1], "B")
    w_t = w.T if attrs.get("transB", 0) else w
    bias = None if len(ins) < 3 or ins[2] is None else np.broadcast_to(
        ctx.const(ins[2], "C"), (w_t.shape[1],))
    return _linear(ctx, x, w_t, bias, attrs.get("alpha", 1.0), attrs.get("beta", 1.0),
                   shape=(ctx.shape(x)[0], w_t.shape[1]))


@onnx_rule("MatMul", produces=("matmul", "linear", "permute", "reshape"))
def matmul(ctx, ins, attrs):
    """A @ B: of two computed tensors, or with one constant side (a linear layer on
    the rows), as the torch rules lower mm / bmm."""
    sa, sb = (ctx.shape(v.name) if isinstance(v, Data) else np.shape(v) for v in ins[:2])
    ctx.out_shape = tuple(np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))) + (sa[-2], sb[-1])
    return _matmul(ctx, ins[0], ins[1], "A", "B")


def _reduce(torch_rule):
    def fn(ctx, ins, attrs):
        x = ctx.data(ins[0], "data")
        rank = len(ctx.shape(x))
        since = 13 if torch_rule is sum_dim else 18
        axes = axes_of(ins, attrs, ctx.opset, since, rank) or list(range(rank))
        keep = bool(attrs.get("keepdims", 1))
        ctx.out_shape = tuple(1 if i in axes else d for i, d in enumerate(ctx.shape(x))
                              if keep or i not in axes)
        return torch_rule(ctx, {"self": ins[0], "dim": axes, "keepdim": keep, "dtype": None})
    fn.__doc__ = f"As torch's {torch_rule.__name__}: {torch_rule.__doc__.splitlines()[0]}"
    return fn


onnx_rule("ReduceMean", produces=("global_avg_pool",))(_reduce(mean_dim))
onnx_rule("ReduceSum", produces=("add", "conv2d", "permute", "reshape", "linear"))(
    _reduce(sum_dim))
