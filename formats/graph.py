"""The in-memory model: an input spec, nodes in execution order, output names.

This is what the converter builds, the writer stores, the reader returns and the
engine runs. :func:`check_graph` enforces the graph-level rules of SPEC.md (ops,
attributes, weights, tensor names, order, shapes, bounds) and returns every tensor's
shape; the reader calls it after its own checks of the file's raw fields.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from framedelta.errors import ModelFormatError

from .ops import (MAX_DIM, MAX_NAME_LEN, MAX_NODES, MAX_NUMEL, MAX_TEXT_LEN, OPS,
                  SchemaError, check_attr_value, resolve_attrs)


@dataclass
class Preprocess:
    """How a uint8 camera frame (H, W, 3, as OpenCV reads it: BGR) becomes the input.

    x = ((frame[..., order] * scale) - mean) / std, then to (1, 3, H, W).
    ``bgr_to_rgb`` says whether the model expects RGB (OpenCV delivers BGR).
    """
    scale: float = 1.0 / 255.0
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    bgr_to_rgb: bool = True


@dataclass
class InputSpec:
    name: str
    shape: tuple                       # (1, C, H, W), torch layout
    dtype: str = "float32"
    preprocess: Preprocess = None


@dataclass
class Node:
    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)   # name -> float32 ndarray
    source: str = ""                               # where it came from in the source model


@dataclass
class Graph:
    input: InputSpec
    nodes: list
    outputs: list
    producer: str = "framedelta"

    def node_attrs(self, node):
        """The node's attributes with schema defaults filled in."""
        return resolve_attrs(OPS[node.op], node.attrs)


def _fail(path, node, field, message):
    raise ModelFormatError(path, node, field, message)


def _check_shape(path, node, field, shape):
    if len(shape) == 0 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        _fail(path, node, field, f"dimensions must be positive integers, got {tuple(shape)}")
    if any(d > MAX_DIM for d in shape):
        _fail(path, node, field, f"dimension above {MAX_DIM} in {tuple(shape)}")
    if math.prod(int(d) for d in shape) > MAX_NUMEL:
        _fail(path, node, field, f"{tuple(shape)} has more than {MAX_NUMEL} elements")


