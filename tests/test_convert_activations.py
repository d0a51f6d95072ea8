"""Converter tests for the activations and softmax: every spelling torch.export gives
of each op (F.silu, nn.SiLU, x * torch.sigmoid(x), the relu6 forms of hardswish, ...)
exported, converted, run by the engine and compared with torch; which format ops the
graph holds (a fused spelling is one node); spellings that must not fuse still run
correctly; and values framedelta cannot express fail naming the aten op.
"""

import numpy as np
import pytest

from framedelta.engine.model import Model
from framedelta.engine.registry import REGISTRY
from framedelta.errors import UnsupportedOperatorError
from framedelta.formats.graph import check_graph

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from framedelta.converters import convert, passes  # noqa: E402
from framedelta.converters.torch_export import lower  # noqa: E402

SHAPE = (1, 4, 7, 9)


# Each test module has its own Net: torch records the forward's line, not the lambda's,
# so an error names this file only when forward is written here.
class Net(nn.Module):
    """forward(x) = fn(self, x), with ``mods`` as submodules."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for name, m in mods.items():
            setattr(self, name, m)

    def forward(self, x):
        return self.fn(self, x)


def _input(shape=SHAPE, seed=0):
    torch.manual_seed(seed)
    # wide enough for every piece of hardswish (below -3, -3..3, above 3)
    return torch.randn(shape) * 3


def assert_close(y, ref):
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * (1 + np.nanmax(np.abs(ref))))


def check(model, ops, shape=SHAPE, seed=0):
    """Convert, assert the graph's ops are ``ops`` (in order), run, compare with torch."""
    model.eval()
    x = _input(shape, seed)
    graph = convert(model, x)
    assert [n.op for n in graph.nodes] == ops
    with torch.no_grad():
        ref = model(x)
    refs = ref if isinstance(ref, tuple) else (ref,)
    ys = Model(graph).run(x.numpy())
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert len(ys) == len(refs)
    for y, r in zip(ys, refs):
        assert_close(y, r.numpy())
    return graph


def fn(f):
    return Net(lambda self, x: f(x))


# --- one op per aten spelling ----------------------------------------------------------

@pytest.mark.parametrize("model, slope", [
    (fn(lambda x: F.leaky_relu(x, 0.2)), 0.2),
    (fn(F.leaky_relu), 0.01),
    (nn.LeakyReLU(), 0.01),
    (nn.LeakyReLU(-0.3), -0.3),
], ids=["F", "F-default", "module", "negative"])
def test_leaky_relu(model, slope):
    g = check(model, ["leaky_relu"])
    assert g.nodes[0].attrs["negative_slope"] == pytest.approx(slope)


@pytest.mark.parametrize("act, op", [
    (nn.LeakyReLU(0.1, inplace=True), "leaky_relu"),
    (nn.Hardsigmoid(inplace=True), "hardsigmoid"),
], ids=["leaky_relu", "hardsigmoid"])
def test_inplace_after_conv(act, op):
    check(nn.Sequential(nn.Conv2d(4, 5, 3), act), ["conv2d", op])


@pytest.mark.parametrize("act, op", [
    (nn.SiLU(inplace=True), "silu"), (nn.Hardswish(inplace=True), "hardswish"),
    (nn.Sigmoid(), "sigmoid"),
], ids=["silu", "hardswish", "sigmoid"])
@pytest.mark.parametrize("conv", [nn.Conv2d(4, 5, 3), nn.Conv2d(4, 4, 3, groups=4),
                                  nn.ConvTranspose2d(4, 5, 3, stride=2)],
                         ids=["conv", "depthwise", "transposed"])
def test_activation_fused_into_conv(act, op, conv):
    """silu, hardswish and sigmoid after a conv become its ``activation``, with the bits
    of the conv followed by the standalone op (dense and on a subset of positions)."""
    g = check(nn.Sequential(conv, act), ["conv_transpose2d" if isinstance(
        conv, nn.ConvTranspose2d) else "conv2d"])
    assert g.nodes[0].attrs["activation"] == op
    x = _input().numpy()
    plain = Model(convert(nn.Sequential(conv).eval(), torch.from_numpy(x))).run(x)
    standalone = REGISTRY[op].reference([plain], {}, {})
    fused = Model(g).run(x)
    assert_close(fused, standalone)
    # the engine's own standalone kernel on the conv's output: the same bits
    fn = torch.sigmoid if op == "sigmoid" else getattr(F, op)
    act_graph = convert(Net(lambda s, t: fn(t)).eval(), torch.from_numpy(plain))
    np.testing.assert_array_equal(fused, Model(act_graph).run(plain))


