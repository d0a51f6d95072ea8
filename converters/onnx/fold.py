"""Numpy evaluation of ONNX nodes whose inputs are all constants, at conversion time.

Exporters compute reshape targets and resize sizes in the graph: Shape -> Gather ->
Unsqueeze -> Concat -> Cast chains, Constant nodes, weights transposed or reshaped by
a node. Once the input shape is fixed every value there is a constant; ``FOLD`` maps an
op type to ``fn(inputs, attrs, opset) -> output or list of outputs`` (numpy arrays;
None for an omitted optional input). Ops reading a tensor computed from the input go
to the rules instead (Shape of such a tensor is a rule: its shape is known).
"""

import numpy as np

FOLD = {}


def folds(*op_types):
    def register(fn):
        for op in op_types:
            FOLD[op] = fn
        return fn
    return register


def axes_of(ins, attrs, opset, since, rank=None):
    """An op's ``axes``: an attribute before opset ``since``, the second input from it;
    normalised to non-negative when ``rank`` is given. None when absent."""
    axes = attrs.get("axes") if opset < since else (ins[1] if len(ins) > 1 else None)
    if axes is None:
        return None
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    return axes if rank is None else [a + rank if a < 0 else a for a in axes]


@folds("Constant")
def constant(ins, attrs, opset):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            v = attrs[key]
            return np.asarray(v, np.float32 if "float" in key else
                              (np.int64 if "int" in key else None))
    raise ValueError(f"Constant without a supported value attribute ({sorted(attrs)})")


@folds("Identity", "Dropout")
def identity(ins, attrs, opset):
    return ins[0]


@folds("Shape")
def shape(ins, attrs, opset):
    s = np.asarray(ins[0].shape, np.int64)
    return s[attrs.get("start", 0):attrs.get("end", len(s))]


@folds("Gather")
def gather(ins, attrs, opset):
    return np.take(ins[0], np.asarray(ins[1], np.int64), axis=attrs.get("axis", 0))


@folds("Unsqueeze")
def unsqueeze(ins, attrs, opset):
    out, axes = ins[0], axes_of(ins, attrs, opset, 13)
    for a in sorted(axes_of(ins, attrs, opset, 13, out.ndim + len(axes))):
        out = np.expand_dims(out, a)
    return out


@folds("Squeeze")
def squeeze(ins, attrs, opset):
    axes = axes_of(ins, attrs, opset, 13, ins[0].ndim)
    return np.squeeze(ins[0], None if axes is None else tuple(axes))


@folds("Concat")
def concat(ins, attrs, opset):
    return np.concatenate([np.asarray(v) for v in ins], axis=attrs["axis"])


_ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
               9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


@folds("Cast")
def cast(ins, attrs, opset):
    return np.asarray(ins[0]).astype(_ONNX_TYPES[attrs["to"]])


def reshape_target(in_shape, target, allowzero=0):
    """ONNX Reshape's output shape: 0 copies the input dimension (unless allowzero),
    one -1 is inferred."""
    out = [int(d) for d in np.asarray(target).reshape(-1)]
    if not allowzero:
        out = [in_shape[i] if d == 0 else d for i, d in enumerate(out)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    return tuple(out)


@folds("Reshape")
def reshape(ins, attrs, opset):
    return ins[0].reshape(reshape_target(ins[0].shape, ins[1], attrs.get("allowzero", 0)))


@folds("Flatten")
def flatten(ins, attrs, opset):
    x, axis = ins[0], attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@folds("Transpose")
def transpose(ins, attrs, opset):
    return np.transpose(ins[0], attrs.get("perm"))


def slice_params(ins, attrs, opset, shape):
    """[(axis, start, end, step)] of an ONNX Slice, clamped as numpy clamps."""
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else None
        steps = ins[4] if len(ins) > 4 else None
    starts = np.asarray(starts, np.int64).reshape(-1)
    ends = np.asarray(ends, np.int64).reshape(-1)
    axes = range(len(starts)) if axes is None else np.asarray(axes, np.int64).reshape(-1)
    steps = [1] * len(starts) if steps is None else np.asarray(steps, np.int64).reshape(-1)
    out = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = int(a) + len(shape) if a < 0 else int(a)
        out.append((a,) + slice(int(s), int(e), int(st)).indices(shape[a]))
    return out


@folds("Slice")
def slice_(ins, attrs, opset):
    index = [slice(None)] * ins[0].ndim
    for a, s, e, st in slice_params(ins, attrs, opset, ins[0].shape):
        index[a] = slice(s, e if e >= 0 else None, st)    # indices() gives -1 for "before 0"
    return ins[0][tuple(index)]


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
           "Max": np.maximum, "Min": np.minimum}
_LOGICAL = {"Equal": np.equal, "Less": np.less, "Greater": np.greater,
            "And": np.logical_and, "Or": np.logical_or}


def _binary(op):
    def fn(ins, attrs, opset):
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        if op in _LOGICAL:
            return _LOGICAL[op](a, b)
        return _BINARY[op](a, b).astype(np.result_type(a, b))   # ONNX keeps the dtype
    return fn


for _op in (*_BINARY, *_LOGICAL):
    FOLD[_op] = _binary(_op)


@folds("Div")
def div(ins, attrs, opset):
    a, b = np.asarray(ins[0]), np.asarray(ins[1])
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)        # ONNX integer division truncates
    return (a / b).astype(np.result_type(a, b))


_UNARY = {"Neg": np.negative, "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil,
          "Abs": np.abs, "Exp": np.exp, "Reciprocal": np.reciprocal, "Not": np.logical_not,
          "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Relu": lambda x: np.maximum(x, 0)}
for _op, _fn in _UNARY.items():
    FOLD[_op] = (lambda f: lambda ins, attrs, opset: f(np.asarray(ins[0])).astype(
        np.asarray(ins[0]).dtype))(_fn)


@folds("Range")
def range_(ins, attrs, opset):
    start, limit, delta = (np.asarray(v).item() for v in ins)
    return np.arange(start, limit, delta, dtype=np.asarray(ins[0]).dtype)


@folds("ConstantOfShape")
def constant_of_shape(ins, attrs, opset):
    value = attrs.get("value", np.zeros(1, np.float32))
    return np.full(tuple(int(d) for d in ins[0]), value.reshape(-1)[0], value.dtype)


@folds("Expand")
def expand(ins, attrs, opset):
    x, s = ins[0], [int(d) for d in ins[1]]
    return np.ascontiguousarray(x * np.ones(s, x.dtype))


@folds("Where")
def where(ins, attrs, opset):
    return np.where(ins[0], ins[1], ins[2])


@folds("ReduceProd")
def reduce_prod(ins, attrs, opset):
    axes = axes_of(ins, attrs, opset, 18, ins[0].ndim)
    return np.prod(ins[0], axis=None if axes is None else tuple(axes),
                   keepdims=bool(attrs.get("keepdims", 1)))


@folds("Tile")
def tile(ins, attrs, opset):
    return np.tile(ins[0], [int(r) for r in ins[1]])
