"""The vocabulary of ops a model file may hold: one schema per op.

Each schema says what SPEC.md says in words: the op's stable id, its category (which
drives the generic change-propagation rule), how many inputs it takes, its attributes
with their types and bounds, the weight datasets it needs and their shapes, and how
its output shapes follow from its input shapes. The validator, the engine and the
converter all read these; nothing here computes on data.

Shapes are always in torch layout: (N, C, H, W) for images, (N, F) for vectors.
Ids are stable: never renumber or reuse one; retired ids stay as comments.
"""

import math
import operator
from dataclasses import dataclass
from enum import Enum

# Bounds that keep a hostile file from asking for absurd allocations.
MAX_DIM = 1 << 16            # any one dimension
MAX_NUMEL = (1 << 31) - 1    # elements of any one tensor or weight (int32 indexing in kernels)
MAX_NODES = 1 << 16
MAX_RANK = 6
MAX_KERNEL = 1 << 10
MAX_STRIDE = 1 << 10
MAX_NAME_LEN = 1 << 10       # UTF-8 bytes of a node or tensor name
MAX_TEXT_LEN = 1 << 16       # UTF-8 bytes of free text (producer, a node's source)


class SchemaError(ValueError):
    """A rule of an op's schema is broken; ``field`` names the attribute or dataset."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(message)


class Category(str, Enum):
    """How a change at an input position spreads to the output (DESIGN.md, STYLE.md 2)."""
    ELEMENTWISE = "elementwise"   # output position p depends on input position p only
    WINDOWED = "windowed"         # on a window of input positions (kernel, stride, pad)
    GLOBAL = "global"             # on every input position
    MULTI_INPUT = "multi_input"   # on position p of every input (union of masks)


REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute: ``kind`` is int, ints, float, floats or str."""
    kind: str
    length: int = None          # for ints/floats: exact length, None = any (>= 1)
    min: float = None
    max: float = None
    choices: tuple = ()
    default: object = REQUIRED
    doc: str = ""
    empty_ok: bool = False      # ints/floats: an empty list is allowed (means "absent")


@dataclass(frozen=True)
class OpSchema:
    name: str
    op_id: int
    category: Category
    inputs: tuple               # (min, max) number of inputs; max None = unbounded
    attrs: dict
    weights: object             # (attrs, in_shapes) -> {dataset name: shape}
    infer: object               # (attrs, in_shapes) -> [output shape]
    macs: object = None         # (attrs, in_shapes, out_shapes) -> multiply-accumulates
    doc: str = ""
    outputs: int = 1

    def count_macs(self, attrs, in_shapes, out_shapes):
        return int(self.macs(attrs, in_shapes, out_shapes)) if self.macs else 0


def _numel(shape):
    return math.prod(shape)


def _no_weights(attrs, in_shapes):
    return {}


def _same_shape(attrs, in_shapes):
    return [tuple(in_shapes[0])]


def _per_element(attrs, in_shapes, out_shapes):
    return _numel(out_shapes[0])


def _need_rank(in_shapes, ranks, field="input"):
    for i, s in enumerate(in_shapes):
        if len(s) not in ranks:
            raise SchemaError(f"{field}[{i}]",
                              f"expects rank {' or '.join(map(str, ranks))}, got shape {tuple(s)}")


