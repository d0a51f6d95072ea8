"""Converter rules of the window family: transposed convolution, average pools.

Each test exports a small nn.Module, converts it, runs the graph on the engine and
compares with torch; it also asserts which format ops the graph holds. Unsupported
argument values raise UnsupportedOperatorError naming the aten op.
"""

import numpy as np
import pytest

from framedelta.engine.model import Model
from framedelta.errors import UnsupportedOperatorError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from framedelta.converters import convert  # noqa: E402
from framedelta.converters.zoo import randomize_bn  # noqa: E402


# Each test module has its own Net: torch records the forward's line, not the lambda's,
# so an error names this file only when forward is written here.
class Net(nn.Module):
    """forward(x) = fn(self, x), with ``mods`` as submodules (BN randomized)."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for name, m in mods.items():
            setattr(self, name, m)
        randomize_bn(self, seed=1)

    def forward(self, x):
        return self.fn(self, x)


def seq(*mods):
    return Net(lambda m, x: m.body(x), body=nn.Sequential(*mods))


def check(model, shape=(1, 4, 11, 13), seed=0, n_threads=2):
    """Convert, run on the engine, compare with torch; returns the graph."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.randn(shape)
    graph = convert(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    y = Model(graph, n_threads=n_threads).run(x.numpy())
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max()))
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


# --- conv_transpose2d -------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=(3, 4), stride=(3, 2), padding=(2, 1), output_padding=(2, 0)),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, dilation=2, output_padding=1),
    dict(kernel_size=1, stride=3),                    # phases that no tap reaches
    dict(kernel_size=4, stride=2, padding=5),         # crop past the kernel extent
    dict(kernel_size=3, stride=2, groups=2, bias=False),
], ids=["k2s2", "k3s2p1op1", "rect", "s1", "dil2", "k1s3", "crop", "groups_nobias"])
def test_conv_transpose2d(kw):
    g = check(seq(nn.ConvTranspose2d(4, 6, **kw)))
    assert ops(g) == ["conv_transpose2d"]
    a = g.nodes[0].attrs
    assert a["out_channels"] == 6 and a["groups"] == kw.get("groups", 1)


def test_conv_transpose2d_depthwise():
    g = check(seq(nn.ConvTranspose2d(4, 4, 3, 2, 1, 1, groups=4, bias=False)))
    assert ops(g) == ["conv_transpose2d"] and g.nodes[0].attrs["groups"] == 4
    assert (g.nodes[0].weights["bias"] == 0).all()


def test_functional_conv_transpose2d():
    w = torch.randn(4, 3, 3, 3)
    net = Net(lambda m, x: F.conv_transpose2d(x, m.w, stride=2, padding=1))
    net.register_buffer("w", w)
    g = check(net)
    assert ops(g) == ["conv_transpose2d"]


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose2d_batch_norm_relu_fold(groups):
    g = check(seq(nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, groups=groups, bias=False),
                  nn.BatchNorm2d(6), nn.ReLU()))
    assert ops(g) == ["conv_transpose2d"]
    assert g.nodes[0].attrs["activation"] == "relu"


def test_conv_transpose2d_relu6_fuses_as_clamp():
    g = check(seq(nn.ConvTranspose2d(4, 5, 2, 2), nn.BatchNorm2d(5), nn.ReLU6()))
    assert ops(g) == ["conv_transpose2d"]
    a = g.nodes[0].attrs
    assert (a["activation"], a["act_min"], a["act_max"]) == ("clamp", 0.0, 6.0)


def test_batch_norm_not_folded_when_conv_output_is_shared():
    net = Net(lambda m, x: (lambda y: m.bn(y) + y)(m.up(x)), up=nn.ConvTranspose2d(4, 4, 2, 2),
              bn=nn.BatchNorm2d(4))
    g = check(net, (1, 4, 5, 6))
    assert sorted(ops(g)) == ["add", "batch_norm", "conv_transpose2d"]