def _prelu(n, seed=3):
    m = nn.PReLU(n)
    with torch.no_grad():
        m.weight.copy_(torch.randn(n, generator=torch.Generator().manual_seed(seed)))
    return m


def test_prelu_per_channel():
    g = check(_prelu(SHAPE[1]), ["prelu"])
    node = g.nodes[0]
    assert node.attrs["num_parameters"] == SHAPE[1]
    np.testing.assert_array_equal(node.weights["slope"], _prelu(SHAPE[1]).weight.detach())


def test_prelu_shared_slope_is_a_leaky_relu():
    m = _prelu(1)
    g = check(m, ["leaky_relu"])
    assert g.nodes[0].attrs["negative_slope"] == float(m.weight.detach()[0])


def test_prelu_of_a_vector():
    check(Net(lambda s, x: s.p(x.mean((2, 3))), p=_prelu(SHAPE[1])),
          ["global_avg_pool", "prelu"])


def test_prelu_after_conv():
    check(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), _prelu(6)), ["conv2d", "prelu"])


@pytest.mark.parametrize("slope", [0.1, -2.0])
def test_where_spelled_leaky_relu(slope):
    check(fn(lambda x: torch.where(x > 0, x, x * slope)), ["leaky_relu"])
    check(fn(lambda x: torch.where(x > 0, x, slope * x)), ["leaky_relu"])


@pytest.mark.parametrize("model, op", [
    (fn(torch.sigmoid), "sigmoid"), (nn.Sigmoid(), "sigmoid"), (fn(F.sigmoid), "sigmoid"),
    (fn(torch.tanh), "tanh"), (nn.Tanh(), "tanh"),
], ids=["sigmoid", "Sigmoid", "F.sigmoid", "tanh", "Tanh"])
def test_sigmoid_tanh(model, op):
    check(model, [op])


@pytest.mark.parametrize("model", [
    fn(F.silu), nn.SiLU(), fn(lambda x: x * torch.sigmoid(x)),
    fn(lambda x: torch.sigmoid(x) * x), fn(lambda x: x * x.sigmoid()),
], ids=["F", "module", "x*sigmoid", "sigmoid*x", "method"])
def test_silu(model):
    check(model, ["silu"])


HARDSWISH = [
    fn(F.hardswish), nn.Hardswish(), fn(lambda x: x * F.relu6(x + 3) / 6),
    fn(lambda x: F.relu6(x + 3) * x / 6), fn(lambda x: x * F.hardtanh(x + 3, 0, 6) / 6),
    fn(lambda x: x * torch.clamp(x + 3, 0, 6) / 6), fn(lambda x: x * F.relu6(x + 3) * (1 / 6)),
    fn(lambda x: x * F.relu6(3 + x) / 6), fn(lambda x: x * (F.relu6(x + 3) / 6)),
    fn(lambda x: x * F.hardsigmoid(x)), fn(lambda x: x * torch.clamp(x + 3, max=6).relu() / 6),
]


@pytest.mark.parametrize("model", HARDSWISH, ids=[
    "F", "module", "x*relu6/6", "relu6*x/6", "hardtanh", "clamp", "times-sixth", "3+x",
    "x*(relu6/6)", "x*hardsigmoid", "clamp-then-relu"])
def test_hardswish(model):
    check(model, ["hardswish"])


HARDSIGMOID = [
    fn(F.hardsigmoid), nn.Hardsigmoid(), fn(lambda x: F.relu6(x + 3) / 6),
    fn(lambda x: F.relu6(x + 3) * (1 / 6)), fn(lambda x: torch.clamp(x + 3, 0, 6) / 6),
    fn(lambda x: F.hardtanh(x + 3, 0.0, 6.0) / 6),
]


@pytest.mark.parametrize("model", HARDSIGMOID, ids=[
    "F", "module", "relu6/6", "relu6*sixth", "clamp", "hardtanh"])
def test_hardsigmoid(model):
    check(model, ["hardsigmoid"])


