"""Per-position ops: activations, Clip, Softmax, Pow, and broadcasting arithmetic.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import math

import numpy as np

from ...rules.arithmetic import binary
from ...rules.tails import emit_reshape
from . import axis, is_data, onnx_rule, scalar


def _unary(op, doc):
    def fn(ctx, ins, attrs):
        return ctx.emit(op, [ctx.data(ins[0], "X")])
    fn.__doc__ = doc
    return fn


for _onnx, _op in (("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"),
                   ("HardSwish", "hardswish"), ("Identity", "identity"),
                   ("Dropout", "identity")):
    onnx_rule(_onnx, produces=(_op,))(_unary(_op, f"{_onnx}: {_op}."))


@onnx_rule("LeakyRelu", produces=("leaky_relu",))
def leaky_relu(ctx, ins, attrs):
    """x if x > 0 else alpha * x (alpha default 0.01)."""
    return ctx.emit("leaky_relu", [ctx.data(ins[0], "X")],
                    {"negative_slope": float(attrs.get("alpha", 0.01))})


@onnx_rule("PRelu", produces=("prelu", "leaky_relu"))
def prelu(ctx, ins, attrs):
    """A constant slope, one for all or one per channel."""
    x = ctx.data(ins[0], "X")
    slope = np.asarray(ctx.const(ins[1], "slope"), np.float32)
    shape = ctx.shape(x)
    if slope.size == 1:
        return ctx.emit("leaky_relu", [x], {"negative_slope": float(slope.reshape(-1)[0])})
    if len(shape) < 2 or slope.size != shape[1] or \
            sum(d != 1 for d in slope.shape) > 1:
        raise ctx.unsupported(f"input 'slope' of shape {slope.shape}: only one slope, or "
                              f"one per channel, is supported")
    return ctx.emit("prelu", [x], {"num_parameters": int(slope.size)},
                    {"slope": slope.reshape(-1)})


@onnx_rule("HardSigmoid", produces=("hardsigmoid", "mul", "add", "clamp"))
def hard_sigmoid(ctx, ins, attrs):
    """max(0, min(1, alpha * x + beta)): hardsigmoid for torch's alpha 1/6, beta 0.5;
    other slopes (Paddle's 0.2) as mul, add and clamp."""
    x = ctx.data(ins[0], "X")
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if np.float32(alpha) == np.float32(1 / 6) and beta == 0.5:
        return ctx.emit("hardsigmoid", [x])
    y = binary(ctx, "add", binary(ctx, "mul", ins[0], alpha), beta)
    return ctx.emit("clamp", [y.name], {"min": 0.0, "max": 1.0})


def _clip_bound(ctx, ins, attrs, i, key, default):
    if ctx.opset < 11:
        return float(attrs.get(key, default))
    if len(ins) <= i or ins[i] is None:
        return default
    return scalar(ctx, ins[i], key)


@onnx_rule("Clip", produces=("clamp", "relu"))
def clip(ctx, ins, attrs):
    """min(max(x, min), max), bounds from attributes (opset < 11) or constant inputs;
    clip(0, inf) is relu, clip(0, 6) relu6 (both fuse into a conv before them)."""
    x = ctx.data(ins[0], "input")
    lo = _clip_bound(ctx, ins, attrs, 1, "min", -math.inf)
    hi = _clip_bound(ctx, ins, attrs, 2, "max", math.inf)
    if lo == 0.0 and hi == math.inf:
        return ctx.emit("relu", [x])
    return ctx.emit("clamp", [x], {"min": lo, "max": hi})


def _softmax(op):
    def fn(ctx, ins, attrs):
        x = ctx.data(ins[0], "input")
        shape = ctx.shape(x)
        a = axis(ctx, attrs.get("axis", -1 if ctx.opset >= 13 else 1), len(shape))
        if ctx.opset < 13 and math.prod(shape[a + 1:]) != 1:
            raise ctx.unsupported(f"attribute 'axis'={a} at opset {ctx.opset} means a "
                                  f"{op} over the flattened axes {a}.. of shape {shape}; "
                                  f"only one axis is supported (export with opset 13+)")
        return ctx.emit(op, [x], {"axis": a})
    fn.__doc__ = f"{op} along one axis (opset 13's meaning; before, over one axis only)."
    return fn


onnx_rule("Softmax", produces=("softmax",))(_softmax("softmax"))
onnx_rule("LogSoftmax", produces=("log_softmax",))(_softmax("log_softmax"))


@onnx_rule("Pow", produces=("pow",))
def pow_(ctx, ins, attrs):
    """x ** c for a constant exponent."""
    return ctx.emit("pow", [ctx.data(ins[0], "X")], {"exponent": scalar(ctx, ins[1], "Y")})


@onnx_rule("Sqrt", produces=("pow",))
def sqrt(ctx, ins, attrs):
    """x ** 0.5."""
    return ctx.emit("pow", [ctx.data(ins[0], "X")], {"exponent": 0.5})


def _same_rank(ctx, lhs, rhs):
    """ONNX broadcasts tensors of different ranks (numpy rules): the lower-rank one is
    viewed with leading ones."""
    if not (is_data(lhs) and is_data(rhs)):
        return lhs, rhs
    ra, rb = len(ctx.shape(lhs.name)), len(ctx.shape(rhs.name))
    if ra == rb:
        return lhs, rhs
    low, high = (lhs, rb) if ra < rb else (rhs, ra)
    s = ctx.shape(low.name)
    wide = emit_reshape(ctx, low.name, "the broadcast operand", (1,) * (high - len(s)) + s,
                        name=f"{ctx.node_name}_b")
    return (wide, rhs) if low is lhs else (lhs, wide)


def _arith(op):
    def fn(ctx, ins, attrs):
        return binary(ctx, op, *_same_rank(ctx, ins[0], ins[1]))
    fn.__doc__ = f"A {op} B with numpy broadcasting, tensors or constants on either side."
    return fn


for _onnx, _op in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div")):
    onnx_rule(_onnx, produces=(_op, "reshape"))(_arith(_op))


@onnx_rule("Cast", produces=("identity",))
def cast(ctx, ins, attrs):
    """A cast of a computed tensor to float32 (what it is already) is an identity;
    framedelta computes in float32 only."""
    if int(attrs["to"]) != 1:
        raise ctx.unsupported(f"attribute 'to'={attrs['to']}: a computed tensor can only "
                              f"be cast to float32 (framedelta has no other dtype)")
    return ctx.emit("identity", [ctx.data(ins[0], "input")])