def window_out(size, k, s, p0, p1, d, ceil_mode=False):
    """Output length of a window op along one axis, as torch computes it."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // s) + 1
        # torch: the last window must start inside the input or the leading padding
        if (out - 1) * s >= size + p0:
            out -= 1
        return out
    return span // s + 1


def _window_shape(attrs, shape, ceil_mode=False, pads_inside=True):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, pb, pr = attrs["pads"]
    dh, dw = attrs["dilation"]
    if pads_inside and (max(pt, pb) >= dh * (kh - 1) + 1 or max(pl, pr) >= dw * (kw - 1) + 1):
        # a pooling window made of padding alone has no input to read (torch forbids
        # it); a convolution window in the padding is just the bias
        raise SchemaError("pads", f"padding {attrs['pads']} is not smaller than the kernel extent")
    oh = window_out(shape[2], kh, sh, pt, pb, dh, ceil_mode)
    ow = window_out(shape[3], kw, sw, pl, pr, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise SchemaError("kernel", f"window {attrs['kernel']} (dilation {attrs['dilation']}, "
                          f"pads {attrs['pads']}) does not fit input of shape {tuple(shape)}")
    return oh, ow


_WINDOW_ATTRS = {
    "kernel": Attr("ints", 2, 1, MAX_KERNEL, doc="(kh, kw)"),
    "stride": Attr("ints", 2, 1, MAX_STRIDE, doc="(sh, sw)"),
    "pads": Attr("ints", 4, 0, MAX_KERNEL, doc="(top, left, bottom, right)"),
    "dilation": Attr("ints", 2, 1, MAX_KERNEL, doc="(dh, dw)"),
}


# --- conv2d ----------------------------------------------------------------------

def _conv_channels(attrs, in_shapes):
    """(cin, groups, cout) of conv2d and conv_transpose2d, both divisible by groups."""
    _need_rank(in_shapes, (4,))
    cin, g, cout = in_shapes[0][1], attrs["groups"], attrs["out_channels"]
    if cin % g:
        raise SchemaError("groups", f"input channels {cin} not divisible by groups {g}")
    if cout % g:
        raise SchemaError("groups", f"out_channels {cout} not divisible by groups {g}")
    return cin, g, cout


def _check_fused_activation(attrs):
    if attrs["activation"] == "clamp" and not attrs["act_min"] <= attrs["act_max"]:
        raise SchemaError("act_min", f"act_min {attrs['act_min']} > act_max {attrs['act_max']}")


def _conv_weights(attrs, in_shapes):
    cin, g, cout = _conv_channels(attrs, in_shapes)
    kh, kw = attrs["kernel"]
    return {"weight": (cout, cin // g, kh, kw), "bias": (cout,)}


def _conv_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    _check_fused_activation(attrs)
    oh, ow = _window_shape(attrs, in_shapes[0], pads_inside=False)
    return [(in_shapes[0][0], attrs["out_channels"], oh, ow)]


def _conv_macs(attrs, in_shapes, out_shapes):
    kh, kw = attrs["kernel"]
    return _numel(out_shapes[0]) * (in_shapes[0][1] // attrs["groups"]) * kh * kw


# --- pooling ---------------------------------------------------------------------

def _maxpool_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    oh, ow = _window_shape(attrs, in_shapes[0], bool(attrs["ceil_mode"]))
    n, c = in_shapes[0][:2]
    return [(n, c, oh, ow)]


def _maxpool_macs(attrs, in_shapes, out_shapes):
    kh, kw = attrs["kernel"]
    return _numel(out_shapes[0]) * kh * kw


def _gap_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    n, c = in_shapes[0][:2]
    return [(n, c, 1, 1) if attrs["keepdim"] else (n, c)]


def _gap_macs(attrs, in_shapes, out_shapes):
    return _numel(in_shapes[0])


# --- multi-input -----------------------------------------------------------------

def _concat_infer(attrs, in_shapes):
    axis = attrs["axis"]
    first = tuple(in_shapes[0])
    if axis >= len(first):
        raise SchemaError("axis", f"axis {axis} out of range for rank {len(first)}")
    rest = first[:axis] + first[axis + 1:]
    # each distinct shape once: a concat may have 65536 inputs, mostly alike
    if any(len(s) != len(first) or s[:axis] + s[axis + 1:] != rest
           for s in set(map(tuple, in_shapes))):
        for i, s in enumerate(map(tuple, in_shapes)):
            if len(s) != len(first) or s[:axis] + s[axis + 1:] != rest:
                raise SchemaError(f"input[{i}]",
                                  f"shape {s} does not match {first} outside axis {axis}")
    total = sum(map(operator.itemgetter(axis), in_shapes))
    out = list(first)
    out[axis] = total
    return [tuple(out)]


# --- resizing --------------------------------------------------------------------

def _upsample_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    n, c = in_shapes[0][:2]
    oh, ow = attrs["size"]
    return [(n, c, oh, ow)]


def _bilinear_macs(attrs, in_shapes, out_shapes):
    return 4 * _numel(out_shapes[0])


# --- vectors and shapes ----------------------------------------------------------

def _linear_weights(attrs, in_shapes):
    _need_rank(in_shapes, (2,))
    return {"weight": (attrs["out_features"], in_shapes[0][1]), "bias": (attrs["out_features"],)}


def _linear_infer(attrs, in_shapes):
    _need_rank(in_shapes, (2,))
    return [(in_shapes[0][0], attrs["out_features"])]


def _linear_macs(attrs, in_shapes, out_shapes):
    return _numel(out_shapes[0]) * in_shapes[0][1]


def _reshape_infer(attrs, in_shapes):
    shape = tuple(attrs["shape"])
    if len(shape) > MAX_RANK:
        raise SchemaError("shape", f"rank {len(shape)} exceeds {MAX_RANK}")
    if _numel(shape) != _numel(in_shapes[0]):
        raise SchemaError("shape", f"{shape} has {_numel(shape)} elements, input "
                          f"{tuple(in_shapes[0])} has {_numel(in_shapes[0])}")
    return [_tail_output(shape)]


def _affine_weights(attrs, in_shapes):
    _need_rank(in_shapes, (2, 4))
    c = in_shapes[0][1]
    return {"scale": (c,), "shift": (c,)}


def _clamp_infer(attrs, in_shapes):
    if not attrs["min"] <= attrs["max"]:
        raise SchemaError("min", f"min {attrs['min']} > max {attrs['max']}")
    return _same_shape(attrs, in_shapes)


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

def broadcast_shape(a, b, field="inputs"):
    """numpy's broadcast of two shapes of equal rank (the format needs equal ranks)."""
    a, b = tuple(a), tuple(b)
    if len(a) != len(b):
        raise SchemaError(field, f"operands need equal ranks, got shapes {a} and {b}")
    out = []
    for da, db in zip(a, b):
        if da != db and 1 not in (da, db):
            raise SchemaError(field, f"shapes {a} and {b} do not broadcast")
        out.append(max(da, db))
    return tuple(out)


