"""Rearranging: concat, resizing, views and no-ops, pad, slice/split/select, group norm.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import math

import numpy as np

from . import Data, Unused, axis_index, rule
from .tails import emit_reshape


# --- several inputs -----------------------------------------------------------------

@rule("aten.cat.default", produces=("concat",))
def cat(ctx, a):
    """torch.cat along channels (U-Net skips, DenseNet), along H or W, or along any axis
    but the batch of other tensors (detection heads: the last axis of (1, A, K))."""
    xs = [ctx.data(t, f"tensors[{i}]") for i, t in enumerate(a["tensors"])]
    rank = len(ctx.shape(xs[0]))
    axis = axis_index(int(a["dim"]), rank)
    if axis == 0:
        # torch.stack(xs) (unsqueeze + cat on dim 0): only a sum over it converts
        # (rules.windows.sum_dim); left over, passes.PSEUDO_OPS says why it cannot
        return ctx.emit("concat_batch", xs, {"axis": 0})
    return ctx.emit("concat", xs, {"axis": axis})


# --- resizing ------------------------------------------------------------------------

def _resize_scales(ctx, x, scale_factors):
    """torch's source step per output pixel: 1/scale_factor when a factor was given
    (F.interpolate(scale_factor=...)), else in/out (size=..., recompute_scale_factor)."""
    (_, _, ih, iw), (_, _, oh, ow) = ctx.shape(x), ctx.out_shape
    if scale_factors:
        sh, sw = (float(s) for s in scale_factors)
        if not (sh > 0 and sw > 0):
            raise ctx.unsupported(f"argument 'scale_factors' {list(scale_factors)} must be "
                                  f"positive")
        return (oh, ow), (1.0 / sh, 1.0 / sw)
    return (oh, ow), (ih / oh, iw / ow)


def _resize_input(ctx, a):
    x = ctx.data(a["input"], "input")
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument 'input': resizing needs an (N, C, H, W) input, "
                              f"got shape {ctx.shape(x)}")
    return x


@rule("aten.upsample_nearest2d.vec", produces=("upsample_nearest",))
def upsample_nearest2d(ctx, a):
    """F.interpolate(mode='nearest') and nn.Upsample, by size or by scale factor."""
    x = _resize_input(ctx, a)
    size, scales = _resize_scales(ctx, x, a["scale_factors"])
    return ctx.emit("upsample_nearest", [x], {"size": size, "scales": scales})


@rule("aten.upsample_bilinear2d.vec", produces=("upsample_bilinear",))
def upsample_bilinear2d(ctx, a):
    """F.interpolate(mode='bilinear'), align_corners either way, by size or scale factor.
    With align_corners the step is (in-1)/(out-1) and ``scales`` is not read."""
    x = _resize_input(ctx, a)
    size, scales = _resize_scales(ctx, x, a["scale_factors"])
    return ctx.emit("upsample_bilinear", [x], {
        "size": size, "align_corners": int(bool(a["align_corners"])), "scales": scales})


# --- shapes and no-ops ------------------------------------------------------------------

@rule("aten.view.default", "aten._unsafe_view.default", produces=("reshape", "identity"))
def view(ctx, a):
    """torch.flatten, x.view, x.reshape: any shape of as many elements, up to rank 6
    (N may change, e.g. view(8, 6, 6) of a (1, 8, 6, 6) tensor before bmm), except
    that a rank-4 result must have N = 1."""
    if isinstance(a["self"], np.ndarray):
        return a["self"].reshape([int(d) for d in a["size"]])
    return emit_reshape(ctx, ctx.data(a["self"], "self"), f"argument 'size' {list(a['size'])}")


@rule("aten.clone.default", "aten.alias.default", produces=("identity",))
def clone(ctx, a):
    """nn.Dropout in eval mode, x.clone(), x.contiguous() (clone); x.detach() (alias)."""
    if isinstance(a["self"], np.ndarray):
        return a["self"]
    return ctx.emit("identity", [ctx.data(a["self"], "self")])


@rule("aten._assert_tensor_metadata.default")
def assert_tensor_metadata(ctx, a):
    """What x.float() / x.to(torch.float32) leave on a tensor that is float32 already: a
    check of dtype and device made at export time. Nothing to compute."""
    return None


@rule("aten.constant_pad_nd.default", produces=("pad", "slice"))
def constant_pad_nd(ctx, a):
    """F.pad(mode='constant') of H and W with any value, and Conv2d(padding='same') with
    an even kernel. passes.fold_pads folds a zero pad into the convolutions that read
    it (asymmetric conv padding); any other pad is a `pad` node. Negative pads crop:
    a `slice` per cropped axis first."""
    x = ctx.data(a["self"], "self")
    pad, shape = [int(p) for p in a["pad"]], ctx.shape(x)
    value = float(a["value"])
    if math.isnan(value):
        raise ctx.unsupported(f"argument 'value'={a['value']}: NaN padding is not supported")
    if len(shape) != 4 or len(pad) % 2 or len(pad) > 8 or any(pad[4:]):
        raise ctx.unsupported(f"argument 'pad' {pad}: only padding of H and W of an "
                              f"(N, C, H, W) tensor is supported (not of the channel or "
                              f"batch axis; input shape {shape})")
    left, right, top, bottom = (pad + [0, 0, 0, 0])[:4]
    for axis, before, after in ((2, top, bottom), (3, left, right)):
        size = ctx.shape(x)[axis]
        start, end = max(0, -before), size + min(0, after)
        if start >= end:
            raise ctx.unsupported(f"argument 'pad' {pad}: the negative padding crops "
                                  f"axis {axis} (size {size}) to nothing")
        if (start, end) != (0, size):
            crop = list(ctx.shape(x))
            crop[axis] = end - start
            x = ctx.emit("slice", [x], {"axis": axis, "start": start, "end": end},
                         shape=tuple(crop)).name
    pads = (max(0, top), max(0, left), max(0, bottom), max(0, right))
    if not any(pads):
        return Data(x)
    return ctx.emit("pad", [x], {"pads": pads, "value": value})


@rule("operator.getitem")
def getitem(ctx, a):
    """Element 0 of batch norm's and max pool's tuples; the other elements are Unused."""
    value = a["self"][a["index"]]
    if isinstance(value, Unused):
        raise ctx.unsupported(f"the model reads {value.what}, which framedelta does not "
                              f"compute", op=value.op)
    return value


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

def _slice_range(size, start, end, step):
    """torch's bounds of x[start:end:step] on an axis of ``size``: None means the ends,
    negative values count from the end, then both are clamped into [0, size]."""
    def norm(v, default):
        if v is None:
            return default
        v = int(v)
        return min(max(v + size if v < 0 else v, 0), size)
    return norm(start, 0), norm(end, size), int(step)


def _emit_slice(ctx, x, axis, start, end, step=1):
    """A `slice` node of tensor ``x`` (identity when it keeps the whole axis), as Data."""
    in_shape = ctx.shape(x)
    size = in_shape[axis]
    if start >= end:
        raise ctx.unsupported(f"the slice [{start}:{end}] of axis {axis} (size {size}) is "
                              f"empty: empty tensors are not supported")
    if axis == 0:
        raise ctx.unsupported(f"slicing the batch (dim 0) [{start}:{end}:{step}] is not "
                              f"supported, the batch stays 1")
    out = list(in_shape)
    out[axis] = len(range(start, end, step))
    if start == 0 and out[axis] == size:
        return ctx.emit("identity", [x], shape=in_shape)
    return ctx.emit("slice", [x], {"axis": axis, "start": start, "end": end, "step": step},
                    shape=tuple(out))


@rule("aten.slice.Tensor", produces=("slice", "identity"))
def slice_tensor(ctx, a):
    """x[:, 2:5], x[..., ::2], x[:, -3:], x.narrow(1, 1, 3), torch.tensor_split: one
    `slice` per sliced axis (a whole-axis slice is an identity, which a pass removes)."""
    if isinstance(a["self"], np.ndarray):
        index = [slice(None)] * a["self"].ndim
        index[int(a["dim"])] = slice(a["start"], a["end"], a["step"])
        return a["self"][tuple(index)]
    x = ctx.data(a["self"], "self")
    shape = ctx.shape(x)
    axis = axis_index(int(a["dim"]), len(shape))
    start, end, step = _slice_range(shape[axis], a["start"], a["end"], a["step"])
    if step < 1:
        raise ctx.unsupported(f"argument 'step'={step}: the step must be positive")
    return _emit_slice(ctx, x, axis, start, end, step)


def _split(ctx, a, sizes, what):
    x = ctx.data(a["self"], "self")
    shape = ctx.shape(x)
    axis = axis_index(int(a["dim"]), len(shape))
    if sum(sizes) != shape[axis] or min(sizes) < 0:
        raise ctx.unsupported(f"argument {what} {sizes} does not split axis {axis} of "
                              f"size {shape[axis]}")
    parts, start = [], 0
    for size in sizes:
        if size == 0:
            parts.append(Unused(ctx.op, "an empty piece of the split"))
        else:
            parts.append(_emit_slice(ctx, x, axis, start, start + size))
        start += size
    return tuple(parts)


@rule("aten.split_with_sizes.default", produces=("slice", "identity"))
def split_with_sizes(ctx, a):
    """torch.split(x, [3, 5], 1), torch.split(x, 4, 1), torch.chunk(x, 2, 1) (all export
    as split_with_sizes + getitem): one `slice` per piece; unused pieces are dropped."""
    return _split(ctx, a, [int(s) for s in a["split_sizes"]], "'split_sizes'")


@rule("aten.split.Tensor", produces=("slice", "identity"))
def split_tensor(ctx, a):
    """torch.split(x, n, dim) where the export keeps it: pieces of n, the last smaller."""
    x = ctx.data(a["self"], "self")
    n, size = int(a["split_size"]), ctx.shape(x)[axis_index(int(a["dim"]), len(ctx.shape(x)))]
    if n < 1:
        raise ctx.unsupported(f"argument 'split_size'={n} must be positive")
    return _split(ctx, a, [min(n, size - i) for i in range(0, size, n)] or [0],
                  "'split_size'")


@rule("aten.select.int", produces=("slice", "reshape"))
def select_int(ctx, a):
    """x[:, 0], x[:, :, 2]: a one-wide `slice`, then a `reshape` that drops the axis."""
    if isinstance(a["self"], np.ndarray):
        return np.take(a["self"], int(a["index"]), axis=int(a["dim"]))
    x = ctx.data(a["self"], "self")
    shape = ctx.shape(x)
    axis = axis_index(int(a["dim"]), len(shape))
    index = int(a["index"])
    if not -shape[axis] <= index < shape[axis]:
        raise ctx.unsupported(f"argument 'index'={index} is out of range for axis {axis} "
                              f"of size {shape[axis]}")
    index += shape[axis] if index < 0 else 0
    if axis == 0:
        raise ctx.unsupported("selecting from the batch (dim 0) is not supported: the "
                              "batch stays 1")
    one = _emit_slice(ctx, x, axis, index, index + 1)
    out = ctx.out_shape
    return ctx.emit("reshape", [one.name], {"shape": out}, shape=out)


@rule("aten.native_group_norm.default", produces=("group_norm", "reshape"))
def native_group_norm(ctx, a):
    """nn.GroupNorm / F.group_norm, affine or not (weight ones, bias zeros). Other ranks
    than 4 (GroupNorm on (N, C, L)) go through a reshape to (1, C, L, 1) and back."""
    x = ctx.data(a["input"], "input")
    shape = ctx.shape(x)
    c, g = shape[1], int(a["group"])
    if shape[0] != 1 or len(shape) < 2:
        raise ctx.unsupported(f"argument 'input': group norm needs a (1, C, ...) input, got "
                              f"shape {shape}")
    if g < 1 or c % g:
        raise ctx.unsupported(f"argument 'group'={g} does not divide the {c} channels")
    weight = np.ones(c) if a["weight"] is None else ctx.const(a["weight"], "weight")
    bias = np.zeros(c) if a["bias"] is None else ctx.const(a["bias"], "bias")
    if weight.size != c or bias.size != c:
        raise ctx.unsupported(f"arguments 'weight' {weight.shape} and 'bias' {bias.shape} "
                              f"must have one value per channel ({c})")
    eps = float(a["eps"])
    if not eps >= 0:
        raise ctx.unsupported(f"argument 'eps'={eps} must be a number >= 0")
    y = x
    if len(shape) != 4:
        flat = (1, c, math.prod(shape[2:]), 1)
        y = ctx.emit("reshape", [x], {"shape": flat}, shape=flat).name
    y = ctx.emit("group_norm", [y], {"num_groups": g, "eps": eps},
                 {"weight": weight.reshape(-1), "bias": bias.reshape(-1)},
                 shape=ctx.shape(y)).name
    if len(shape) != 4:
        y = ctx.emit("reshape", [y], {"shape": shape}, shape=shape).name
    op = "aten.native_group_norm.default"
    return Data(y), Unused(op, "the saved mean"), Unused(op, "the saved inverse std")


# Ops with no rule that the model reaches through a spelling the user would not
# recognise: the error names the op with the hint and says what the model did.
NO_RULE_HINTS = {
    "aten.index.Tensor": (
        "advanced indexing with an index tensor; F.pad(mode='reflect' "
        "or 'replicate') and Conv2d(padding_mode='reflect' or 'replicate') decompose into "
        "it, with indices built by aten.arange: use constant (zero) padding instead"),
    "aten.slice_scatter.default": (
        "writing into a slice of a tensor; F.pad(mode='circular') and "
        "Conv2d(padding_mode='circular') decompose into it: use constant (zero) padding "
        "instead"),
}
