"""PyTorch -> framedelta graph, through torch.export.

``convert`` exports the module (or takes an ExportedProgram), runs torch's default
decompositions so that every op is a core aten op, folds the nodes that read only
constants (evaluated with torch at conversion time: shape arithmetic, anchor grids
built at forward time, transposed weights), lowers each other FX node with the rule
registered for its aten op (rules.py), runs the graph passes (passes.py: BN folding,
activation fusion, pad folding, identity removal), checks the result with
formats.check_graph and optionally writes the model file.

Errors name the op and where it came from in the user's model: the module path and
class from ``nn_module_stack`` and the last source line outside torch from
``stack_trace``.
"""

import operator
import os
import re

import numpy as np
import torch
import torch.fx

from framedelta.errors import ConversionError, UnsupportedOperatorError
from framedelta.formats.graph import Graph, InputSpec

from .lowering import GraphBuilder, finish
from .rules import NO_RULE_HINTS, RULES, Data

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')

# FX names are readable already; these two are long for what they are.
_SHORT_NAMES = {"_native_batch_norm_legit_no_training": "batch_norm",
                "max_pool2d_with_indices": "max_pool2d"}


def target_name(target):
    """'aten.convolution.default' for an OpOverload, 'operator.getitem' for a builtin."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))
    return f"{module.lstrip('_')}.{name}" if module else name


# --- where a node came from --------------------------------------------------------------

def _module_of(fx):
    stack = fx.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return path or "<root>", cls.rsplit(".", 1)[-1]


def _user_frame(fx):
    """(file, line) of the last stack frame outside torch's own package."""
    frames = _FRAME.findall(fx.meta.get("stack_trace") or "")
    for path, line in reversed(frames):
        if not os.path.abspath(path).startswith(_TORCH_DIR):
            return path, int(line)
    return None


def describe(fx, full_path=True):
    """'layer1.0.conv1 (Conv2d) at model.py:42', from whatever the exporter recorded.

    ``full_path`` False keeps only the file's name (what a model file stores).
    """
    parts = []
    module = _module_of(fx)
    if module:
        parts.append(f"{module[0]} ({module[1]})")
    frame = _user_frame(fx)
    if frame:
        path = frame[0] if full_path else os.path.basename(frame[0])
        parts.append(f"at {path}:{frame[1]}")
    return " ".join(parts) or None


# --- arguments ---------------------------------------------------------------------------

def bind_args(fx, env):
    """The node's arguments by schema name, trailing defaults filled from the schema,
    FX nodes replaced by what they lowered to."""
    lower = lambda v: torch.fx.node.map_arg(v, lambda n: env[n])  # noqa: E731
    if not isinstance(fx.target, torch._ops.OpOverload):
        if fx.target is operator.getitem:
            return {"self": lower(fx.args[0]), "index": fx.args[1]}
        return {f"arg{i}": lower(v) for i, v in enumerate(fx.args)} | dict(fx.kwargs)
    out = {}
    for i, arg in enumerate(fx.target._schema.arguments):
        if not arg.kwarg_only and i < len(fx.args):
            value = fx.args[i]
        elif arg.name in fx.kwargs:
            value = fx.kwargs[arg.name]
        elif arg.has_default_value():
            value = arg.default_value
        else:
            raise ConversionError(f"{target_name(fx.target)} at node {fx.name}: "
                                  f"argument {arg.name!r} is missing")
        out[arg.name] = lower(value)
    return out


def _static_shape(fx):
    val = fx.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0]
    if not isinstance(val, torch.Tensor):
        return None
    if not all(isinstance(d, int) for d in val.shape):
        raise ConversionError(f"node {fx.name} ({target_name(fx.target)}, from "
                              f"{describe(fx)}) has a dynamic shape {tuple(val.shape)}: "
                              "export with static shapes")
    return tuple(val.shape)


# --- lowering ----------------------------------------------------------------------------

class Lowering(GraphBuilder):
    """What a rule sees as ``ctx``: the FX node being lowered and the graph built so far."""

    short_names = _SHORT_NAMES

    def __init__(self):
        super().__init__()
        self.fx = None

    # the node being lowered
    def begin(self, fx):
        self.fx = fx
        self.op = target_name(fx.target)

    @property
    def where(self):
        return describe(self.fx)

    @property
    def source(self):
        return describe(self.fx, full_path=False)

    @property
    def node_name(self):
        return self.fx.name

    @property
    def out_shape(self):
        return _static_shape(self.fx)

    def add_input(self, fx):
        self._names.add(fx.name)
        self.shapes[fx.name] = _static_shape(fx)
        return Data(fx.name)


