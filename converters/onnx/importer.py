"""ONNX file -> framedelta graph.

``convert`` reads the file with the ``onnx`` package (nothing is run: neither torch nor
onnxruntime is needed), checks what it can hold (one float32 image input of a fixed
shape, opsets 9 to 21 of the default domain, weights inside the file), then walks the
nodes in order: a node whose inputs are all constants (initializers, Constant nodes,
shapes known once the input shape is fixed) is evaluated with numpy (fold.py: the
Shape/Gather/Unsqueeze/Concat/Cast chains exporters write for reshapes and resizes),
any other node is lowered by the rule for its op type (rules/). The shapes of the
tensors computed from the input are inferred from the format's schemas as the nodes
are emitted. Then the torch converter's graph passes run (BN folding, activation
fusion, silu and hardswish spellings, ...) and formats.check_graph checks the result.

Errors name the file; an op without a rule or with attributes framedelta cannot
express raises UnsupportedOperatorError naming the op type, the node and the opset.
"""

import os


from framedelta.errors import ConversionError
from framedelta.formats.graph import Graph, InputSpec
from framedelta.formats.ops import OPS, resolve_attrs

from ..lowering import GraphBuilder, finish
from ..rules import Data
from .fold import FOLD
from .rules import ONNX_RULES

MIN_OPSET, MAX_OPSET = 9, 21


def _onnx():
    try:
        import onnx
    except ImportError as e:    # pragma: no cover - depends on the environment
        raise ConversionError("reading an ONNX file needs the onnx package: "
                              "pip install 'framedelta[onnx]' (or pip install onnx)") from e
    return onnx


class Lowering(GraphBuilder):
    """``ctx`` for the ONNX rules: the node being lowered and the graph built so far."""

    def __init__(self, path, opset):
        super().__init__()
        self.path, self.opset = path, opset
        self.onnx_node = None

    def begin(self, node, index):
        self.onnx_node, self.out_shape = node, None
        self.op = node.op_type
        self.node_name = _name(node.name or f"{node.op_type}_{index}")

    @property
    def where(self):
        return (f"node {self.onnx_node.name or self.node_name!r}, opset {self.opset}, "
                f"in {os.path.basename(self.path)}")

    @property
    def source(self):
        return f"{self.onnx_node.name or self.node_name} ({self.op}) in {os.path.basename(self.path)}"

    out_shape = None    # set by a rule before it calls a torch rule's helper that reads it

    def emit(self, op, inputs, attrs=None, weights=None, shape=None, name=None):
        """As GraphBuilder.emit; without ``shape``, the op's schema infers it."""
        if shape is None:
            schema = OPS[op]
            try:
                shape = schema.infer(resolve_attrs(schema, attrs or {}),
                                     [self.shape(t) for t in inputs])[0]
            except (ValueError, KeyError, TypeError) as e:
                raise self.unsupported(f"the {op} it lowers to does not take these inputs "
                                       f"(shapes {[self.shape(t) for t in inputs]}): {e}")
        return super().emit(op, inputs, attrs, weights, tuple(shape), name)


def _name(text):
    """A node or tensor name the format accepts (no NUL, no '/'-only oddities)."""
    text = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")
    return text or "t"


def _attrs(onnx, node):
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [b.decode() for b in v]
        out[a.name] = v
    return out


