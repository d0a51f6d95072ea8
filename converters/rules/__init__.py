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

The rules live in one module per op family (windows, activations, arithmetic,
rearrange, tails); this package holds what they share. None of it imports torch or the
rest of the converter: rules only read values.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    target: str          # e.g. "aten.convolution.default"
    fn: object           # (ctx, args) -> value
    produces: tuple      # framedelta ops it may emit
    doc: str = ""


def registrar(table):
    """A decorator ``rule(*targets, produces=())`` registering ``fn`` in ``table`` as
    the rule for each source op named in ``targets`` (aten ops here, ONNX op types in
    converters/onnx/rules)."""
    def rule(*targets, produces=()):
        def register(fn):
            for target in targets:
                if target in table:
                    raise AssertionError(f"two rules for {target}")
                table[target] = Rule(target, fn, tuple(produces), (fn.__doc__ or "").strip())
            return fn
        return register
    return rule


RULES = {}
rule = registrar(RULES)


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


def axis_index(dim, rank):
    return dim + rank if dim < 0 else dim


def fits_window(pads, kernel, dilation):
    """The format needs every pad smaller than the dilated kernel extent."""
    (pt, pl, pb, pr), (kh, kw), (dh, dw) = pads, kernel, dilation
    return max(pt, pb) < dh * (kh - 1) + 1 and max(pl, pr) < dw * (kw - 1) + 1


# The rules, one module per op family; importing them fills RULES.
from . import activations, arithmetic, rearrange, tails, windows  # noqa: E402,F401
from .rearrange import NO_RULE_HINTS  # noqa: E402,F401