def _binary_operands(attrs, in_shapes):
    """The two operand shapes: both inputs, or the input and the constant ``other``."""
    other = tuple(attrs["other_shape"])
    if len(in_shapes) == 2:
        if other:
            raise SchemaError("other_shape", "only a one-input node has a constant operand")
        if attrs["reverse"]:
            raise SchemaError("reverse", "only a one-input node has a constant to reverse with")
        return tuple(in_shapes[0]), tuple(in_shapes[1])
    if not other:
        raise SchemaError("other_shape", "a one-input node needs the shape of its constant "
                          "operand")
    return tuple(in_shapes[0]), other


def _binary_weights(attrs, in_shapes):
    a, b = _binary_operands(attrs, in_shapes)
    broadcast_shape(a, b, "other_shape" if len(in_shapes) == 1 else "inputs")
    return {"other": b} if len(in_shapes) == 1 else {}


def _binary_infer(attrs, in_shapes):
    a, b = _binary_operands(attrs, in_shapes)
    return [broadcast_shape(a, b, "other_shape" if len(in_shapes) == 1 else "inputs")]


_BINARY_ATTRS = {
    "other_shape": Attr("ints", None, 1, MAX_DIM, default=(), empty_ok=True,
                        doc="shape of the constant operand `other` (one-input form only)"),
    "reverse": Attr("int", min=0, max=1, default=0,
                    doc="1: other OP x instead of x OP other (one-input form only)"),
}


def _binary(name, op_id, formula):
    return OpSchema(name, op_id, Category.MULTI_INPUT, (1, 2), dict(_BINARY_ATTRS),
                    _binary_weights, _binary_infer, _per_element,
                    doc=f"{formula}, numpy broadcasting of equal ranks; b an input or the "
                        f"constant weight 'other'")


# --- activations and softmax ------------------------------------------------

FLT_MAX = 3.4028234663852886e38     # largest finite float32


def _prelu_weights(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) < 2:
        raise SchemaError("input[0]", f"prelu needs a channel axis (rank >= 2), got shape {shape}")
    n = attrs["num_parameters"]
    if n not in (1, shape[1]):
        raise SchemaError("num_parameters", f"num_parameters {n} is neither 1 nor the "
                          f"{shape[1]} channels of input shape {shape}")
    return {"slope": (n,)}