@pytest.mark.parametrize("cout, groups", [(19, 1), (7, 7)], ids=["dense", "depthwise"])
def test_conv_transpose2d_results_do_not_depend_on_threads_or_tiles(cout, groups):
    """Odd sizes so that every thread, tile edge and stride phase is hit."""
    from test_kernels import run_engine_node
    rng = np.random.default_rng(11)
    attrs = {"out_channels": cout, "kernel": (3, 4), "stride": (2, 3), "pads": (1, 2, 0, 1),
             "output_padding": (1, 0), "dilation": (1, 1), "groups": groups,
             "activation": "clamp", "act_min": -1.0, "act_max": 1.5}
    w = {"weight": rng.standard_normal((7, cout // groups, 3, 4)).astype(np.float32),
         "bias": rng.standard_normal(cout).astype(np.float32)}
    x = rng.standard_normal((1, 7, 97, 101)).astype(np.float32)
    shapes = [(1, 7, 97, 101)]
    base = run_engine_node("conv_transpose2d", attrs, shapes, w, [x], 1, None)
    for n_threads, m_tile in [(2, None), (3, 37), (2, 1)]:
        np.testing.assert_array_equal(
            run_engine_node("conv_transpose2d", attrs, shapes, w, [x], n_threads, m_tile),
            base)


# --- avg_pool2d -------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=True),
    dict(kernel_size=3, stride=1, padding=1, divisor_override=2),
    dict(kernel_size=2, stride=2, ceil_mode=True, divisor_override=-3),
], ids=["k2", "k3s2p1", "ceil", "ceil_nopad", "rect", "ceil_past_pad", "divisor",
        "divisor_neg"])
def test_avg_pool2d(kw):
    g = check(seq(nn.AvgPool2d(**kw)))
    assert ops(g) == ["avg_pool2d"]
    a = g.nodes[0].attrs
    assert a["ceil_mode"] == int(kw.get("ceil_mode", False))
    assert a["count_include_pad"] == int(kw.get("count_include_pad", True))
    assert a["divisor"] == kw.get("divisor_override", 0)


def test_avg_pool2d_matches_torch_bit_for_bit():
    """Sum in float32 in torch's order, one division: the same bits as torch."""
    torch.manual_seed(3)
    x = torch.randn(1, 5, 17, 19) * 100
    m = seq(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True))
    g = convert(m.eval(), x)
    np.testing.assert_array_equal(Model(g).run(x.numpy()), m(x).numpy())


def test_functional_avg_pool2d_default_stride():
    g = check(Net(lambda m, x: F.avg_pool2d(x, 3)))
    assert ops(g) == ["avg_pool2d"] and g.nodes[0].attrs["stride"] == (3, 3)


# --- adaptive pools -----------------------------------------------------------------

@pytest.mark.parametrize("size", [(2, 3), (5, 7), (None, 4), (3, None), (11, 13), 4,
                                  (20, 1)], ids=str)
def test_adaptive_avg_pool2d(size):
    g = check(seq(nn.AdaptiveAvgPool2d(size)))
    assert ops(g) == ["adaptive_avg_pool2d"]
    want = tuple(s or full for s, full in zip((size, size) if isinstance(size, int)
                                               else size, (11, 13)))
    assert g.nodes[0].attrs["size"] == want


def test_adaptive_avg_pool2d_matches_torch_bit_for_bit():
    torch.manual_seed(4)
    x = torch.randn(1, 5, 23, 19) * 100
    m = seq(nn.AdaptiveAvgPool2d((5, 7)))
    g = convert(m.eval(), x)
    np.testing.assert_array_equal(Model(g).run(x.numpy()), m(x).numpy())


def test_adaptive_avg_pool2d_1x1_stays_global():
    g = check(seq(nn.AdaptiveAvgPool2d(1)))
    assert ops(g) == ["global_avg_pool"]


@pytest.mark.parametrize("size", [(2, 3), (5, 7), 1, (None, 2)], ids=str)
def test_adaptive_max_pool2d(size):
    g = check(seq(nn.AdaptiveMaxPool2d(size)))
    assert ops(g) == ["adaptive_max_pool2d"]


def test_adaptive_max_pool2d_nan_propagates():
    m = seq(nn.AdaptiveMaxPool2d((2, 2)))
    x = torch.randn(1, 2, 6, 6)
    g = convert(m.eval(), x)
    x[0, 1, 4, 1] = float("nan")
    y = Model(g).run(x.numpy())
    ref = m(x).numpy()
    np.testing.assert_array_equal(y, ref)
    assert np.isnan(y[0, 1, 1, 0]) and np.isfinite(np.delete(y.reshape(-1), 6)).all()


# --- unsupported values -------------------------------------------------------------

@pytest.mark.parametrize("fn, op, detail", [
    # a (1, C, H*W) tensor is a (C, H, W) image to the 2-D pools: not supported
    (lambda m, x: F.avg_pool2d(x.flatten(2), 3), "aten.avg_pool2d.default", "(N, C, H, W)"),
    (lambda m, x: F.adaptive_avg_pool2d(x.flatten(2), 2), "aten._adaptive_avg_pool2d.default",
     "(N, C, H, W)"),
    (lambda m, x: F.adaptive_max_pool2d(x.flatten(2), 2), "aten.adaptive_max_pool2d.default",
     "(N, C, H, W)"),
    (lambda m, x: F.adaptive_max_pool2d(x, 2, return_indices=True)[1],
     "aten.adaptive_max_pool2d.default", "indices"),
    (lambda m, x: F.avg_pool2d(x, 2, divisor_override=2**40), "aten.avg_pool2d.default",
     "divisor_override"),
    (lambda m, x: m.up1(x.flatten(2)), "aten.convolution.default", "2-D"),
], ids=["avg_rank3", "adaptive_rank3", "adaptive_max_rank3", "adaptive_max_indices",
        "avg_divisor_range", "conv_transpose1d"])
