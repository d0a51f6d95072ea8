"""ONNX rules: one small function per ONNX op type, keyed by the op type.

A rule receives the lowering context ``ctx`` (importer.Lowering: ``ctx.opset``, the
graph built so far, ``ctx.emit``, ``ctx.unsupported``), the node's inputs ``ins`` (a
:class:`~framedelta.converters.rules.Data` for a tensor computed from the input, a numpy
array for a constant, None for an omitted optional input) and its attributes as Python
values. It returns the output (or a list, one per ONNX output). Nodes whose inputs are
all constants never reach a rule: fold.py evaluates them. The format ops a rule emits
are declared in ``produces``; the rules reuse the torch rules' helpers where the
arithmetic is the same (broadcasting, reshapes, slices, linear layers, sums).
"""

import numpy as np

from ...rules import Data, registrar

ONNX_RULES = {}       # op type -> rules.Rule
onnx_rule = registrar(ONNX_RULES)


def image(ctx, value, what="input"):
    """The name of a computed (1, C, H, W) tensor."""
    x = ctx.data(value, what)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"{what}: needs an (N, C, H, W) tensor, got shape "
                              f"{ctx.shape(x)}")
    return x


def ints(attrs, key, default):
    return tuple(int(v) for v in attrs.get(key, default))


def scalar(ctx, value, what):
    """A constant holding one number, as a float."""
    c = np.asarray(ctx.const(value, what))
    if c.size != 1:
        raise ctx.unsupported(f"{what}: expected one number, got shape {c.shape}")
    return float(c.reshape(-1)[0])


def axis(ctx, value, rank, what="axis"):
    a = int(value)
    if not -rank <= a < rank:
        raise ctx.unsupported(f"{what}={a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def is_data(value):
    return isinstance(value, Data)


from . import elementwise, shapes, windows  # noqa: E402,F401