def _load(onnx, path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, and others on garbage
        raise ConversionError(f"{path} is not a readable ONNX file (malformed or truncated): "
                              f"{type(e).__name__}: {e}") from e
    if not model.graph.node:
        raise ConversionError(f"{path} is not a readable ONNX file: its graph has no nodes "
                              f"(malformed or truncated)")
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise ConversionError(f"{path}: initializer {t.name!r} refers to external data "
                                  f"(a separate weights file); framedelta reads weights only "
                                  f"from inside the ONNX file: save the model with "
                                  f"onnx.save(model, path, save_as_external_data=False)")
    return model


def _opset(path, model):
    versions = {o.domain: o.version for o in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConversionError(f"{path}: default-domain opset {opset} is not supported "
                              f"(framedelta reads opsets {MIN_OPSET} to {MAX_OPSET})")
    return opset


def _input(onnx, path, model, input_shape):
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConversionError(f"{path}: framedelta models take one input tensor, the graph "
                              f"takes {len(inputs)} ({', '.join(i.name for i in inputs)})")
    vi = inputs[0]
    tt = vi.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise ConversionError(f"{path}: input {vi.name!r} must be float32, it is "
                              f"{onnx.TensorProto.DataType.Name(tt.elem_type)}")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tt.shape.dim]
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        # the file's batch and image size may be replaced (exporters often write the
        # size they traced with), not its channels
        if len(shape) != len(dims) or (len(dims) > 1 and isinstance(dims[1], int)
                                       and dims[1] != shape[1]):
            raise ConversionError(f"{path}: --input-shape {shape} does not fit input "
                                  f"{vi.name!r} of shape {tuple(dims)}")
    elif any(not isinstance(d, int) or d < 1 for d in dims):
        raise ConversionError(f"{path}: input {vi.name!r} has a dynamic shape {tuple(dims)}: "
                              f"give the shape to convert for (--input-shape 1,C,H,W, or "
                              f"input_shape=(1, C, H, W))")
    else:
        shape = tuple(dims)
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise ConversionError(f"{path}: the input must be one (1, C, H, W) image, got "
                              f"shape {shape} for {vi.name!r} (the batch stays 1: give "
                              f"--input-shape 1,C,H,W)")
    return vi.name, shape


def lower(path, input_shape=None, preprocess=None):
    """(graph before the passes, {node: (op type, where)})."""
    onnx = _onnx()
    model = _load(onnx, path)
    opset = _opset(path, model)
    in_name, shape = _input(onnx, path, model, input_shape)
    ctx = Lowering(os.fspath(path), opset)
    env = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    graph_input = _name(in_name)
    ctx._names.add(graph_input)
    ctx.shapes[graph_input] = shape
    env[in_name] = Data(graph_input)
    env[""] = None                       # an omitted optional input
    for index, node in enumerate(model.graph.node):
        ctx.begin(node, index)
        if node.domain not in ("", "ai.onnx"):
            raise ctx.unsupported(f"custom domain {node.domain!r}: framedelta reads the "
                                  f"default ONNX domain only")
        try:
            ins = [env[t] for t in node.input]
        except KeyError as e:
            raise ConversionError(f"{path}: node {node.name!r} reads {e.args[0]!r}, which "
                                  f"no earlier node produces (malformed graph)") from None
        attrs = _attrs(onnx, node)
        if node.op_type in FOLD and all(not isinstance(v, Data) for v in ins):
            try:
                outs = FOLD[node.op_type](ins, attrs, opset)
            except (ValueError, IndexError, TypeError, KeyError) as e:
                raise ctx.unsupported(f"evaluating it on constants failed: {e}") from e
        elif node.op_type in ONNX_RULES:
            outs = ONNX_RULES[node.op_type].fn(ctx, ins, attrs)
        else:
            raise ctx.unsupported("framedelta has no ONNX rule for this op type")
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for t, v in zip(node.output, outs):
            env[t] = v
    graph = Graph(InputSpec(graph_input, shape, preprocess=preprocess), ctx.nodes, [],
                  producer=f"framedelta.converters.onnx (onnx {onnx.__version__}, "
                           f"opset {opset})")
    for out in model.graph.output:
        v = env.get(out.name)
        if not isinstance(v, Data):
            raise ConversionError(f"{path}: output {out.name!r} is not a tensor computed "
                                  f"from the input")
        name = v.name
        if name == graph_input or name in graph.outputs:
            ctx.op, ctx.node_name = "Identity", name
            name = ctx.emit("identity", [name], shape=ctx.shapes[name],
                            name=f"{name}_output").name
        graph.outputs.append(name)
    return graph, ctx.origins


def convert(path, out_path=None, *, input_shape=None, preprocess=None):
    """Convert the ONNX file at ``path``; write the model file when ``out_path`` is given.

    ``input_shape`` (1, C, H, W) fixes a dynamic input shape (or replaces the file's
    batch). Raises ConversionError naming the file for a file it cannot read, and
    UnsupportedOperatorError naming the op type, node and opset.
    """
    graph, origins = lower(path, input_shape, preprocess)
    return finish(graph, origins, out_path, source=f"{path}: ")
