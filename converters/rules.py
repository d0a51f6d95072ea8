"""Converter rules: one small function per aten op, keyed by the op's name.

Each rule receives the lowering context ``ctx`` (see torch_export.Lowering) and the
op's arguments ``a`` bound by name, with the trailing defaults the exported graph
omits already filled in from the op's schema. An argument that was an FX node arrives
as what that node lowered to:

- :class:`Data`: a tensor computed from the model input (a name in the framedelta graph);
- a numpy array: a constant (parameter, buffer or constant tensor of the model);
- a tuple, for ops with several outputs; the outputs framedelta does not compute are
  :class:`Unused` and fail only when something reads them.

A rule returns its result (usually ``ctx.emit(...)``) and raises
``ctx.unsupported(detail)`` for argument values framedelta cannot express. All the
spellings that land on one framedelta op sit together, as in pnnx's pass_level2.
``produces`` declares which framedelta ops a rule may emit; a test checks that every op
of formats.OPS is produced by some rule.

This module imports neither torch nor the rest of the converter: it only reads values.
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rule:
    target: str          # e.g. "aten.convolution.default"
    fn: object           # (ctx, args) -> value
    produces: tuple      # framedelta ops it may emit
    doc: str = ""


RULES = {}


def rule(*targets, produces=()):
    """Register ``fn`` as the rule for each aten op named in ``targets``."""
    def register(fn):
        for target in targets:
            if target in RULES:
                raise AssertionError(f"two rules for {target}")
            RULES[target] = Rule(target, fn, tuple(produces), (fn.__doc__ or "").strip())
        return fn
    return register


def produced_ops():
    """Every framedelta op that some rule may emit."""
    return {op for r in RULES.values() for op in r.produces}


@dataclass(frozen=True)
class Data:
    """A tensor computed from the model input: its name in the framedelta graph."""
    name: str


@dataclass(frozen=True)
class Unused:
    """An output of a multi-output aten op that framedelta does not compute."""
    op: str
    what: str


# --- argument helpers --------------------------------------------------------------

def pair(value, what):
    """An int or a list of 1 or 2 ints (torch's int[2]) as a tuple of two Python ints."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{what}: expected 2 values, got {list(value)}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _axis(dim, rank):
    return dim + rank if dim < 0 else dim


def _fits_window(pads, kernel, dilation):
    """The format needs every pad smaller than the dilated kernel extent."""
    (pt, pl, pb, pr), (kh, kw), (dh, dw) = pads, kernel, dilation
    return max(pt, pb) < dh * (kh - 1) + 1 and max(pl, pr) < dw * (kw - 1) + 1


# --- convolution and batch norm ------------------------------------------------------

@rule("aten.convolution.default", produces=("conv2d", "conv_transpose2d"))
def convolution(ctx, a):
    """nn.Conv2d and F.conv2d (groups, depthwise, dilation); bias None becomes zeros.
    transposed=True: conv_transposed (below)."""
    if a["transposed"]:
        return conv_transposed(ctx, a)
    x = ctx.data(a["input"], "input")
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument 'input': only 2-D convolution is supported, the "
                              f"input has shape {ctx.shape(x)}")
    w = ctx.const(a["weight"], "weight")
    bias = np.zeros(w.shape[0], np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    ph, pw = pair(a["padding"], "padding")
    attrs = {"out_channels": int(w.shape[0]), "kernel": (int(w.shape[2]), int(w.shape[3])),
             "stride": pair(a["stride"], "stride"), "pads": (ph, pw, ph, pw),
             "dilation": pair(a["dilation"], "dilation"), "groups": int(a["groups"])}
    if not _fits_window(attrs["pads"], attrs["kernel"], attrs["dilation"]):
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} is not smaller than the "
                              f"dilated kernel extent")
    return ctx.emit("conv2d", [x], attrs, {"weight": w, "bias": bias.reshape(-1)})


@rule("aten._native_batch_norm_legit_no_training.default", produces=("batch_norm",))
def batch_norm(ctx, a):
    """Eval-mode BatchNorm as a per-channel affine; passes.fold_batch_norm folds it
    into the preceding conv where it can."""
    x = ctx.data(a["input"], "input")
    if len(ctx.shape(x)) not in (2, 4):
        raise ctx.unsupported(f"argument 'input': batch norm needs a (N, C) or (N, C, H, W) "
                              f"input, got shape {ctx.shape(x)}")
    mean = ctx.const(a["running_mean"], "running_mean").astype(np.float64)
    var = ctx.const(a["running_var"], "running_var").astype(np.float64)
    gamma = np.ones_like(mean) if a["weight"] is None else ctx.const(a["weight"], "weight")
    beta = np.zeros_like(mean) if a["bias"] is None else ctx.const(a["bias"], "bias")
    scale = gamma.astype(np.float64) / np.sqrt(var + float(a["eps"]))
    shift = beta.astype(np.float64) - mean * scale
    y = ctx.emit("batch_norm", [x], {}, {"scale": scale, "shift": shift})
    op = "aten._native_batch_norm_legit_no_training.default"
    return y, Unused(op, "the saved mean"), Unused(op, "the saved inverse std")


