"""Constant folding in the torch converter, and sums over dims.

A node that reads only constants (parameters, buffers, literals, shapes known at
export) is evaluated with torch at conversion time; whatever reads the input still
goes through the rules, so an op the engine lacks is still reported with its module
and source line.
"""

from pathlib import Path

import pytest
from conftest import close_to_torch

from framedelta.engine.reference import run_graph
from framedelta.errors import UnsupportedOperatorError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from framedelta.converters import convert  # noqa: E402

THIS_FILE = Path(__file__).name


class Net(nn.Module):
    """forward(x) = fn(self, x), with a 3 -> 4 conv ``c``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("k", torch.linspace(-1, 1, 4).reshape(1, 4, 1, 1))

    def forward(self, x):
        return self.fn(self, x)


def check(fn, shape=(1, 3, 8, 10)):
    net = Net(fn).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = convert(net, x)
    with torch.no_grad():
        ref = net(x)
    close_to_torch(run_graph(graph, x.numpy())[0], ref.numpy())
    return [n.op for n in graph.nodes]


def grid(m, x):
    """Anchors built at forward time from the feature shape, as ultralytics'
    make_anchors does: arange, meshgrid, stack, full, a dtype cast."""
    y = m.c(x)
    h, w = y.shape[2:]
    sx = torch.arange(end=w, dtype=y.dtype) + 0.5
    sy = torch.arange(end=h, dtype=y.dtype) + 0.5
    sy, sx = torch.meshgrid(sy, sx, indexing="ij")
    points = torch.stack((sx, sy), 0).unsqueeze(0)
    stride = torch.full((1, 1, h, w), 8, dtype=torch.int64).to(y.dtype)
    return torch.cat((y[:, :2] + points, y[:, 2:] * stride), 1)


def test_anchor_grid_built_at_forward_time_folds_to_constants():
    ops = check(grid)
    assert ops == ["conv2d", "slice", "add", "slice", "mul", "concat"]


def test_unsupported_ops_on_constants_fold():
    # atan and cumsum have no rule; on a buffer they are evaluated at conversion time
    assert check(lambda m, x: m.c(x) * torch.cumsum(torch.atan(m.k), 1)) == ["conv2d", "mul"]


def test_constant_never_read_leaves_no_node():
    assert check(lambda m, x: (torch.exp(m.k), m.c(x))[1]) == ["conv2d"]


def test_op_on_the_input_is_still_reported_where_it_is():
    with pytest.raises(UnsupportedOperatorError) as info:
        check(lambda m, x: torch.atan(m.c(x)) + torch.atan(m.k))
    assert info.value.op == "aten.atan.default" and THIS_FILE in str(info.value)


# --- sum over dims --------------------------------------------------------------------

@pytest.mark.parametrize("fn, want", [
    (lambda m, x: torch.stack([m.c(x), m.c(x) * m.k, m.c(x) + 1]).sum(0), "add"),
    (lambda m, x: torch.stack([x, x * 2], 2).sum(2, keepdim=True), "add"),
    (lambda m, x: m.c(x).sum(1), "conv2d"),
    (lambda m, x: m.c(x).sum(1, keepdim=True), "conv2d"),
    (lambda m, x: m.c(x).sum((2, 3)), "linear"),
    (lambda m, x: m.c(x).sum(-1, keepdim=True), "linear"),
], ids=["stack0", "stack2_keepdim", "channels", "channels_keepdim", "hw", "last_keepdim"])
def test_sum_over_dims(fn, want):
    ops = check(fn)
    assert want in ops and "concat" not in ops


def test_stack_along_the_batch_without_a_sum_is_reported():
    with pytest.raises(UnsupportedOperatorError, match="dim 0") as info:
        check(lambda m, x: torch.stack([x, x * 2], 0) + 1)
    assert info.value.op == "aten.cat.default" and THIS_FILE in str(info.value)