def _softmax_infer(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if attrs["axis"] >= len(shape):
        raise SchemaError("axis", f"axis {attrs['axis']} out of range for input shape {shape}")
    return [shape]


def _softmax_macs(attrs, in_shapes, out_shapes):
    return 2 * _numel(out_shapes[0])


# --- windows: transposed conv, average pools --------------------------------

def conv_transpose_out(size, k, s, p0, p1, d, op):
    """Output length of a transposed convolution along one axis (torch's formula with
    the crop split into leading ``p0`` and trailing ``p1``)."""
    return (size - 1) * s - p0 - p1 + d * (k - 1) + 1 + op


def _conv_transpose_weights(attrs, in_shapes):
    cin, g, cout = _conv_channels(attrs, in_shapes)
    kh, kw = attrs["kernel"]
    return {"weight": (cin, cout // g, kh, kw), "bias": (cout,)}


def _conv_transpose_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    _check_fused_activation(attrs)
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    pt, pl, pb, pr = attrs["pads"]
    oph, opw = attrs["output_padding"]
    if not (oph < max(sh, dh) and opw < max(sw, dw)):
        # torch's rule: the extra rows and columns must be ones a stride step could reach
        raise SchemaError("output_padding", f"output_padding {attrs['output_padding']} must "
                          f"be smaller than the stride or the dilation on each axis")
    h, w = in_shapes[0][2:]
    oh = conv_transpose_out(h, kh, sh, pt, pb, dh, oph)
    ow = conv_transpose_out(w, kw, sw, pl, pr, dw, opw)
    if oh < 1 or ow < 1:
        raise SchemaError("pads", f"pads {attrs['pads']} crop the whole output of input "
                          f"{tuple(in_shapes[0])} (output would be {oh} x {ow})")
    return [(in_shapes[0][0], attrs["out_channels"], oh, ow)]


def _conv_transpose_macs(attrs, in_shapes, out_shapes):
    kh, kw = attrs["kernel"]
    return _numel(in_shapes[0]) * (attrs["out_channels"] // attrs["groups"]) * kh * kw


def _avg_pool_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    (kh, kw), (pt, pl, pb, pr) = attrs["kernel"], attrs["pads"]
    if max(pt, pb) > kh // 2 or max(pl, pr) > kw // 2:
        # torch's rule; it also keeps every window on at least one input element
        raise SchemaError("pads", f"padding {attrs['pads']} is more than half the kernel "
                          f"{attrs['kernel']}")
    oh, ow = _window_shape(dict(attrs, dilation=(1, 1)), in_shapes[0],
                           bool(attrs["ceil_mode"]))
    n, c = in_shapes[0][:2]
    return [(n, c, oh, ow)]


def _adaptive_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    n, c = in_shapes[0][:2]
    return [(n, c, *attrs["size"])]


def adaptive_window(i, out_size, in_size):
    """[start, end) of adaptive pooling's window i along one axis, as torch computes it:
    floor(i * in / out) .. ceil((i + 1) * in / out)."""
    return (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)


def _adaptive_macs(attrs, in_shapes, out_shapes):
    (oh, ow), (h, w) = attrs["size"], in_shapes[0][2:]
    kh, kw = -(-h // oh) + 1, -(-w // ow) + 1     # a bound on the window size
    return _numel(out_shapes[0]) * min(kh, h) * min(kw, w)


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

def _pad_infer(attrs, in_shapes):
    _need_rank(in_shapes, (4,))
    n, c, h, w = in_shapes[0]
    pt, pl, pb, pr = attrs["pads"]
    return [(n, c, h + pt + pb, w + pl + pr)]


def slice_length(start, end, step):
    """Elements of range(start, end, step) for 0 <= start < end, step >= 1."""
    return (end - start + step - 1) // step


def _slice_infer(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    axis, start, end = attrs["axis"], attrs["start"], attrs["end"]
    if axis >= len(shape):
        raise SchemaError("axis", f"axis {axis} out of range for input shape {shape}")
    if end > shape[axis]:
        raise SchemaError("end", f"end {end} is past the input's size {shape[axis]} on "
                          f"axis {axis}")
    if start >= end:
        raise SchemaError("start", f"start {start} is not below end {end}: empty slice")
    out = list(shape)
    out[axis] = slice_length(start, end, attrs["step"])
    return [tuple(out)]


def _group_norm_weights(attrs, in_shapes):
    _need_rank(in_shapes, (2, 4))
    c = in_shapes[0][1]
    if in_shapes[0][0] != 1:
        raise SchemaError("input[0]", f"group_norm needs batch 1, got shape {tuple(in_shapes[0])}")
    if c % attrs["num_groups"]:
        raise SchemaError("num_groups", f"{c} channels are not divisible by num_groups "
                          f"{attrs['num_groups']}")
    return {"weight": (c,), "bias": (c,)}


def _group_norm_infer(attrs, in_shapes):
    _group_norm_weights(attrs, in_shapes)
    return _same_shape(attrs, in_shapes)


def _group_norm_macs(attrs, in_shapes, out_shapes):
    return 3 * _numel(in_shapes[0])

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

def _tail_output(shape, field="shape"):
    """Bounds every tail output keeps: rank 1 .. MAX_RANK and N = 1 at rank 4 (dims and
    element count are every tensor's rule, [G15]). The engine stores a rank-4 tensor as
    one (H, W, C) image and the incremental path masks its (H, W) positions, so no node
    may make a rank-4 tensor with N != 1 (the graph input has N = 1; every other op
    keeps N)."""
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_RANK:
        raise SchemaError(field, f"output rank {len(shape)} is not in 1 .. {MAX_RANK}")
    if len(shape) == 4 and shape[0] != 1:
        raise SchemaError(field, f"a rank-4 output must have N = 1 (an image), got {shape}")
    return shape


def _permute_infer(attrs, in_shapes):
    shape, dims = tuple(in_shapes[0]), tuple(attrs["dims"])
    if sorted(dims) != list(range(len(shape))):
        raise SchemaError("dims", f"{list(dims)} is not a permutation of the {len(shape)} "
                          f"axes of input shape {shape}")
    return [_tail_output([shape[d] for d in dims], "dims")]


def _expand_infer(attrs, in_shapes):
    shape, out = tuple(in_shapes[0]), tuple(attrs["shape"])
    if len(out) < len(shape):
        raise SchemaError("shape", f"{out} has fewer axes than input shape {shape}")
    for d, o in zip(shape[::-1], out[::-1]):
        if d != o and d != 1:
            raise SchemaError("shape", f"input shape {shape} does not broadcast to {out}")
    return [_tail_output(out)]


def _matmul_infer(attrs, in_shapes):
    a, b = (tuple(s) for s in in_shapes)
    if len(a) != len(b) or not 2 <= len(a) <= MAX_RANK:
        raise SchemaError("inputs", f"matmul needs two inputs of equal rank 2 .. {MAX_RANK}, "
                          f"got {a} and {b}")
    if a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise SchemaError("inputs", f"shapes {a} and {b} do not multiply: leading axes must be "
                          f"equal and a's last axis must equal b's second-to-last")
    return [_tail_output(a[:-1] + b[-1:], "inputs")]


def _matmul_macs(attrs, in_shapes, out_shapes):
    return _numel(out_shapes[0]) * in_shapes[0][-1]


def _need_image(in_shapes):
    _need_rank(in_shapes, (4,))
    if in_shapes[0][0] != 1:
        raise SchemaError("input[0]", f"expects an image (1, C, H, W), got {tuple(in_shapes[0])}")


def _pixel_shuffle_infer(attrs, in_shapes):
    _need_image(in_shapes)
    _, c, h, w = in_shapes[0]
    r = attrs["upscale"]
    if c % (r * r):
        raise SchemaError("upscale", f"input channels {c} not divisible by upscale^2 = {r * r}")
    return [(1, c // (r * r), h * r, w * r)]


def _pixel_unshuffle_infer(attrs, in_shapes):
    _need_image(in_shapes)
    _, c, h, w = in_shapes[0]
    r = attrs["downscale"]
    if h % r or w % r:
        raise SchemaError("downscale", f"input H, W = {h}, {w} not divisible by downscale {r}")
    return [(1, c * r * r, h // r, w // r)]


def _layer_norm_axis(attrs, in_shapes):
    shape, axis = tuple(in_shapes[0]), attrs["axis"]
    if axis >= len(shape):
        raise SchemaError("axis", f"axis {axis} out of range for input shape {shape}")
    return shape[axis]


def _layer_norm_weights(attrs, in_shapes):
    c = _layer_norm_axis(attrs, in_shapes)
    return {"weight": (c,), "bias": (c,)}


def _layer_norm_infer(attrs, in_shapes):
    _layer_norm_axis(attrs, in_shapes)
    return [tuple(in_shapes[0])]


def _layer_norm_macs(attrs, in_shapes, out_shapes):
    return 4 * _numel(out_shapes[0])



# the activations a convolution may apply in its store (SPEC.md, conv2d); silu,
# hardswish and sigmoid since 0.3.0
CONV_ACTIVATIONS = ("none", "relu", "clamp", "silu", "hardswish", "sigmoid")

_ACTIVATION = {
    "activation": Attr("str", choices=CONV_ACTIVATIONS, default="none",
                       doc="activation fused after bias"),
    "act_min": Attr("float", default=-math.inf, doc="lower bound when activation is clamp"),
    "act_max": Attr("float", default=math.inf, doc="upper bound when activation is clamp"),
}

_SCHEMAS = [
    OpSchema("conv2d", 1, Category.WINDOWED, (1, 1),
             {"out_channels": Attr("int", min=1, max=MAX_DIM), **_WINDOW_ATTRS,
              "groups": Attr("int", min=1, max=MAX_DIM, default=1), **_ACTIVATION},
             _conv_weights, _conv_infer, _conv_macs,
             doc="2-D convolution (cross-correlation) with bias and fused activation"),
    OpSchema("batch_norm", 2, Category.ELEMENTWISE, (1, 1), {}, _affine_weights,
             _same_shape, _per_element, doc="per-channel affine y = x * scale + shift"),
    OpSchema("relu", 3, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             doc="max(x, 0)"),
    OpSchema("clamp", 4, Category.ELEMENTWISE, (1, 1),
             {"min": Attr("float", default=-math.inf), "max": Attr("float", default=math.inf)},
             _no_weights, _clamp_infer, doc="min(max(x, min), max); relu6 and hardtanh"),
    OpSchema("max_pool2d", 5, Category.WINDOWED, (1, 1),
             {**_WINDOW_ATTRS, "ceil_mode": Attr("int", min=0, max=1, default=0)},
             _no_weights, _maxpool_infer, _maxpool_macs, doc="max over a window; padding is -inf"),
    OpSchema("global_avg_pool", 6, Category.GLOBAL, (1, 1),
             {"keepdim": Attr("int", min=0, max=1, default=1)},
             _no_weights, _gap_infer, _gap_macs, doc="mean over H and W"),
    _binary("add", 7, "a + b"),
    OpSchema("concat", 8, Category.MULTI_INPUT, (1, None),
             {"axis": Attr("int", min=1, max=MAX_RANK - 1, default=1)},
             _no_weights, _concat_infer, doc="concatenation along an axis (not the batch)"),
    OpSchema("upsample_nearest", 9, Category.WINDOWED, (1, 1),
             {"size": Attr("ints", 2, 1, MAX_DIM, doc="(oh, ow)"),
              "scales": Attr("floats", 2, 0.0, MAX_DIM,
                             doc="source step per output pixel: src = floor(dst * scale)")},
             _no_weights, _upsample_infer, doc="nearest-neighbour resize (torch 'nearest')"),
    OpSchema("upsample_bilinear", 10, Category.WINDOWED, (1, 1),
             {"size": Attr("ints", 2, 1, MAX_DIM, doc="(oh, ow)"),
              "align_corners": Attr("int", min=0, max=1),
              "scales": Attr("floats", 2, 0.0, MAX_DIM,
                             doc="source step per output pixel when align_corners is 0")},
             _no_weights, _upsample_infer, _bilinear_macs, doc="bilinear resize"),
    OpSchema("linear", 11, Category.GLOBAL, (1, 1),
             {"out_features": Attr("int", min=1, max=MAX_DIM)},
             _linear_weights, _linear_infer, _linear_macs, doc="y = x @ weight.T + bias"),
    OpSchema("reshape", 12, Category.GLOBAL, (1, 1),
             {"shape": Attr("ints", None, 1, MAX_NUMEL, doc="output shape in torch layout")},
             _no_weights, _reshape_infer, doc="torch view/flatten (row-major, torch layout)"),
    OpSchema("identity", 13, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             doc="y = x (eval-mode dropout, clone)"),
    # broadcasting arithmetic (add, sub, mul, div)
    _binary("sub", 14, "a - b"),
    _binary("mul", 15, "a * b"),
    _binary("div", 16, "a / b"),

    # activations and softmax
    OpSchema("leaky_relu", 20, Category.ELEMENTWISE, (1, 1),
             {"negative_slope": Attr("float", min=-FLT_MAX, max=FLT_MAX, default=0.01,
                                     doc="slope for x <= 0, rounded to float32")},
             _no_weights, _same_shape, _per_element, doc="x if x > 0 else x * negative_slope"),
    OpSchema("prelu", 21, Category.ELEMENTWISE, (1, 1),
             {"num_parameters": Attr("int", min=1, max=MAX_DIM, default=1,
                                     doc="1 (one shared slope) or C (one per channel)")},
             _prelu_weights, _same_shape, _per_element,
             doc="x if x > 0 else x * slope[c], c the channel (axis 1)"),
    OpSchema("sigmoid", 22, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             _per_element, doc="1 / (1 + exp(-x))"),
    OpSchema("tanh", 23, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             _per_element, doc="tanh(x)"),
    OpSchema("silu", 24, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             _per_element, doc="x / (1 + exp(-x)) (swish)"),
    OpSchema("hardswish", 25, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             _per_element, doc="x * min(max(x + 3, 0), 6) / 6"),
    OpSchema("hardsigmoid", 26, Category.ELEMENTWISE, (1, 1), {}, _no_weights, _same_shape,
             _per_element, doc="min(max(x + 3, 0), 6) / 6"),
    OpSchema("gelu", 27, Category.ELEMENTWISE, (1, 1),
             {"approximate": Attr("str", choices=("none", "tanh"), default="none",
                                  doc="none: the erf form; tanh: the tanh approximation")},
             _no_weights, _same_shape, _per_element, doc="x * Phi(x)"),
    OpSchema("softmax", 28, Category.ELEMENTWISE, (1, 1),
             {"axis": Attr("int", min=0, max=MAX_RANK - 1, doc="torch-layout axis")},
             _no_weights, _softmax_infer, _softmax_macs,
             doc="exp(x - max) / sum exp(x - max) along axis; per position over channels"),
    OpSchema("log_softmax", 29, Category.ELEMENTWISE, (1, 1),
             {"axis": Attr("int", min=0, max=MAX_RANK - 1, doc="torch-layout axis")},
             _no_weights, _softmax_infer, _softmax_macs,
             doc="x - max - log(sum exp(x - max)) along axis"),
    OpSchema("pow", 30, Category.ELEMENTWISE, (1, 1),
             {"exponent": Attr("float", min=-FLT_MAX, max=FLT_MAX, doc="a finite constant")},
             _no_weights, _same_shape, _per_element, doc="x ** exponent"),

    # windows: transposed conv, average pools
    OpSchema("conv_transpose2d", 40, Category.WINDOWED, (1, 1),
             {"out_channels": Attr("int", min=1, max=MAX_DIM),
              "kernel": _WINDOW_ATTRS["kernel"], "stride": _WINDOW_ATTRS["stride"],
              "pads": Attr("ints", 4, 0, MAX_DIM,
                           doc="(top, left, bottom, right): rows and columns cropped"),
              "output_padding": Attr("ints", 2, 0, MAX_STRIDE, default=(0, 0),
                                     doc="(oph, opw): extra rows and columns at the end"),
              "dilation": _WINDOW_ATTRS["dilation"],
              "groups": Attr("int", min=1, max=MAX_DIM, default=1), **_ACTIVATION},
             _conv_transpose_weights, _conv_transpose_infer, _conv_transpose_macs,
             doc="2-D transposed convolution (ConvTranspose2d) with bias and fused activation"),
    OpSchema("avg_pool2d", 41, Category.WINDOWED, (1, 1),
             {"kernel": _WINDOW_ATTRS["kernel"], "stride": _WINDOW_ATTRS["stride"],
              "pads": Attr("ints", 4, 0, MAX_KERNEL // 2, doc="(top, left, bottom, right)"),
              "ceil_mode": Attr("int", min=0, max=1, default=0),
              "count_include_pad": Attr("int", min=0, max=1, default=1),
              "divisor": Attr("int", min=-MAX_NUMEL, max=MAX_NUMEL, default=0,
                              doc="divisor_override; 0: none")},
             _no_weights, _avg_pool_infer, _maxpool_macs, doc="mean over a window"),
    OpSchema("adaptive_avg_pool2d", 42, Category.WINDOWED, (1, 1),
             {"size": Attr("ints", 2, 1, MAX_DIM, doc="(oh, ow)")},
             _no_weights, _adaptive_infer, _adaptive_macs,
             doc="mean over torch's adaptive windows"),
    OpSchema("adaptive_max_pool2d", 43, Category.WINDOWED, (1, 1),
             {"size": Attr("ints", 2, 1, MAX_DIM, doc="(oh, ow)")},
             _no_weights, _adaptive_infer, _adaptive_macs,
             doc="max over torch's adaptive windows"),

    # rearranging and normalising: pad, pixel shuffle, slice, norms
    OpSchema("pad", 50, Category.WINDOWED, (1, 1),
             {"pads": Attr("ints", 4, 0, MAX_DIM, doc="(top, left, bottom, right)"),
              "value": Attr("float", default=0.0, doc="the value of the padding")},
             _no_weights, _pad_infer, doc="constant padding of H and W (F.pad)"),
    OpSchema("slice", 51, Category.WINDOWED, (1, 1),
             {"axis": Attr("int", min=1, max=MAX_RANK - 1, doc="torch-layout axis"),
              "start": Attr("int", min=0, max=MAX_DIM - 1, default=0),
              "end": Attr("int", min=1, max=MAX_DIM, doc="exclusive"),
              "step": Attr("int", min=1, max=MAX_DIM, default=1)},
             _no_weights, _slice_infer,
             doc="x[start:end:step] along one axis (narrow, split, chunk, select)"),
    OpSchema("group_norm", 52, Category.GLOBAL, (1, 1),
             {"num_groups": Attr("int", min=1, max=MAX_DIM),
              "eps": Attr("float", min=0.0, default=1e-5)},
             _group_norm_weights, _group_norm_infer, _group_norm_macs,
             doc="normalise each group of channels over the group and H, W; affine"),

    # layout-breaking tails, computed whole: permute, expand, matmul
    OpSchema("permute", 60, Category.GLOBAL, (1, 1),
             {"dims": Attr("ints", None, 0, MAX_RANK - 1,
                           doc="output axis i is input axis dims[i]")},
             _no_weights, _permute_infer, doc="torch permute / transpose (a copy)"),
    OpSchema("expand", 61, Category.GLOBAL, (1, 1),
             {"shape": Attr("ints", None, 1, MAX_DIM, doc="output shape in torch layout")},
             _no_weights, _expand_infer, doc="torch expand: broadcast size-1 and new leading axes"),
    OpSchema("matmul", 62, Category.GLOBAL, (2, 2), {}, _no_weights, _matmul_infer,
             _matmul_macs, doc="batched matrix product a @ b (torch bmm / mm / matmul)"),
    OpSchema("pixel_shuffle", 63, Category.WINDOWED, (1, 1),
             {"upscale": Attr("int", min=1, max=MAX_KERNEL, doc="r")},
             _no_weights, _pixel_shuffle_infer, doc="(C r^2, H, W) -> (C, H r, W r)"),
    OpSchema("pixel_unshuffle", 64, Category.WINDOWED, (1, 1),
             {"downscale": Attr("int", min=1, max=MAX_KERNEL, doc="r")},
             _no_weights, _pixel_unshuffle_infer, doc="(C, H r, W r) -> (C r^2, H, W)"),
    OpSchema("layer_norm", 65, Category.ELEMENTWISE, (1, 1),
             {"axis": Attr("int", min=1, max=MAX_RANK - 1, default=1,
                           doc="the normalised axis (1: channels at each position)"),
              "eps": Attr("float", min=0.0, max=1e30, default=1e-5)},
             _layer_norm_weights, _layer_norm_infer, _layer_norm_macs,
             doc="normalise over one axis, then per-element weight and bias"),
]

OPS = {s.name: s for s in _SCHEMAS}
OPS_BY_ID = {s.op_id: s for s in _SCHEMAS}
assert len(OPS) == len(_SCHEMAS) and len(OPS_BY_ID) == len(_SCHEMAS), "duplicate op name or id"


def resolve_attrs(schema, attrs):
    """Attributes with defaults filled in; raises SchemaError for unknown or missing ones.

    Type and range checks are the validator's (it knows the file's raw values); this
    only completes a dict that is already well-typed.
    """
    unknown = set(attrs) - set(schema.attrs)
    if unknown:
        raise SchemaError(sorted(unknown)[0], f"unknown attribute for op {schema.name!r}")
    out = {}
    for name, spec in schema.attrs.items():
        if name in attrs:
            out[name] = attrs[name]
        elif spec.default is REQUIRED:
            raise SchemaError(name, f"required attribute of op {schema.name!r} is missing")
        else:
            out[name] = spec.default
    return out


def check_attr_value(name, spec, value):
    """Type and range of one attribute value (already converted to Python types)."""
    if spec.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(name, f"expected an integer, got {value!r}")
        values = [value]
    elif spec.kind == "float":
        if not isinstance(value, float) or math.isnan(value):
            raise SchemaError(name, f"expected a float, got {value!r}")
        values = [value]
    elif spec.kind in ("ints", "floats"):
        elem = int if spec.kind == "ints" else float
        if not isinstance(value, tuple) or not all(
                isinstance(v, elem) and not isinstance(v, bool) for v in value):
            raise SchemaError(name, f"expected a list of {elem.__name__}s, got {value!r}")
        if spec.length is not None and len(value) != spec.length:
            raise SchemaError(name, f"expected {spec.length} values, got {len(value)}")
        if len(value) == 0 and not spec.empty_ok:
            raise SchemaError(name, "expected at least one value")
        if elem is float and any(math.isnan(v) for v in value):
            raise SchemaError(name, "NaN is not allowed")
        values = list(value)
    elif spec.kind == "str":
        if not isinstance(value, str):
            raise SchemaError(name, f"expected a string, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise SchemaError(name, f"{value!r} is not one of {', '.join(spec.choices)}")
        return
    else:  # pragma: no cover - schema bug
        raise AssertionError(spec.kind)
    for v in values:
        if spec.min is not None and v < spec.min:
            raise SchemaError(name, f"value {v} is below the minimum {spec.min}")
        if spec.max is not None and v > spec.max:
            raise SchemaError(name, f"value {v} is above the maximum {spec.max}")
    if spec.kind == "floats" and spec.min == 0.0 and any(v <= 0 for v in values):
        raise SchemaError(name, "values must be positive")
