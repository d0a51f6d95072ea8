"""Activations: relu and clamp spellings, the smooth activations, softmax, pow.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import math

import numpy as np

from . import Data, axis_index, rule


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
    axis = axis_index(int(dim), rank)
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