# --- activations ---------------------------------------------------------------------

@rule("aten.relu.default", produces=("relu",))
def relu(ctx, a):
    """nn.ReLU, F.relu, inplace or not."""
    return ctx.emit("relu", [ctx.data(a["self"], "self")])


def _clamp(ctx, x, lo, hi):
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ctx.unsupported(f"arguments min={lo}, max={hi}: min must not exceed max")
    if lo == 0.0 and hi == math.inf:
        return ctx.emit("relu", [x])
    return ctx.emit("clamp", [x], {"min": lo, "max": hi})


@rule("aten.hardtanh.default", produces=("clamp", "relu"))
def hardtanh(ctx, a):
    """nn.ReLU6 / F.relu6 (hardtanh 0..6) and nn.Hardtanh."""
    return _clamp(ctx, ctx.data(a["self"], "self"), a["min_val"], a["max_val"])


@rule("aten.clamp.default", produces=("clamp", "relu"))
def clamp(ctx, a):
    """torch.clamp / clamp_min / clamp_max with number bounds; clamp(min=0) is a relu."""
    return _clamp(ctx, ctx.data(a["self"], "self"), a["min"], a["max"])


# --- pooling ----------------------------------------------------------------------------

@rule("aten.max_pool2d_with_indices.default", produces=("max_pool2d",))
def max_pool2d_with_indices(ctx, a):
    """nn.MaxPool2d / F.max_pool2d; an empty stride means stride = kernel."""
    x = ctx.data(a["self"], "self")
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument 'self': max pool needs an (N, C, H, W) input, "
                              f"got shape {ctx.shape(x)}")
    kernel = pair(a["kernel_size"], "kernel_size")
    stride = pair(a["stride"], "stride") if len(a["stride"]) else kernel
    ph, pw = pair(a["padding"], "padding")
    y = ctx.emit("max_pool2d", [x], {
        "kernel": kernel, "stride": stride, "pads": (ph, pw, ph, pw),
        "dilation": pair(a["dilation"], "dilation"), "ceil_mode": int(bool(a["ceil_mode"]))})
    return y, Unused("aten.max_pool2d_with_indices.default",
                     "the indices (return_indices=True)")


@rule("aten.mean.dim", produces=("global_avg_pool",))
def mean_dim(ctx, a):
    """x.mean((2, 3)), x.mean((-1, -2)) and AdaptiveAvgPool2d(1) (which export lowers
    to a mean over the last two dims)."""
    x = ctx.data(a["self"], "self")
    rank = len(ctx.shape(x))
    dims = sorted(_axis(int(d), rank) for d in (a["dim"] or ()))
    if rank != 4 or dims != [2, 3]:
        raise ctx.unsupported(f"argument 'dim' {a['dim']}: only the mean over H and W of an "
                              f"(N, C, H, W) tensor is supported (input shape {ctx.shape(x)})")
    if a["dtype"] is not None:
        raise ctx.unsupported(f"argument 'dtype' {a['dtype']} is not supported")
    return ctx.emit("global_avg_pool", [x], {"keepdim": int(bool(a["keepdim"]))})


# --- several inputs -----------------------------------------------------------------

@rule("aten.cat.default", produces=("concat",))
def cat(ctx, a):
    """torch.cat along channels (U-Net skips, DenseNet), along H or W, or along any axis
    but the batch of other tensors (detection heads: the last axis of (1, A, K))."""
    xs = [ctx.data(t, f"tensors[{i}]") for i, t in enumerate(a["tensors"])]
    rank = len(ctx.shape(xs[0]))
    axis = _axis(int(a["dim"]), rank)
    if axis == 0:
        raise ctx.unsupported(f"argument 'dim'={a['dim']}: concatenation along the batch "
                              f"(dim 0) is not supported, the batch stays 1")
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


# --- linear ---------------------------------------------------------------------------

def _linear(ctx, x, w_t, bias, alpha=1, beta=1, shape=None):
    if len(ctx.shape(x)) != 2:
        raise ctx.unsupported(f"argument 'mat1': a linear layer needs an (N, F) input, got "
                              f"shape {ctx.shape(x)}")
    if w_t.ndim != 2 or w_t.shape[0] != ctx.shape(x)[1]:
        raise ctx.unsupported(f"argument 'mat2': expected a constant ({ctx.shape(x)[1]}, out) "
                              f"matrix, got shape {w_t.shape}")
    out = int(w_t.shape[1])
    weight = float(alpha) * w_t.T.astype(np.float64)
    if bias is None:
        bias = np.zeros(out)
    elif bias.size != out or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
        raise ctx.unsupported(f"argument 'self': bias of shape {bias.shape} does not "
                              f"broadcast as a per-feature bias of {out}")
    return ctx.emit("linear", [x], {"out_features": out},
                    {"weight": weight, "bias": float(beta) * bias.reshape(-1)}, shape=shape)


