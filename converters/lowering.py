"""What every converter's rules see as ``ctx``: the graph built so far and the node
being lowered. The torch (torch_export.Lowering) and ONNX (onnx.importer.Lowering)
front ends subclass it and say where a node came from; nothing here imports either.
"""

import numpy as np

from framedelta.errors import ConversionError, UnsupportedOperatorError
from framedelta.formats.graph import Node

from .rules import Data


class GraphBuilder:
    """Nodes, tensor shapes (torch layout) and node origins, with unique names.

    A subclass provides ``op`` (the source op being lowered), ``where`` (where it came
    from, for errors), ``source`` (what the model file stores of that), ``node_name``
    (the base name of the nodes it emits) and ``out_shape`` (its output's shape).
    """

    op = None
    where = None
    source = ""
    node_name = "node"
    short_names = {}    # prefixes of node names to shorten

    def __init__(self):
        self.nodes = []
        self.shapes = {}      # tensor name -> shape (torch layout)
        self.origins = {}     # node name -> (source op, where with full path)
        self._names = set()

    @property
    def out_shape(self):
        raise NotImplementedError

    def unsupported(self, detail, op=None):
        return UnsupportedOperatorError(op or self.op, self.where, detail)

    # reading arguments
    def data(self, value, arg):
        """The graph tensor name of an argument that must be computed from the input."""
        if isinstance(value, Data):
            return value.name
        kind = "a constant tensor" if isinstance(value, np.ndarray) else repr(value)
        raise self.unsupported(f"argument {arg!r} is {kind}, framedelta needs a tensor "
                               "computed from the input here")

    def const(self, value, arg):
        """The numpy value of an argument that must be a constant of the model."""
        if isinstance(value, np.ndarray):
            return value
        what = "computed from the input" if isinstance(value, Data) else f"{value!r}"
        raise ConversionError(
            f"{self.op} (from {self.where or 'an unknown place'}): argument {arg!r} must be "
            f"a constant tensor (a parameter, buffer or constant of the model), but it is "
            f"{what}")

    def shape(self, name):
        return self.shapes[name]

    # building the graph
    def unique(self, base):
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def emit(self, op, inputs, attrs=None, weights=None, shape=None, name=None):
        """Append a node computing ``op``; returns its output as Data."""
        base = name or self.node_name
        for long, short in self.short_names.items():
            if base.startswith(long):
                base = short + base[len(long):]
        name = self.unique(base)
        weights = {k: np.ascontiguousarray(v, dtype=np.float32)
                   for k, v in (weights or {}).items()}
        self.nodes.append(Node(name, op, list(inputs), [name], dict(attrs or {}), weights,
                               self.source or ""))
        self.shapes[name] = tuple(shape or self.out_shape)
        self.origins[name] = (self.op, self.where)
        return Data(name)


def finish(graph, origins, out_path=None, source=""):
    """Run the graph passes, report pseudo-ops no pass could fold (with the source op
    and where it came from), check the graph and write the model file when
    ``out_path`` is given. ``source`` prefixes a format-rule error (the file)."""
    from framedelta.errors import ModelFormatError
    from framedelta.formats.graph import check_graph

    from . import passes
    passes.run_passes(graph)
    for node in passes.leftover_pseudo_nodes(graph):
        op, where = origins[node.name]
        raise UnsupportedOperatorError(op, where, passes.PSEUDO_OPS.get(
            node.op, f"its intermediate form {node.op!r} did not fuse into a format op"))
    try:
        check_graph(graph)
    except ModelFormatError as e:
        op, where = origins.get(e.node, (None, None))
        raise ConversionError(f"{source}the converted graph breaks a format rule at "
                              f"{op or 'graph level'} (from {where or 'unknown'}): {e}") from e
    if out_path is not None:
        from framedelta.formats import write_model
        write_model(graph, out_path)
    return graph
