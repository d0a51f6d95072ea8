"""The format rules of pad, slice, group_norm and concat on any axis: a graph holding
them round-trips through a file bit for bit, and each MUST of their SPEC sections is
checked with the field it names (hostile files)."""

import numpy as np
import pytest

from framedelta.engine.model import Model
from framedelta.engine.reference import run_graph
from framedelta.errors import ModelFormatError
from framedelta.formats import Graph, InputSpec, Node, check_graph, read_model, write_model
from framedelta.formats.ops import MAX_DIM


def _graph(**changes):
    """x (1, 6, 7, 9) -> pad -> slice (C, H, W) -> concat (H) -> group_norm."""
    rng = np.random.default_rng(0)
    nodes = {
        "pad": Node("pad", "pad", ["x"], ["p"], {"pads": (1, 2, 0, 3), "value": -1.5}),
        "sc": Node("sc", "slice", ["p"], ["sc"], {"axis": 1, "start": 1, "end": 6, "step": 2}),
        "sh": Node("sh", "slice", ["sc"], ["sh"], {"axis": 2, "start": 2, "end": 8}),
        "sw": Node("sw", "slice", ["sc"], ["sw"], {"axis": 3, "start": 0, "end": 14,
                                                   "step": 3}),
        "cat": Node("cat", "concat", ["sc", "sh"], ["k"], {"axis": 2}),
        "gn": Node("gn", "group_norm", ["k"], ["g"], {"num_groups": 3, "eps": 1e-3},
                   {"weight": rng.standard_normal(3).astype(np.float32),
                    "bias": rng.standard_normal(3).astype(np.float32)}),
    }
    for name, change in changes.items():
        node = nodes[name]
        for k, v in change.items():
            if k == "inputs":
                node.inputs = v
            else:
                node.attrs[k] = v
    return Graph(InputSpec("x", (1, 6, 7, 9)), list(nodes.values()), ["g", "sw"], "test")


def test_round_trip_and_run(tmp_path):
    g = _graph()
    shapes = check_graph(g)
    assert shapes["p"] == (1, 6, 8, 14) and shapes["sc"] == (1, 3, 8, 14)
    assert shapes["sh"] == (1, 3, 6, 14) and shapes["sw"] == (1, 3, 8, 5)
    assert shapes["k"] == (1, 3, 14, 14)
    path = tmp_path / "m.h5"
    write_model(g, path)
    back = read_model(path)
    assert [(n.op, n.attrs) for n in back.nodes] == [(n.op, n.attrs) for n in g.nodes]
    x = np.random.default_rng(1).standard_normal((1, 6, 7, 9)).astype(np.float32)
    for y, ref in zip(Model(back).run(x), run_graph(g, x)):
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes, node, field", [
    ({"pad": {"pads": (0, 0, -1, 0)}}, "pad", "attrs/pads"),
    ({"pad": {"pads": (0, 0, 0)}}, "pad", "attrs/pads"),
    ({"pad": {"value": float("nan")}}, "pad", "attrs/value"),
    ({"pad": {"pads": (MAX_DIM, 0, 0, 0)}}, "pad", "outputs"),
    ({"sc": {"axis": 4}}, "sc", "attrs/axis"),
    ({"sc": {"axis": 0}}, "sc", "attrs/axis"),
    ({"sc": {"end": 7}}, "sc", "attrs/end"),
    ({"sc": {"start": 6}}, "sc", "attrs/start"),
    ({"sc": {"step": 0}}, "sc", "attrs/step"),
    ({"sh": {"start": -1}}, "sh", "attrs/start"),
    ({"gn": {"num_groups": 2}}, "gn", "attrs/num_groups"),
    ({"gn": {"eps": -1.0}}, "gn", "attrs/eps"),
    ({"gn": {"inputs": ["sw"]}}, "gn", None),           # fine shape-wise: a control
    ({"cat": {"inputs": ["sc", "sw"]}}, "cat", "input[1]"),
    ({"cat": {"axis": 4}}, "cat", "attrs/axis"),
    ({"cat": {"axis": 0}}, "cat", "attrs/axis"),
], ids=["pad-negative", "pad-length", "pad-nan", "pad-huge", "slice-axis-rank",
        "slice-axis-batch", "slice-end", "slice-empty", "slice-step", "slice-start",
        "gn-groups", "gn-eps", "gn-control", "cat-shapes", "cat-axis-rank", "cat-batch"])
def test_bad_attributes_name_node_and_field(changes, node, field):
    g = _graph(**changes)
    if field is None:
        check_graph(g)
        return
    with pytest.raises(ModelFormatError) as info:
        check_graph(g)
    assert (info.value.node, info.value.field) == (node, field)


def test_pad_and_group_norm_need_images():
    g = Graph(InputSpec("x", (1, 4, 3, 3)), [
        Node("f", "reshape", ["x"], ["f"], {"shape": (1, 4, 9)}),
        Node("pad", "pad", ["f"], ["p"], {"pads": (1, 1, 1, 1)})], ["p"])
    with pytest.raises(ModelFormatError) as info:
        check_graph(g)
    assert (info.value.node, info.value.field) == ("pad", "input[0]")
    g.nodes[1] = Node("gn", "group_norm", ["f"], ["p"], {"num_groups": 2},
                      {"weight": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)})
    with pytest.raises(ModelFormatError) as info:
        check_graph(g)
    assert (info.value.node, info.value.field) == ("gn", "input[0]")