@rule("aten.addmm.default", produces=("linear",))
def addmm(ctx, a):
    """nn.Linear / F.linear with bias: addmm(bias, x, permute(weight)); alpha and beta
    are folded into the weights."""
    return _linear(ctx, ctx.data(a["mat1"], "mat1"), ctx.const(a["mat2"], "mat2"),
                   ctx.const(a["self"], "self"), a["alpha"], a["beta"])


@rule("aten.mm.default", produces=("linear", "matmul", "permute", "reshape"))
def mm(ctx, a):
    """nn.Linear(bias=False): mm(x, permute(weight)), on any number of rows; torch.mm
    and @ of two computed matrices (matmul); a constant on the left (W @ x) through
    transposes."""
    return _matmul(ctx, a["self"], a["mat2"], "self", "mat2")


@rule("aten.permute.default", produces=("permute", "identity"))
def permute(ctx, a):
    """x.permute, x.transpose, x.t(), x.mT on computed tensors (a global node computed
    whole); folded on constants (the transposed weight of a linear layer)."""
    dims = [int(d) for d in a["dims"]]
    if isinstance(a["self"], np.ndarray):
        return np.transpose(a["self"], dims)
    x = ctx.data(a["self"], "self")
    rank = len(ctx.shape(x))
    dims = [_axis(d, rank) for d in dims]
    if dims == list(range(rank)):
        return ctx.emit("identity", [x])
    _tail_shape(ctx, ctx.out_shape, f"argument 'dims' {list(a['dims'])}")
    return ctx.emit("permute", [x], {"dims": tuple(dims)})


# --- shapes and no-ops ------------------------------------------------------------------

@rule("aten.view.default", "aten._unsafe_view.default", produces=("reshape", "identity"))
def view(ctx, a):
    """torch.flatten, x.view, x.reshape: any shape of as many elements, up to rank 6
    (N may change, e.g. view(8, 6, 6) of a (1, 8, 6, 6) tensor before bmm), except
    that a rank-4 result must have N = 1."""
    if isinstance(a["self"], np.ndarray):
        return a["self"].reshape([int(d) for d in a["size"]])
    return _reshape(ctx, ctx.data(a["self"], "self"), f"argument 'size' {list(a['size'])}")


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


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

_NUMPY_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _constant_operand(ctx, value, rank, arg):
    """A number or constant tensor as a float32 array of the given rank (leading 1s)."""
    c = np.asarray(value, np.float64 if isinstance(value, (int, float)) else None)
    if c.dtype == bool or not (np.issubdtype(c.dtype, np.floating)
                               or np.issubdtype(c.dtype, np.integer)):
        raise ctx.unsupported(f"argument {arg!r} has dtype {c.dtype}: only numbers and "
                              f"float constants are supported")
    if c.ndim > rank:
        raise ctx.unsupported(f"argument {arg!r}: a constant of shape {c.shape} has a higher "
                              f"rank than the tensor it combines with ({rank})")
    return np.asarray(c, np.float32).reshape((1,) * (rank - c.ndim) + c.shape)


def binary(ctx, op, lhs, rhs):
    """lhs OP rhs, each a computed tensor (Data), a constant array or a number: the
    format's two-input form, its one-input form with the constant ``other`` (and
    ``reverse`` when the constant comes first), or a folded constant."""
    if not isinstance(lhs, Data) and not isinstance(rhs, Data):
        return _NUMPY_OPS[op](np.asarray(lhs, np.float32), np.asarray(rhs, np.float32),
                              dtype=np.float32)
    if isinstance(lhs, Data) and isinstance(rhs, Data):
        sa, sb = ctx.shape(lhs.name), ctx.shape(rhs.name)
        if len(sa) != len(sb):
            raise ctx.unsupported(f"operands of shapes {sa} and {sb}: broadcasting between "
                                  f"tensors of different ranks is not supported")
        return ctx.emit(op, [lhs.name, rhs.name])
    x, c, reverse = (lhs, rhs, 0) if isinstance(lhs, Data) else (rhs, lhs, 1)
    if reverse and op in ("add", "mul"):
        reverse = 0               # commutative, and IEEE says the same bits either way
    rank = len(ctx.shape(x.name))
    other = _constant_operand(ctx, c, rank, "other" if not reverse else "self")
    return ctx.emit(op, [x.name], {"other_shape": other.shape, "reverse": reverse},
                    {"other": other})