def _constants(ep):
    """{placeholder name: tensor} of parameters, buffers and lifted constants."""
    sig = ep.graph_signature
    out = {}
    for name, target in {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                         **sig.inputs_to_lifted_tensor_constants}.items():
        t = ep.state_dict[target] if target in ep.state_dict else ep.constants[target]
        out[name] = t.detach().cpu()
    return out


def _as_numpy(value):
    """What a rule sees of a constant: tensors as numpy arrays (floats other than
    float64 as float32), tuples and lists element by element, anything else as is."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()
        return t.numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_as_numpy(v) for v in value)
    return value


# --- constant folding --------------------------------------------------------------------

def _constant_nodes(ep, user_input):
    """The call_function nodes whose value does not depend on the model input: they
    read only parameters, buffers, literals and other such nodes (shape arithmetic,
    anchor grids built at forward time with arange / full / casts, transposed
    weights). Ops that draw random numbers are never constant."""
    varying, const = {user_input}, set()
    for fx in ep.graph.nodes:
        if fx.op != "call_function":
            continue
        seeded = (isinstance(fx.target, torch._ops.OpOverload)
                  and torch.Tag.nondeterministic_seeded in fx.target.tags)
        if seeded or any(n in varying for n in fx.all_input_nodes):
            varying.add(fx)
        else:
            const.add(fx)
    return const


def _fold(fx, values):
    """Evaluate a constant node with torch, at conversion time; ``values`` holds the
    torch value of every node it reads."""
    args = torch.fx.node.map_arg(fx.args, lambda n: values[n])
    kwargs = torch.fx.node.map_arg(fx.kwargs, lambda n: values[n])
    try:
        with torch.no_grad():
            return fx.target(*args, **kwargs)
    except Exception as e:  # whatever the op raises, say where it came from
        raise ConversionError(f"{target_name(fx.target)} (from "
                              f"{describe(fx) or 'an unknown place'}): evaluating this "
                              f"constant at conversion time failed: {type(e).__name__}: "
                              f"{e}") from e


def _check_example(x):
    if isinstance(x, (tuple, list)):
        if len(x) != 1:
            raise ConversionError(f"framedelta models take one input, got {len(x)}")
        x = x[0]
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ConversionError(f"example_input must be a tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] != 1 or x.dtype != torch.float32:
        raise ConversionError(f"example_input must be a (1, C, H, W) float32 tensor, got "
                              f"shape {tuple(x.shape)} dtype {x.dtype}")
    return x


def export(model, example_input):
    """An ExportedProgram of core aten ops (run_decompositions applied)."""
    if isinstance(model, torch.export.ExportedProgram):
        ep = model
    elif isinstance(model, torch.nn.Module):
        x = _check_example(example_input)
        # a forward that caches on the module (YOLOv8's Detect keeps its anchors) would
        # keep the exporter's fake tensors there: put every attribute back afterwards
        saved = [(m, dict(m.__dict__)) for m in model.modules()]
        try:
            ep = torch.export.export(model.eval(), (x,))
        except Exception as e:  # torch raises many kinds; all mean "cannot export"
            raise ConversionError(f"torch.export could not export "
                                  f"{type(model).__name__}: {type(e).__name__}: {e}") from e
        finally:
            for m, attrs in saved:
                m.__dict__.clear()
                m.__dict__.update(attrs)
    else:
        raise ConversionError(f"expected a torch.nn.Module or an ExportedProgram, got "
                              f"{type(model).__name__}")
    return ep.run_decompositions()


def _user_input(ep, example_input):
    inputs = [s.arg.name for s in ep.graph_signature.input_specs
              if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(inputs) != 1:
        raise ConversionError(f"framedelta models take one input tensor, the program "
                              f"takes {len(inputs)}")
    fx = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    val = fx.meta.get("val")
    shape = _static_shape(fx)
    if shape is None or len(shape) != 4 or shape[0] != 1 or val.dtype != torch.float32:
        raise ConversionError(f"the model input must be a (1, C, H, W) float32 tensor, got "
                              f"shape {shape} dtype {getattr(val, 'dtype', None)}")
    if example_input is not None and tuple(_check_example(example_input).shape) != shape:
        raise ConversionError(f"example_input has shape "
                              f"{tuple(_check_example(example_input).shape)} but the "
                              f"ExportedProgram was exported for {shape}")
    return fx


_TRAINING_OPS = ("aten._native_batch_norm_legit_functional.default",
                 "aten._native_batch_norm_legit.default", "aten.native_dropout.default")


def _check_eval_mode(ep):
    """A program exported in training mode mutates buffers (BN statistics) and draws
    dropout masks; say so instead of naming the training-only op."""
    kinds = {s.kind for s in ep.graph_signature.output_specs}
    ops = {target_name(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    if kinds - {torch.export.graph_signature.OutputKind.USER_OUTPUT} or ops & set(_TRAINING_OPS):
        raise ConversionError("the program was exported in training mode (it updates buffers "
                              "such as BatchNorm statistics, or applies dropout): export "
                              "model.eval() instead")


def _no_rule_error(ep, constant=frozenset()):
    """UnsupportedOperatorError for the first op without a rule (constant nodes are
    folded and need none), listing the others."""
    missing = {}
    for fx in ep.graph.nodes:
        if (fx.op == "call_function" and fx not in constant
                and target_name(fx.target) not in RULES):
            missing.setdefault(target_name(fx.target), fx)
    if not missing:
        return None
    # name first an op that says what the model did (F.pad(mode='reflect') -> index)
    hinted = [op for op in missing if op in NO_RULE_HINTS]
    if hinted:
        missing = {hinted[0]: missing.pop(hinted[0]), **missing}
    (op, fx), *others = missing.items()
    detail = "framedelta has no converter rule for it"
    if others:
        names = ", ".join(o for o, _ in others)
        detail += f" (nor for {names}, which the model also uses)"
    if op in NO_RULE_HINTS:
        detail += ": " + NO_RULE_HINTS[op]
    return UnsupportedOperatorError(op, describe(fx), detail)


def lower(ep, example_input=None, preprocess=None):
    """The framedelta graph of an ExportedProgram of core aten ops, before the passes."""
    _check_eval_mode(ep)
    user_input = _user_input(ep, example_input)
    constant = _constant_nodes(ep, user_input)
    err = _no_rule_error(ep, constant)
    if err is not None:
        raise err
    consts = _constants(ep)
    ctx = Lowering()
    env, values = {}, {}      # values: the torch value of each constant node
    outputs = []
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            if fx is user_input:
                env[fx] = ctx.add_input(fx)
            else:
                values[fx] = consts.get(fx.name)
                env[fx] = _as_numpy(values[fx])
        elif fx in constant:
            values[fx] = _fold(fx, values)
            env[fx] = _as_numpy(values[fx])
        elif fx.op == "call_function":
            ctx.begin(fx)
            env[fx] = RULES[ctx.op].fn(ctx, bind_args(fx, env))
        elif fx.op == "output":
            ctx.begin(fx)
            outputs = [env[n] if isinstance(n, torch.fx.Node) else n
                       for n in _flatten_outputs(fx.args[0])]
        else:
            raise ConversionError(f"unexpected FX node {fx.name} ({fx.op}) in the exported "
                                  "program")
    graph = Graph(InputSpec(user_input.name, ctx.shapes[user_input.name],
                            preprocess=preprocess), ctx.nodes, [],
                  producer=f"framedelta.converters (torch {torch.__version__})")
    for i, out in enumerate(outputs):
        if not isinstance(out, Data):
            raise ConversionError(f"output {i} of the model is not a tensor computed from the "
                                  f"input (got {type(out).__name__})")
        name = out.name
        if name == user_input.name or name in graph.outputs:
            # the format needs each output produced by a node, and listed once
            name = ctx.emit("identity", [name], shape=ctx.shapes[name],
                            name=f"{name}_output").name
        graph.outputs.append(name)
    return graph, ctx.origins


def _flatten_outputs(args):
    out = []
    torch.fx.node.map_aggregate(args, lambda v: out.append(v))
    return out


def convert(model, example_input=None, path=None, *, preprocess=None):
    """Convert an eval ``nn.Module`` (with its example input, (1, C, H, W) float32) or an
    ``ExportedProgram`` to a framedelta Graph; write the model file when ``path`` is
    given. ``preprocess`` (formats.Preprocess) declares uint8 camera-frame input.

    Raises UnsupportedOperatorError for an op or argument value framedelta cannot
    express, ConversionError for anything else that stops the conversion.
    """
    ep = export(model, example_input)
    graph, origins = lower(ep, example_input, preprocess)
    return finish(graph, origins, path)
