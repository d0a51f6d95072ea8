"""Broadcasting arithmetic (add, sub, mul, div) from every aten spelling: converted,
run by the engine (dense and incremental) and by the references, compared with torch."""

import numpy as np
import pytest
from conftest import close_to_torch
from test_converter import Net, check, ops

from framedelta.engine.model import Model
from framedelta.errors import UnsupportedOperatorError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from framedelta.converters import convert  # noqa: E402


def engine_check(net, shape=(1, 3, 13, 17)):
    """check() on the references, then the engine's dense run and a stream on a moving
    rectangle, all against torch / the dense run."""
    g = check(net, shape)
    torch.manual_seed(0)
    x = torch.randn(shape)
    m = Model(g)
    with torch.no_grad():
        close_to_torch(m.run(x), net(x).numpy())
    s = m.stream(threshold=0.0)
    for t in range(3):
        x = x.clone()
        x[..., 2:5, 3 + 2 * t:6 + 2 * t] += 1.0
        np.testing.assert_array_equal(s.step(x), m.run(s.reference_input))
    return g


class SE(nn.Module):
    """Squeeze-excitation: a global branch multiplied back onto the spatial map."""

    def __init__(self, c=3, r=2):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.relu(self.fc2(torch.relu(self.fc1(s))))


@pytest.mark.parametrize("fn, want", [
    (lambda m, x: x + 1.5, ["add"]),
    (lambda m, x: 2 + x, ["add"]),
    (lambda m, x: x - 0.25, ["sub"]),
    (lambda m, x: 1 - x, ["sub"]),
    (lambda m, x: x * 3, ["mul"]),
    (lambda m, x: x / 3, ["div"]),
    (lambda m, x: 2 / (x * x + 1), ["mul", "add", "div", "mul"]),
    (lambda m, x: -x, ["mul"]),
    (lambda m, x: x * m.k, ["mul"]),                         # (1, C, 1, 1) buffer
    (lambda m, x: x - m.k + m.k2, ["sub", "add"]),
    (lambda m, x: m.k / (x * x + 1), ["mul", "add", "div"]),
    (lambda m, x: torch.add(x, m.c(x), alpha=0.5), ["conv2d", "mul", "add"]),
    (lambda m, x: torch.sub(x, m.c(x), alpha=2), ["conv2d", "mul", "sub"]),
    (lambda m, x: torch.rsub(x, 1.0), ["sub"]),
    (lambda m, x: x * m.att(x), ["conv2d", "mul"]),           # a (1, 1, H, W) map
    (lambda m, x: x - x.mean((2, 3), keepdim=True), ["global_avg_pool", "sub"]),
    (lambda m, x: m.c(x) / (m.c(x) * m.c(x) + 1), None),
    (lambda m, x: torch.div(x, 4.0, rounding_mode=None), ["div"]),
    (lambda m, x: x * (m.k * 2 + 1), ["mul"]),                # constants fold
], ids=["add_number", "radd", "sub_number", "rsub_number", "mul_number", "div_number",
        "rdiv", "neg", "mul_buffer", "buffers", "buffer_over_x", "add_alpha", "sub_alpha",
        "rsub", "attention_map", "sub_mean", "div_tensors", "div_mode_none", "folded"])
def test_arithmetic(fn, want):
    net = Net(fn, c=nn.Conv2d(3, 3, 3, padding=1), att=nn.Conv2d(3, 1, 1))
    net.register_buffer("k", torch.randn(1, 3, 1, 1))
    net.register_buffer("k2", torch.randn(3, 1, 17))      # lower rank: leading 1 added
    g = engine_check(net)
    if want is not None:
        assert ops(g) == want


def test_squeeze_excitation_runs_incrementally_equal_to_dense():
    g = engine_check(SE())
    assert ops(g) == ["global_avg_pool", "conv2d", "conv2d", "mul"]


def test_arithmetic_on_vectors():
    net = Net(lambda m, x: (m.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1)) - m.b) / 3,
              fc=nn.Linear(3, 5))
    net.register_buffer("b", torch.randn(5))
    g = engine_check(net)
    assert ops(g)[-2:] == ["sub", "div"]


@pytest.mark.parametrize("fn, op, detail", [
    (lambda m, x: x.reshape(1, 1, 3, 13, 17) + x, "aten.add.Tensor", "ranks"),
    (lambda m, x: torch.div(x, 2.0, rounding_mode="floor"), "aten.div.Tensor_mode",
     "rounding_mode"),
    (lambda m, x: x * m.mask, "aten.mul.Tensor", "dtype"),
], ids=["ranks", "floor_div", "bool_constant"])
def test_unsupported_arithmetic(fn, op, detail):
    net = Net(fn)
    net.register_buffer("mask", torch.ones(1, 3, 1, 1, dtype=torch.bool))
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(net, torch.randn(1, 3, 13, 17))
    assert info.value.op == op
    assert detail in str(info.value)