def _scaled(ctx, value, alpha, arg):
    """alpha * value for add/sub's alpha (folded when value is a constant)."""
    if alpha == 1:
        return value
    if isinstance(value, Data):
        return binary(ctx, "mul", value, float(alpha))
    return np.asarray(value, np.float64) * float(alpha)


@rule("aten.add.Tensor", "aten.add.Scalar", produces=("add", "mul"))
def add(ctx, a):
    """a + b (residuals), x + constant or number, broadcasting (equal ranks); alpha is a
    multiply of b."""
    return binary(ctx, "add", a["self"], _scaled(ctx, a["other"], a["alpha"], "other"))


@rule("aten.sub.Tensor", "aten.sub.Scalar", produces=("sub", "mul"))
def sub(ctx, a):
    """a - b, x - c, c - x (reverse), broadcasting; alpha is a multiply of b."""
    return binary(ctx, "sub", a["self"], _scaled(ctx, a["other"], a["alpha"], "other"))


@rule("aten.rsub.Scalar", "aten.rsub.Tensor", produces=("sub", "mul"))
def rsub(ctx, a):
    """other - alpha * self (1 - x)."""
    return binary(ctx, "sub", a["other"], _scaled(ctx, a["self"], a["alpha"], "self"))


@rule("aten.mul.Tensor", "aten.mul.Scalar", produces=("mul",))
def mul(ctx, a):
    """a * b, squeeze-excitation's scale broadcast over H and W, x * number."""
    return binary(ctx, "mul", a["self"], a["other"])


@rule("aten.div.Tensor", "aten.div.Scalar", produces=("div",))
def div(ctx, a):
    """a / b, x / number, number / x (reverse), true division as torch's."""
    return binary(ctx, "div", a["self"], a["other"])


@rule("aten.div.Tensor_mode", produces=("div",))
def div_mode(ctx, a):
    """torch.div(a, b, rounding_mode=None) only; floor and trunc division are not float
    arithmetic a CNN needs."""
    if a["rounding_mode"] is not None:
        raise ctx.unsupported(f"argument 'rounding_mode'={a['rounding_mode']!r}: only true "
                              f"division is supported")
    return binary(ctx, "div", a["self"], a["other"])


@rule("aten.reciprocal.default", produces=("div",))
def reciprocal(ctx, a):
    """1 / x (what 2 / x exports as, times 2)."""
    return binary(ctx, "div", 1.0, a["self"])


@rule("aten.neg.default", produces=("mul",))
def neg(ctx, a):
    """-x as x * -1 (the same bits, NaN included)."""
    return binary(ctx, "mul", a["self"], -1.0)


# --- activations and softmax ------------------------------------------------

def _unary(ctx, a, op, attrs=None):
    return ctx.emit(op, [ctx.data(a["self"], "self")], attrs or {})


@rule("aten.leaky_relu.default", produces=("leaky_relu",))
def leaky_relu(ctx, a):
    """nn.LeakyReLU / F.leaky_relu, inplace or not."""
    slope = float(a["negative_slope"])
    if not math.isfinite(slope):
        raise ctx.unsupported(f"argument 'negative_slope'={slope}: it must be finite")
    return _unary(ctx, a, "leaky_relu", {"negative_slope": slope})


@rule("aten.sigmoid.default", produces=("sigmoid",))
def sigmoid(ctx, a):
    """torch.sigmoid / nn.Sigmoid; passes.fuse_silu makes x * sigmoid(x) a silu."""
    return _unary(ctx, a, "sigmoid")


@rule("aten.tanh.default", produces=("tanh",))
def tanh(ctx, a):
    """torch.tanh / nn.Tanh."""
    return _unary(ctx, a, "tanh")


@rule("aten.silu.default", produces=("silu",))
def silu(ctx, a):
    """silu as one op, in a program not decomposed (run_decompositions() spells F.silu
    as sigmoid and mul, which passes.fuse_silu puts back together)."""
    return _unary(ctx, a, "silu")


@rule("aten.hardswish.default", produces=("hardswish",))
def hardswish(ctx, a):
    """hardswish as one op, in a program not decomposed (run_decompositions() spells it
    add, clamp, mul, div: passes.fuse_hardswish)."""
    return _unary(ctx, a, "hardswish")


@rule("aten.hardsigmoid.default", produces=("hardsigmoid",))
def hardsigmoid(ctx, a):
    """hardsigmoid as one op, in a program not decomposed (see passes.fuse_hardswish)."""
    return _unary(ctx, a, "hardsigmoid")


@rule("aten.gelu.default", produces=("gelu",))
def gelu(ctx, a):
    """nn.GELU / F.gelu, approximate 'none' (erf) or 'tanh'."""
    if a["approximate"] not in ("none", "tanh"):
        raise ctx.unsupported(f"argument 'approximate'={a['approximate']!r}: only 'none' "
                              f"and 'tanh' exist")
    return _unary(ctx, a, "gelu", {"approximate": a["approximate"]})