def test_unsupported_argument_values(fn, op, detail):
    net = Net(fn, up1=nn.ConvTranspose1d(4, 4, 2, 2))
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(net.eval(), torch.randn(1, 4, 9, 9))
    assert info.value.op == op
    assert detail in str(info.value)
    assert "test_convert_windows.py" in str(info.value)


def test_model_file_round_trip(tmp_path):
    """All four ops through a model file: written, validated, loaded, run."""
    import framedelta as fd
    net = seq(nn.ConvTranspose2d(4, 6, 3, 2, 1, 1), nn.BatchNorm2d(6), nn.ReLU(),
              nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False,
                           divisor_override=-3),
              nn.AdaptiveMaxPool2d((7, 9)), nn.AdaptiveAvgPool2d((5, 4)))
    torch.manual_seed(5)
    x = torch.randn(1, 4, 11, 13)
    path = tmp_path / "windows.fd"
    fd.convert(net.eval(), x, path)
    model = fd.load(path)
    assert [n.op for n in model.graph.nodes] == [
        "conv_transpose2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"]
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(model.run(x.numpy()), ref, rtol=1e-5,
                               atol=1e-5 * (1 + np.abs(ref).max()))


# --- schema rules of the four ops (a file can be hostile) ---------------------------

_CT = {"out_channels": 4, "kernel": (3, 3), "stride": (2, 2), "pads": (1, 1, 1, 1),
       "dilation": (1, 1)}
_AVG = {"kernel": (3, 3), "stride": (2, 2), "pads": (1, 1, 1, 1)}


@pytest.mark.parametrize("op, attrs, weights, field", [
    ("conv_transpose2d", dict(_CT, output_padding=(2, 0)), (4, 4, 3, 3),
     "attrs/output_padding"),
    ("conv_transpose2d", dict(_CT, output_padding=(0, 0), dilation=(3, 1)), (4, 4, 3, 3),
     None),                                                   # < max(stride, dilation): ok
    ("conv_transpose2d", dict(_CT, pads=(1, 9, 1, 9)), (4, 4, 3, 3), "attrs/pads"),
    ("conv_transpose2d", dict(_CT, groups=3), (4, 4, 3, 3), "attrs/groups"),
    ("conv_transpose2d", dict(_CT, activation="clamp", act_min=1.0, act_max=0.0),
     (4, 4, 3, 3), "attrs/act_min"),
    ("conv_transpose2d", dict(_CT, groups=2), (4, 4, 3, 3), "weights/weight"),
    ("avg_pool2d", dict(_AVG, pads=(2, 1, 1, 1)), None, "attrs/pads"),
    ("avg_pool2d", dict(_AVG, pads=(1, 1, 1, 2)), None, "attrs/pads"),
    ("avg_pool2d", dict(_AVG, kernel=(9, 3), pads=(0, 0, 0, 0)), None, "attrs/kernel"),
    ("avg_pool2d", dict(_AVG, dilation=(1, 1)), None, "attrs/dilation"),
    ("adaptive_avg_pool2d", {"size": (0, 3)}, None, "attrs/size"),
    ("adaptive_max_pool2d", {"size": (2, 3, 4)}, None, "attrs/size"),
], ids=["ct_output_padding", "ct_output_padding_dilation_ok", "ct_crop_all", "ct_groups",
        "ct_act", "ct_weight_shape", "avg_pad_half", "avg_pad_half_right", "avg_too_small",
        "avg_no_dilation", "adaptive_zero", "adaptive_len"])
def test_schema_rules(op, attrs, weights, field):
    from framedelta.errors import ModelFormatError
    from framedelta.formats.graph import Graph, InputSpec, Node, check_graph
    w = {} if weights is None else {"weight": np.zeros(weights, np.float32),
                                    "bias": np.zeros(4, np.float32)}
    g = Graph(InputSpec("x", (1, 4, 7, 8)), [Node("n", op, ["x"], ["y"], attrs, w)], ["y"])
    if field is None:
        check_graph(g)
        return
    with pytest.raises(ModelFormatError) as info:
        check_graph(g)
    assert info.value.field == field and info.value.node == "n"