def test_mobilenet_v3_block_fuses_around_convs():
    """conv -> hardswish fuses (the conv's output has no other reader; the hardswish's
    has two), and squeeze-excitation's conv -> hardsigmoid gate stays a node."""
    block = Net(lambda s, x: (lambda h: h * s.gate(s.fc(h.mean((2, 3), keepdim=True))))(
        s.act(s.conv(x))), conv=nn.Conv2d(4, 8, 3, padding=1), act=nn.Hardswish(),
        fc=nn.Conv2d(8, 8, 1), gate=nn.Hardsigmoid())
    g = check(block, ["conv2d", "global_avg_pool", "conv2d", "hardsigmoid", "mul"])
    assert g.nodes[0].attrs["activation"] == "hardswish"
    assert g.nodes[2].attrs.get("activation", "none") == "none"


@pytest.mark.parametrize("model, approximate", [
    (fn(F.gelu), "none"), (nn.GELU(), "none"), (nn.GELU("tanh"), "tanh"),
    (fn(lambda x: F.gelu(x, approximate="tanh")), "tanh"),
], ids=["F", "module", "module-tanh", "F-tanh"])
def test_gelu(model, approximate):
    g = check(model, ["gelu"])
    assert g.nodes[0].attrs["approximate"] == approximate


@pytest.mark.parametrize("model, op, axis", [
    (fn(lambda x: F.softmax(x, 1)), "softmax", 1), (nn.Softmax(dim=1), "softmax", 1),
    (fn(lambda x: torch.softmax(x, dim=1)), "softmax", 1),
    (fn(lambda x: F.softmax(x, -1)), "softmax", 3), (fn(lambda x: x.softmax(2)), "softmax", 2),
    (fn(lambda x: F.log_softmax(x, 1)), "log_softmax", 1),
    (nn.LogSoftmax(dim=-1), "log_softmax", 3),
], ids=["F-1", "module", "torch", "F-last", "method-2", "log-1", "log-last"])
def test_softmax_of_an_image(model, op, axis):
    g = check(model, [op])
    assert g.nodes[0].attrs["axis"] == axis


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_of_a_vector(op):
    check(fn(lambda x: getattr(F, op)(x.mean((2, 3)), 1)), ["global_avg_pool", op])


@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax_of_a_detection_head(dim):
    """(1, A, K) scores: softmax over the classes (last axis) or the anchors."""
    g = check(fn(lambda x: F.softmax(x.reshape(1, 21, 12), dim)), ["reshape", "softmax"])
    assert g.nodes[1].attrs["axis"] == (2 if dim == -1 else 1)


@pytest.mark.parametrize("model", [
    fn(lambda x: x ** 3), fn(lambda x: x ** 0.5), fn(lambda x: torch.pow(x, -1)),
    fn(lambda x: x ** 2), fn(torch.square), fn(lambda x: x ** 1.5), fn(torch.sqrt),
    fn(torch.rsqrt), fn(lambda x: x ** -2), fn(lambda x: x ** 0),
], ids=["cube", "half", "inverse", "square", "torch.square", "1.5", "sqrt", "rsqrt",
        "inverse-square", "zero"])
def test_pow(model):
    g = check(model, ["pow"])
    assert isinstance(g.nodes[0].attrs["exponent"], float)


def test_pow_in_a_yolo_head():
    """(x.sigmoid() * 2) ** 2: the box-size decoding of YOLOv5."""
    check(fn(lambda x: (x.sigmoid() * 2) ** 2), ["sigmoid", "mul", "pow"])


# --- programs not decomposed: the one-op aten spellings --------------------------------

@pytest.mark.parametrize("model, ops", [
    (fn(F.silu), ["silu"]), (fn(F.hardswish), ["hardswish"]),
    (fn(F.hardsigmoid), ["hardsigmoid"]), (_prelu(SHAPE[1]), ["prelu"]),
    (_prelu(1), ["leaky_relu"]), (fn(lambda x: torch.softmax(x, -1)), ["softmax"]),
    (fn(lambda x: torch.log_softmax(x, 1)), ["log_softmax"]),
], ids=["silu", "hardswish", "hardsigmoid", "prelu", "prelu-1", "softmax", "log_softmax"])
def test_undecomposed_spellings(model, ops):
    x = _input()
    ep = torch.export.export(model.eval(), (x,)).run_decompositions({})
    graph, _ = lower(ep, x)
    passes.run_passes(graph)
    check_graph(graph)
    assert [n.op for n in graph.nodes] == ops
    with torch.no_grad():
        assert_close(Model(graph).run(x.numpy()), model(x).numpy())


# --- what must not fuse ----------------------------------------------------------------