def _softmax(ctx, x, dim, op):
    rank = len(ctx.shape(x))
    axis = _axis(int(dim), rank)
    if not 0 <= axis < rank:
        raise ctx.unsupported(f"argument 'dim'={dim} is out of range for shape {ctx.shape(x)}")
    return ctx.emit(op, [x], {"axis": axis})


@rule("aten._softmax.default", produces=("softmax",))
def softmax_(ctx, a):
    """F.softmax / nn.Softmax / torch.softmax along any dim: over the channels of an
    image it is per position, along any other axis a global op (detection heads)."""
    if a["half_to_float"]:
        raise ctx.unsupported("argument 'half_to_float' is True: only float32 softmax is "
                              "supported")
    return _softmax(ctx, ctx.data(a["self"], "self"), a["dim"], "softmax")


@rule("aten._log_softmax.default", produces=("log_softmax",))
def log_softmax_(ctx, a):
    """F.log_softmax / nn.LogSoftmax along any dim."""
    if a["half_to_float"]:
        raise ctx.unsupported("argument 'half_to_float' is True: only float32 log_softmax "
                              "is supported")
    return _softmax(ctx, ctx.data(a["self"], "self"), a["dim"], "log_softmax")


@rule("aten.softmax.int", "aten.log_softmax.int", produces=("softmax", "log_softmax"))
def softmax_int(ctx, a):
    """softmax / log_softmax in a program not decomposed; dtype float32 or None."""
    if a["dtype"] is not None and str(a["dtype"]) != "torch.float32":
        raise ctx.unsupported(f"argument 'dtype'={a['dtype']}: only float32 is supported")
    op = "log_softmax" if ctx.op.startswith("aten.log_softmax") else "softmax"
    return _softmax(ctx, ctx.data(a["self"], "self"), a["dim"], op)


def _pow(ctx, x, exponent):
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)):
        raise ctx.unsupported(f"argument 'exponent' is {exponent!r}: only a number is "
                              f"supported")
    e = float(exponent)
    if not math.isfinite(e) or abs(e) > 3.4028234663852886e38:
        raise ctx.unsupported(f"argument 'exponent'={exponent}: it must be a finite float32")
    return ctx.emit("pow", [x], {"exponent": e})


@rule("aten.pow.Tensor_Scalar", produces=("pow",))
def pow_tensor_scalar(ctx, a):
    """x ** c with a number c (YOLO heads: (x * 2) ** 2); torch.square."""
    return _pow(ctx, ctx.data(a["self"], "self"), a["exponent"])


@rule("aten.sqrt.default", "aten.rsqrt.default", produces=("pow",))
def sqrt(ctx, a):
    """torch.sqrt and torch.rsqrt: pow with exponent 0.5 and -0.5, which computes them
    with torch's own sqrt (sqrt(-0) is -0, rsqrt(-inf) NaN)."""
    return _pow(ctx, ctx.data(a["self"], "self"), -0.5 if "rsqrt" in ctx.op else 0.5)


def _channel_slope(w, rank):
    """A PReLU weight as (C,) or (1,) slopes along axis 1, or None."""
    w = np.asarray(w)
    if w.ndim == 1:
        return w
    if w.ndim == rank and all(d == 1 for i, d in enumerate(w.shape) if i != 1):
        return w.reshape(-1)
    return None


def _prelu_node(ctx, x, slope):
    """prelu with per-channel slopes; one shared slope is a leaky_relu (the same
    float32 arithmetic: x > 0 ? x : x * slope)."""
    if slope.size == 1:
        return ctx.emit("leaky_relu", [x], {"negative_slope": float(np.float32(slope[0]))})
    return ctx.emit("prelu", [x], {"num_parameters": int(slope.size)}, {"slope": slope})


@rule("aten.prelu.default", produces=("prelu", "leaky_relu"))
def prelu(ctx, a):
    """nn.PReLU in a program not decomposed (run_decompositions() spells it
    where(x > 0, x, weight * x): passes.fuse_prelu)."""
    x = ctx.data(a["self"], "self")
    w = ctx.const(a["weight"], "weight")
    shape = ctx.shape(x)
    slope = _channel_slope(w, len(shape))
    if len(shape) < 2 or slope is None or slope.size not in (1, shape[1]):
        raise ctx.unsupported(f"argument 'weight' of shape {w.shape}: expected 1 or "
                              f"{shape[1] if len(shape) > 1 else '?'} slopes for input of "
                              f"shape {shape}")
    return _prelu_node(ctx, x, slope)


@rule("aten.gt.Scalar")
def gt_scalar(ctx, a):
    """x > c: a pseudo-node 'gt' for passes.fuse_prelu (where(x > 0, x, x * w) is
    PReLU's decomposition); framedelta has no boolean tensors otherwise."""
    other = a["other"]
    if isinstance(other, bool) or not isinstance(other, (int, float)):
        raise ctx.unsupported(f"argument 'other' is {other!r}: only x > 0 inside PReLU's "
                              f"where(x > 0, x, x * w) is supported")
    return ctx.emit("gt", [ctx.data(a["self"], "self")], {"other": float(other)})


