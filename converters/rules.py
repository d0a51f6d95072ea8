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

@rule("aten.convolution.default", produces=("conv2d",))
def convolution(ctx, a):
    """nn.Conv2d and F.conv2d (groups, depthwise, dilation); bias None becomes zeros."""
    x = ctx.data(a["input"], "input")
    if a["transposed"]:
        raise ctx.unsupported("argument 'transposed' is True: transposed convolution "
                              "(ConvTranspose2d) is not supported yet")
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
    """torch.cat along channels (U-Net skips, DenseNet)."""
    xs = [ctx.data(t, f"tensors[{i}]") for i, t in enumerate(a["tensors"])]
    rank = len(ctx.shape(xs[0]))
    if _axis(int(a["dim"]), rank) != 1:
        raise ctx.unsupported(f"argument 'dim'={a['dim']}: only concatenation along the "
                              f"channels (dim 1) is supported")
    return ctx.emit("concat", xs, {"axis": 1})


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

def _linear(ctx, x, w_t, bias, alpha=1, beta=1):
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
                    {"weight": weight, "bias": float(beta) * bias.reshape(-1)})


@rule("aten.addmm.default", produces=("linear",))
def addmm(ctx, a):
    """nn.Linear / F.linear with bias: addmm(bias, x, permute(weight)); alpha and beta
    are folded into the weights."""
    return _linear(ctx, ctx.data(a["mat1"], "mat1"), ctx.const(a["mat2"], "mat2"),
                   ctx.const(a["self"], "self"), a["alpha"], a["beta"])


@rule("aten.mm.default", produces=("linear",))
def mm(ctx, a):
    """nn.Linear(bias=False): mm(x, permute(weight))."""
    return _linear(ctx, ctx.data(a["self"], "self"), ctx.const(a["mat2"], "mat2"), None)


@rule("aten.permute.default")
def permute(ctx, a):
    """Folded on constants only: the transposed weight of a linear layer."""
    if not isinstance(a["self"], np.ndarray):
        raise ctx.unsupported("argument 'self' is a computed tensor: only permutations of "
                              "constants (linear weights) are supported")
    return np.transpose(a["self"], [int(d) for d in a["dims"]])


# --- shapes and no-ops ------------------------------------------------------------------

@rule("aten.view.default", "aten._unsafe_view.default", produces=("reshape", "identity"))
def view(ctx, a):
    """torch.flatten, x.view, x.reshape; the batch dimension must stay."""
    if isinstance(a["self"], np.ndarray):
        return a["self"].reshape([int(d) for d in a["size"]])
    x = ctx.data(a["self"], "self")
    shape = ctx.out_shape
    if shape == ctx.shape(x):
        return ctx.emit("identity", [x])
    if shape[0] != ctx.shape(x)[0]:
        raise ctx.unsupported(f"argument 'size' {list(a['size'])}: the batch dimension must "
                              f"stay {ctx.shape(x)[0]}, got shape {shape}")
    return ctx.emit("reshape", [x], {"shape": shape})


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


@rule("aten.constant_pad_nd.default")
def constant_pad_nd(ctx, a):
    """F.pad with zeros, and Conv2d(padding='same') with an even kernel: a pseudo-node
    'pad' that passes.fold_pads folds into the following convolutions' pads (giving
    asymmetric padding). A pad that cannot be folded is an error until the format has a
    constant-pad op."""
    x = ctx.data(a["self"], "self")
    pad, rank = [int(p) for p in a["pad"]], len(ctx.shape(x))
    if float(a["value"]) != 0.0:
        raise ctx.unsupported(f"argument 'value'={a['value']}: only zero padding is "
                              f"supported (folded into a following convolution)")
    if rank != 4 or len(pad) % 2 or any(pad[4:]):
        raise ctx.unsupported(f"argument 'pad' {pad}: only padding of H and W of an "
                              f"(N, C, H, W) tensor is supported")
    pad = (pad + [0, 0, 0, 0])[:4]
    if min(pad) < 0:
        raise ctx.unsupported(f"argument 'pad' {pad}: negative padding (cropping) is not "
                              f"supported")
    left, right, top, bottom = pad
    return ctx.emit("pad", [x], {"pads": (top, left, bottom, right)})


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

# --- windows: transposed conv, average pools --------------------------------

# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------