def _check_text(path, node, field, value, limit, empty_ok):
    # HDF5 strings end at the first NUL: a name holding one would not survive the file
    if not isinstance(value, str):
        _fail(path, node, field, f"must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        _fail(path, node, field, "must not be empty")
    if "\0" in value:
        _fail(path, node, field, f"must not contain NUL characters: {value!r}")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        _fail(path, node, field, f"is not encodable as UTF-8: {value!r}")
    if n > limit:
        _fail(path, node, field, f"is {n} bytes long in UTF-8, the limit is {limit}")


def _name(path, node, field, value):
    _check_text(path, node, field, value, MAX_NAME_LEN, empty_ok=False)


def _attr_field(node, schema, field):
    """SchemaError names the bare attribute; ModelFormatError says where it lives."""
    if field in schema.attrs or field in node.attrs:
        return f"attrs/{field}"
    return field


def check_graph(graph, path=None):
    """Check every graph-level rule; return {tensor name: shape} (torch layout).

    Raises ModelFormatError naming ``path``, the node and the field at fault.
    """
    spec = graph.input
    _check_text(path, None, "producer", graph.producer, MAX_TEXT_LEN, empty_ok=True)
    _name(path, None, "input.name", spec.name)
    if len(spec.shape) != 4 or spec.shape[0] != 1:
        _fail(path, None, "input.shape", f"must be (1, C, H, W), got {tuple(spec.shape)}")
    _check_shape(path, None, "input.shape", spec.shape)
    if spec.dtype != "float32":
        _fail(path, None, "input.dtype", f"must be 'float32', got {spec.dtype!r}")
    if spec.preprocess is not None:
        p = spec.preprocess
        if spec.shape[1] != 3:
            _fail(path, None, "input.preprocess", "image preprocessing needs 3 input channels")
        if not (math.isfinite(p.scale) and p.scale > 0):
            _fail(path, None, "input.scale", f"must be finite and positive, got {p.scale}")
        if len(p.mean) != 3 or not all(math.isfinite(m) for m in p.mean):
            _fail(path, None, "input.mean", f"must be 3 finite values, got {p.mean}")
        if len(p.std) != 3 or not all(math.isfinite(s) and s > 0 for s in p.std):
            _fail(path, None, "input.std", f"must be 3 finite positive values, got {p.std}")
        if not isinstance(p.bgr_to_rgb, (bool, np.bool_)):
            _fail(path, None, "input.bgr_to_rgb", f"must be a bool, got {p.bgr_to_rgb!r}")
    if len(graph.nodes) > MAX_NODES:
        _fail(path, None, "nodes", f"{len(graph.nodes)} nodes exceed the limit {MAX_NODES}")
    if not graph.nodes:
        _fail(path, None, "nodes", "the graph has no nodes")

    shapes = {spec.name: tuple(spec.shape)}
    names = set()
    for node in graph.nodes:
        nm = node.name
        _name(path, nm, "name", nm)
        if nm in names:
            _fail(path, nm, "name", f"node name {nm!r} is used twice")
        names.add(nm)
        schema = OPS.get(node.op)
        if schema is None:
            _fail(path, nm, "op", f"unknown op {node.op!r}")
        _check_text(path, nm, "source", node.source, MAX_TEXT_LEN, empty_ok=True)
        lo, hi = schema.inputs
        if len(node.inputs) < lo or len(node.inputs) > (hi or MAX_NODES):
            _fail(path, nm, "inputs", f"op {node.op!r} takes {lo}..{hi or MAX_NODES} inputs, "
                  f"got {len(node.inputs)}")
        if len(node.outputs) != schema.outputs:
            _fail(path, nm, "outputs", f"op {node.op!r} has {schema.outputs} output(s), "
                  f"got {len(node.outputs)}")
        for t in node.inputs:
            if t in shapes:
                continue            # a known tensor: its name was checked where it was made
            _name(path, nm, "inputs", t)
            if t not in shapes:
                # either dangling or produced later: both break the stored order
                _fail(path, nm, "inputs", f"tensor {t!r} is not produced by any earlier node "
                      "(dangling name, or the node order has a cycle)")
        try:
            attrs = resolve_attrs(schema, node.attrs)
            for k, v in attrs.items():
                check_attr_value(k, schema.attrs[k], v)
            in_shapes = [shapes[t] for t in node.inputs]
            want = schema.weights(attrs, in_shapes)
        except SchemaError as e:
            _fail(path, nm, _attr_field(node, schema, e.field), str(e))
        extra = set(node.weights) - set(want)
        if extra:
            _fail(path, nm, f"weights/{sorted(extra)[0]}", f"unexpected dataset for op {node.op!r}")
        for wname, wshape in want.items():
            field = f"weights/{wname}"
            if wname not in node.weights:
                _fail(path, nm, field, f"missing dataset of shape {wshape}")
            w = node.weights[wname]
            if w.dtype != np.float32:
                _fail(path, nm, field, f"dtype must be float32, got {w.dtype}")
            if tuple(w.shape) != tuple(wshape):
                _fail(path, nm, field, f"shape must be {tuple(wshape)}, got {tuple(w.shape)}")
            _check_shape(path, nm, field, wshape)
        try:
            out_shapes = schema.infer(attrs, in_shapes)
        except SchemaError as e:
            _fail(path, nm, _attr_field(node, schema, e.field), str(e))
        for t, s in zip(node.outputs, out_shapes):
            _name(path, nm, "outputs", t)
            if t in shapes:
                _fail(path, nm, "outputs", f"tensor {t!r} is produced twice")
            _check_shape(path, nm, "outputs", s)
            shapes[t] = tuple(int(d) for d in s)
    if not graph.outputs:
        _fail(path, None, "outputs", "the graph declares no outputs")
    if len(set(graph.outputs)) != len(graph.outputs):
        _fail(path, None, "outputs", "an output is listed twice")
    for t in graph.outputs:
        if t not in shapes:
            _fail(path, None, "outputs", f"output tensor {t!r} is not produced by any node")
    return shapes