@rule("aten.where.self")
def where_self(ctx, a):
    """where(cond, a, b): a pseudo-node 'where' for passes.fuse_prelu."""
    what = "only PReLU's where(x > 0, x, x * w) is supported"
    if not all(isinstance(a[k], Data) for k in ("condition", "self", "other")):
        k = next(k for k in ("condition", "self", "other") if not isinstance(a[k], Data))
        raise ctx.unsupported(f"argument {k!r} is a constant: {what}")
    return ctx.emit("where", [a["condition"].name, a["self"].name, a["other"].name])


# --- windows: transposed conv, average pools --------------------------------

def _window_input(ctx, a, arg, what):
    x = ctx.data(a[arg], arg)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument {arg!r}: {what} needs an (N, C, H, W) input, got "
                              f"shape {ctx.shape(x)}")
    return x


def conv_transposed(ctx, a):
    """nn.ConvTranspose2d and F.conv_transpose2d (aten.convolution with transposed=True):
    stride, padding, output_padding, groups, dilation; bias None becomes zeros."""
    from framedelta.formats.ops import MAX_DIM, conv_transpose_out
    x = _window_input(ctx, a, "input", "transposed convolution (2-D only)")
    w = ctx.const(a["weight"], "weight")
    g = int(a["groups"])
    cout = int(w.shape[1]) * g
    bias = np.zeros(cout, np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    ph, pw = pair(a["padding"], "padding")
    (sh, sw), (dh, dw) = pair(a["stride"], "stride"), pair(a["dilation"], "dilation")
    oph, opw = pair(a["output_padding"], "output_padding")
    if min(ph, pw, oph, opw) < 0 or max(ph, pw) > MAX_DIM:
        raise ctx.unsupported(f"arguments 'padding' {[ph, pw]}, 'output_padding' "
                              f"{[oph, opw]}: must be between 0 and {MAX_DIM}")
    if not (oph < max(sh, dh) and opw < max(sw, dw)):
        raise ctx.unsupported(f"argument 'output_padding' {[oph, opw]} must be smaller than "
                              f"the stride or the dilation")
    h, wd = ctx.shape(x)[2:]
    if (conv_transpose_out(h, int(w.shape[2]), sh, ph, ph, dh, oph) < 1
            or conv_transpose_out(wd, int(w.shape[3]), sw, pw, pw, dw, opw) < 1):
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} crops the whole output")
    attrs = {"out_channels": cout, "kernel": (int(w.shape[2]), int(w.shape[3])),
             "stride": (sh, sw), "pads": (ph, pw, ph, pw), "output_padding": (oph, opw),
             "dilation": (dh, dw), "groups": g}
    return ctx.emit("conv_transpose2d", [x], attrs, {"weight": w, "bias": bias.reshape(-1)})


@rule("aten.avg_pool2d.default", produces=("avg_pool2d",))
def avg_pool2d(ctx, a):
    """nn.AvgPool2d / F.avg_pool2d: padding, ceil_mode, count_include_pad,
    divisor_override; an empty stride means stride = kernel."""
    from framedelta.formats.ops import MAX_NUMEL
    x = _window_input(ctx, a, "self", "average pooling")
    kernel = pair(a["kernel_size"], "kernel_size")
    stride = pair(a["stride"], "stride") if len(a["stride"]) else kernel
    ph, pw = pair(a["padding"], "padding")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2 or min(ph, pw) < 0:
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} must be between 0 and half "
                              f"the kernel {list(kernel)}")
    div = a["divisor_override"]
    div = 0 if div is None else int(div)
    if abs(div) > MAX_NUMEL:
        raise ctx.unsupported(f"argument 'divisor_override'={div} is out of range")
    return ctx.emit("avg_pool2d", [x], {
        "kernel": kernel, "stride": stride, "pads": (ph, pw, ph, pw),
        "ceil_mode": int(bool(a["ceil_mode"])),
        "count_include_pad": int(bool(a["count_include_pad"])), "divisor": div})


@rule("aten._adaptive_avg_pool2d.default", produces=("adaptive_avg_pool2d",))
def adaptive_avg_pool2d(ctx, a):
    """nn.AdaptiveAvgPool2d / F.adaptive_avg_pool2d to any size but 1 x 1 (export lowers
    that to aten.mean.dim: global_avg_pool); None sizes arrive resolved."""
    x = _window_input(ctx, a, "self", "adaptive average pooling")
    return ctx.emit("adaptive_avg_pool2d", [x],
                    {"size": pair(a["output_size"], "output_size")})