@pytest.mark.parametrize("model, ops", [
    (fn(lambda x: (lambda s: x * s + s)(torch.sigmoid(x))), ["sigmoid", "mul", "add"]),
    (fn(lambda x: (lambda s: (x * s, s))(torch.sigmoid(x))), ["sigmoid", "mul"]),
    (fn(lambda x: torch.sigmoid(x) * torch.tanh(x)), ["sigmoid", "tanh", "mul"]),
    (fn(lambda x: (lambda r: (x * r / 6, r))(F.relu6(x + 3))), ["add", "clamp", "mul", "div"]),
    (fn(lambda x: (lambda a: (F.relu6(a) / 6) * a)(x + 3)),
     ["add", "clamp", "div", "mul"]),
    (fn(lambda x: F.relu6(x + 3) / 5), ["add", "clamp", "div"]),
    (fn(lambda x: F.relu6(x + 2) * x / 6), ["add", "clamp", "mul", "div"]),
    (fn(lambda x: (lambda h: (x * h, h))(F.hardsigmoid(x))), ["hardsigmoid", "mul"]),
], ids=["sigmoid-read-twice", "sigmoid-returned", "other-factor", "relu6-returned",
        "not-x-times", "divided-by-5", "x-plus-2", "hardsigmoid-returned"])
def test_patterns_that_cannot_fuse_still_convert(model, ops):
    check(model, ops)


class _Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.register_buffer("c", torch.full(SHAPE, value))


def test_where_of_something_else_is_reported():
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.gt\.Scalar.*where\(x > 0"):
        convert(fn(lambda x: torch.where(x > 0.5, x, x * 0.1)), _input())
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.gt\.Scalar.*where\(x > 0"):
        convert(fn(lambda x: torch.where(x > 0, x, torch.sigmoid(x))), _input())
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.where\.self.*constant"):
        convert(Net(lambda s, x: torch.where(x > 0, x, s.floor.c), floor=_Const(0.5)), _input())


def test_unsupported_values_name_the_op():
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.leaky_relu\.default.*finite"):
        convert(fn(lambda x: F.leaky_relu(x, float("inf"))), _input())
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.pow\.Tensor_Tensor"):
        convert(fn(lambda x: x ** x), _input())


# --- converted models stream: incremental equals dense ---------------------------------

def test_converted_activations_stream_equal_to_dense():
    model = Net(lambda s, x: (
        F.softmax(s.c2(F.silu(s.c1(x))), 1),
        F.log_softmax(F.hardswish(s.c1(x)), 2),
        F.gelu(s.c2(F.leaky_relu(s.c1(x), 0.1)), approximate="tanh") ** 2),
        c1=nn.Conv2d(4, 6, 3, padding=1), c2=_conv_prelu())
    model.eval()
    x = _input((1, 4, 16, 20))
    graph = convert(model, x)
    m = Model(graph, n_threads=2)
    s = m.stream()
    rng = np.random.default_rng(0)
    frame = x.numpy()
    for _ in range(4):
        frame = frame.copy()
        y0, x0 = rng.integers(0, 12), rng.integers(0, 16)
        frame[:, :, y0:y0 + 3, x0:x0 + 4] += rng.standard_normal((1, 4, 3, 4)).astype(
            np.float32)
        for a, b in zip(s.step(frame), m.run(frame)):
            np.testing.assert_array_equal(a, b)
    assert 0 < s.last_stats.macs < s.last_stats.dense_macs


def _conv_prelu():
    return nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), _prelu(5))


def test_every_op_of_the_family_survives_the_model_file(tmp_path):
    import framedelta
    model = Net(lambda s, x: (
        F.log_softmax(F.softmax(F.gelu(F.hardsigmoid(F.hardswish(F.silu(
            torch.tanh(torch.sigmoid(F.leaky_relu(s.p(x), 0.3)) * 4))) * 5),
            approximate="tanh") * 9, 1) ** 1.5, 3)), p=_prelu(SHAPE[1]))
    x = _input()
    graph = convert(model.eval(), x, tmp_path / "act.h5")
    ops = ["prelu", "leaky_relu", "sigmoid", "mul", "tanh", "silu", "hardswish", "mul",
           "hardsigmoid", "gelu", "mul", "softmax", "pow", "log_softmax"]
    assert [n.op for n in graph.nodes] == ops
    loaded = framedelta.load(tmp_path / "act.h5")
    assert [n.attrs for n in loaded.graph.nodes] == [n.attrs for n in graph.nodes]
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.isfinite(ref).all()
    assert_close(loaded.run(x.numpy()), ref)
