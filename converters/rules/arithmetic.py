"""Broadcasting arithmetic: add, sub, mul, div with tensors, constants and numbers.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import numpy as np

from . import Data, rule


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

_NUMPY_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


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