@rule("aten.adaptive_max_pool2d.default", produces=("adaptive_max_pool2d",))
def adaptive_max_pool2d(ctx, a):
    """nn.AdaptiveMaxPool2d / F.adaptive_max_pool2d (any size, 1 x 1 too); the indices
    (return_indices=True) are not computed."""
    x = _window_input(ctx, a, "self", "adaptive max pooling")
    y = ctx.emit("adaptive_max_pool2d", [x], {"size": pair(a["output_size"], "output_size")})
    return y, Unused("aten.adaptive_max_pool2d.default", "the indices (return_indices=True)")


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
    axis = _axis(int(a["dim"]), len(shape))
    start, end, step = _slice_range(shape[axis], a["start"], a["end"], a["step"])
    if step < 1:
        raise ctx.unsupported(f"argument 'step'={step}: the step must be positive")
    return _emit_slice(ctx, x, axis, start, end, step)


def _split(ctx, a, sizes, what):
    x = ctx.data(a["self"], "self")
    shape = ctx.shape(x)
    axis = _axis(int(a["dim"]), len(shape))
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
    n, size = int(a["split_size"]), ctx.shape(x)[_axis(int(a["dim"]), len(ctx.shape(x)))]
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
    axis = _axis(int(a["dim"]), len(shape))
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

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

MAX_TAIL_RANK = 6   # formats.ops.MAX_RANK (rules import nothing of the format)


def _tail_shape(ctx, shape, what):
    """The bounds every tail result keeps (SPEC: tails): rank 1 .. 6, N = 1 at rank 4."""
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_TAIL_RANK:
        raise ctx.unsupported(f"{what}: the result has shape {shape}; framedelta supports "
                              f"tensors of rank 1 to {MAX_TAIL_RANK}")
    if len(shape) == 4 and shape[0] != 1:
        raise ctx.unsupported(f"{what}: the result has shape {shape}; a rank-4 tensor must "
                              f"have N = 1 (framedelta keeps rank-4 tensors as images)")
    return shape


def _reshape(ctx, x, what, shape=None, name=None):
    """x viewed as ``shape`` (default: the node's output shape): reshape, or identity."""
    shape = tuple(ctx.out_shape if shape is None else shape)
    if shape == ctx.shape(x):
        return ctx.emit("identity", [x], shape=shape, name=name)
    _tail_shape(ctx, shape, what)
    return ctx.emit("reshape", [x], {"shape": shape}, shape=shape, name=name)


@rule("aten.unsqueeze.default", produces=("reshape",))
def unsqueeze(ctx, a):
    """x.unsqueeze(d), x[:, None], and torch.stack's per-input step: a reshape."""
    if isinstance(a["self"], np.ndarray):
        return np.expand_dims(a["self"], int(a["dim"]) % (a["self"].ndim + 1))
    return _reshape(ctx, ctx.data(a["self"], "self"), f"argument 'dim'={a['dim']}")


@rule("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default",
      produces=("reshape", "identity"))
def squeeze(ctx, a):
    """x.squeeze(), x.squeeze(d), x.squeeze((d, e)): a reshape."""
    if isinstance(a["self"], np.ndarray):
        dims = a.get("dim")
        dims = None if dims is None else tuple(
            d for d in np.atleast_1d(dims).astype(int) if a["self"].shape[d] == 1)
        return np.squeeze(a["self"], dims)
    return _reshape(ctx, ctx.data(a["self"], "self"), "the squeezed result")


@rule("aten.expand.default", produces=("expand", "identity"))
def expand(ctx, a):
    """x.expand(...), x.expand_as(y), and the broadcast that torch.matmul puts before
    bmm; folded on constants. passes.fold_expand lets broadcasting ops read the
    unexpanded tensor where they can."""
    if isinstance(a["self"], np.ndarray):
        c = a["self"]
        size = [c.shape[i - (len(a["size"]) - c.ndim)] if int(d) == -1 else int(d)
                for i, d in enumerate(a["size"])]
        return np.ascontiguousarray(np.broadcast_to(c, size))
    x = ctx.data(a["self"], "self")
    shape = ctx.out_shape
    if shape == ctx.shape(x):
        return ctx.emit("identity", [x])
    _tail_shape(ctx, shape, f"argument 'size' {list(a['size'])}")
    return ctx.emit("expand", [x], {"shape": shape})


def _one_matrix(ctx, w, arg):
    """The matrix of a constant batch of equal matrices (what expand made of a weight)."""
    if w.ndim == 3:
        if not (w == w[:1]).all():
            raise ctx.unsupported(f"argument {arg!r}: a constant batch of different matrices "
                                  f"(shape {w.shape}) is not supported; only one matrix "
                                  f"broadcast over the batch")
        w = w[0]
    return w


def _matmul(ctx, a, b, arg_a, arg_b):
    """a @ b for bmm (rank 3) and mm (rank 2): matmul of two computed tensors; with one
    constant side, a linear layer on the rows (x @ W), or on the rows of the transposed
    tensor (W @ x = (x^T @ W^T)^T); two constants fold."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
    if isinstance(a, Data) and isinstance(b, Data):
        return ctx.emit("matmul", [a.name, b.name])
    out = ctx.out_shape
    rank, lead = len(out), out[:-2]
    batch = int(np.prod(lead, dtype=np.int64))
    if isinstance(a, Data):                       # x @ W: a linear layer on the rows of x
        x, w = ctx.data(a, arg_a), _one_matrix(ctx, ctx.const(b, arg_b), arg_b)
        if rank == 2:
            return _linear(ctx, x, w, None)
        m, k = ctx.shape(x)[-2:]
        rows = _reshape(ctx, x, f"argument {arg_a!r}", (batch * m, k),
                        name=f"{ctx.fx.name}_rows")
        y = _linear(ctx, rows.name, w, None, shape=(batch * m, w.shape[1]))
        return _reshape(ctx, y.name, "the result")
    # W @ x = (x^T @ W^T)^T
    w, x = _one_matrix(ctx, ctx.const(a, arg_a), arg_a), ctx.data(b, arg_b)
    k, n = ctx.shape(x)[-2:]
    perm = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    xt = ctx.emit("permute", [x], {"dims": perm}, shape=lead + (n, k), name=f"{ctx.fx.name}_t")
    rows = _reshape(ctx, xt.name, f"argument {arg_b!r}", (batch * n, k),
                    name=f"{ctx.fx.name}_rows")
    y = _linear(ctx, rows.name, w.T, None, shape=(batch * n, w.shape[0]))
    yt = _reshape(ctx, y.name, "the result", lead + (n, w.shape[0]), name=f"{ctx.fx.name}_yt")
    return ctx.emit("permute", [yt.name], {"dims": perm})


@rule("aten.bmm.default", produces=("matmul", "linear", "permute", "reshape"))
def bmm(ctx, a):
    """torch.bmm, and torch.matmul / @ of batched tensors (which export as expand, view
    and bmm): matmul of two computed tensors; nn.Linear / F.linear on a (1, L, C) tensor
    (a constant right-hand side) as a linear layer on its rows."""
    return _matmul(ctx, a["self"], a["mat2"], "self", "mat2")


def _image_input(ctx, a, arg):
    x = ctx.data(a[arg], arg)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument {arg!r}: needs an (N, C, H, W) input, got shape "
                              f"{ctx.shape(x)}")
    return x


@rule("aten.pixel_shuffle.default", produces=("pixel_shuffle",))
def pixel_shuffle(ctx, a):
    """F.pixel_shuffle where the graph keeps it whole (run_decompositions spells it view,
    permute, clone, view; passes.fuse_pixel_shuffle puts that back together)."""
    x = _image_input(ctx, a, "self")
    return ctx.emit("pixel_shuffle", [x], {"upscale": int(a["upscale_factor"])})


@rule("aten.pixel_unshuffle.default", produces=("pixel_unshuffle",))
def pixel_unshuffle(ctx, a):
    """F.pixel_unshuffle where the graph keeps it whole (see pixel_shuffle)."""
    x = _image_input(ctx, a, "self")
    return ctx.emit("pixel_unshuffle", [x], {"downscale": int(a["downscale_factor"])})


@rule("aten.native_layer_norm.default", produces=("layer_norm",))
def native_layer_norm(ctx, a):
    """nn.LayerNorm / F.layer_norm over the last axis: layer_norm on that axis, computed
    whole; passes.fuse_layer_norm turns permute -> layer norm -> permute back (layer norm
    over the channels at each position, as ConvNeXt spells it) into layer_norm over
    axis 1 of the image, a pointwise op."""
    x = ctx.data(a["input"], "input")
    shape, norm = ctx.shape(x), [int(d) for d in a["normalized_shape"]]
    if len(norm) != 1 or len(shape) < 2:
        raise ctx.unsupported(f"argument 'normalized_shape' {norm}: only layer norm over the "
                              f"last axis of a tensor of rank 2 or more is supported (input "
                              f"shape {shape})")
    c = shape[-1]
    w = np.ones(c, np.float32) if a["weight"] is None else ctx.const(a["weight"], "weight")
    b = np.zeros(c, np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    eps = float(a["eps"])
    if not 0.0 <= eps <= 1e30:
        raise ctx.unsupported(f"argument 'eps'={eps}: must be in [0, 1e30]")
    y = ctx.emit("layer_norm", [x], {"axis": len(shape) - 1, "eps": eps},
                 {"weight": w.reshape(-1), "bias": b.reshape(-1)}, shape=shape)
    op = "aten.native_layer_norm.default"
    return y, Unused(op, "the mean of the layer norm"), Unused(op, "its inverse std")

