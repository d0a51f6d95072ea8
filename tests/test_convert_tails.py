"""Layout-breaking tails (permute, expand, matmul, reshape and its spellings), pixel
shuffle / unshuffle and layer norm: every torch spelling exported, converted, run by the
engine densely and incrementally, compared with torch; the values framedelta cannot
express raise UnsupportedOperatorError naming the aten op.
"""

from pathlib import Path

import numpy as np
import pytest

from framedelta.engine.model import Model
from framedelta.engine.reference import run_graph
from framedelta.errors import ModelFormatError, UnsupportedOperatorError
from framedelta.formats import read_model, write_model
from framedelta.formats.graph import Graph, InputSpec, Node, check_graph

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from framedelta.converters import convert  # noqa: E402

THIS_FILE = Path(__file__).name


# Each test module has its own Net: torch records the forward's line, not the lambda's,
# so an error names this file only when forward is written here.
class Net(nn.Module):
    """forward(x) = fn(self, x), with ``mods`` as submodules or parameters."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for name, m in mods.items():
            setattr(self, name, m)

    def forward(self, x):
        return self.fn(self, x)


def param(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(*shape, generator=g))


def close(y, ref):
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * (1 + float(np.abs(ref).max())))


def check(model, shape=(1, 8, 6, 6), seed=0):
    """Convert, run with the engine (1 and 2 threads) and the reference, compare each
    output with torch; returns the graph."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.randn(shape)
    graph = convert(model, x)
    with torch.no_grad():
        ref = model(x)
    refs = tuple(r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,)))
    for n_threads in (1, 2):
        ys = Model(graph, n_threads=n_threads).run(x.numpy())
        ys = ys if isinstance(ys, tuple) else (ys,)
        assert len(ys) == len(refs)
        for y, r in zip(ys, refs):
            assert y.shape == r.shape
            close(y, r)
    for y, r in zip(run_graph(graph, x.numpy()), refs):
        close(y, r)
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


# --- permute -------------------------------------------------------------------------

@pytest.mark.parametrize("fn, want", [
    (lambda m, x: x.permute(0, 2, 3, 1).contiguous(), ["permute"]),
    (lambda m, x: x.permute(0, 2, 3, 1), ["permute"]),
    (lambda m, x: x.transpose(2, 3), ["permute"]),
    (lambda m, x: x.mT, ["permute"]),
    (lambda m, x: x.view(8, 36).t(), ["reshape", "permute"]),
    (lambda m, x: x.view(1, 2, 4, 6, 6).permute(0, 4, 3, 1, 2), ["reshape", "permute"]),
    (lambda m, x: x.permute(0, 1, 2, 3).flatten(2), ["reshape"]),
], ids=["permute_contiguous", "permute", "transpose", "mT", "t", "rank5", "no_op"])
def test_permute(fn, want):
    assert ops(check(Net(fn))) == want


# --- reshape spellings ---------------------------------------------------------------

@pytest.mark.parametrize("fn, want", [
    (lambda m, x: x.view(8, 6, 6), ["reshape"]),
    (lambda m, x: x.flatten(2), ["reshape"]),
    (lambda m, x: x.unsqueeze(1), ["reshape"]),
    (lambda m, x: x.unsqueeze(-1), ["reshape"]),
    (lambda m, x: x.view(1, 8, 36, 1).squeeze(-1), ["reshape", "reshape"]),
    (lambda m, x: x.view(1, 8, 36, 1).squeeze(), ["reshape", "reshape"]),
    (lambda m, x: x.view(1, 8, 1, 36).squeeze((0, 2)), ["reshape", "reshape"]),
    (lambda m, x: x.unsqueeze(0).squeeze(0), ["reshape", "reshape"]),
    (lambda m, x: x.reshape(2, 4, 36).reshape(1, 8, 6, 6), ["reshape", "reshape"]),
], ids=["view_batch", "flatten2", "unsqueeze", "unsqueeze_last", "squeeze_dim", "squeeze_all",
        "squeeze_dims", "round_trip", "batch_and_back"])
def test_reshape_spellings(fn, want):
    assert ops(check(Net(fn))) == want


# --- expand --------------------------------------------------------------------------

def test_expand_of_a_pooled_map():
    # the broadcasting add reads the pooled map itself (passes.fold_expand)
    g = check(Net(lambda m, x: x.mean((2, 3), keepdim=True).expand(1, 8, 6, 6) + x))
    assert ops(g) == ["global_avg_pool", "add"]
    # an op that takes the expanded shape only (mul by a constant keeps its input's shape)
    g = check(Net(lambda m, x: x.mean((2, 3), keepdim=True).expand(1, 8, 6, 6) * 0.5 - x))
    assert ops(g) == ["global_avg_pool", "expand", "mul", "sub"]
    g = check(Net(lambda m, x: x.mean((2, 3), keepdim=True).expand_as(x)))
    assert ops(g) == ["global_avg_pool", "expand"]


def test_expand_to_new_leading_axes():
    g = check(Net(lambda m, x: x.view(8, 36, 1).expand(2, 3, -1, -1, 5)))
    assert ops(g) == ["reshape", "expand"] and g.nodes[1].attrs["shape"] == (2, 3, 8, 36, 5)


def test_expand_of_a_constant_folds():
    g = check(Net(lambda m, x: torch.bmm(x.view(8, 6, 6), m.w.expand(8, 6, 6)),
                  w=param(1, 6, 6)))
    assert "expand" not in ops(g)


# --- matmul --------------------------------------------------------------------------

@pytest.mark.parametrize("fn, want", [
    (lambda m, x: torch.bmm(x.view(8, 6, 6), x.view(8, 6, 6).transpose(1, 2)), "matmul"),
    (lambda m, x: x @ x.transpose(-1, -2), "matmul"),
    (lambda m, x: torch.matmul(x.flatten(2), x.flatten(2).transpose(1, 2)), "matmul"),
    (lambda m, x: torch.mm(x.view(8, 36), x.view(8, 36).t()), "matmul"),
    (lambda m, x: torch.einsum("bchw,bdhw->bcd", x, x), "matmul"),
    (lambda m, x: x.flatten(2).transpose(1, 2) @ x.flatten(2), "matmul"),
    (lambda m, x: x.flatten(2).transpose(1, 2) @ m.w, "linear"),
    (lambda m, x: m.w2 @ x.flatten(2), "linear"),
    (lambda m, x: x @ m.w3, "linear"),
    (lambda m, x: torch.bmm(x.view(8, 6, 6), m.w3.expand(8, 6, 5)), "linear"),
    (lambda m, x: torch.bmm(m.w4.expand(8, 5, 6), x.view(8, 6, 6)), "linear"),
    (lambda m, x: torch.mm(m.w2, x.view(8, 36)), "linear"),
    (lambda m, x: m.fc(x.flatten(2).transpose(1, 2)), "linear"),
], ids=["bmm", "matmul4d", "matmul3d", "mm_gram", "einsum", "attention_scores", "x3d_at_w",
        "w_at_x3d", "x4d_at_w", "bmm_const_right", "bmm_const_left", "mm_const_left",
        "linear_on_tokens"])
def test_matmul(fn, want):
    g = check(Net(fn, w=param(8, 5), w2=param(5, 8, seed=1), w3=param(6, 5, seed=2),
                  w4=param(5, 6, seed=3), fc=nn.Linear(8, 5)))
    assert want in ops(g)


def test_matmul_threads_give_the_same_bits():
    rng = np.random.default_rng(4)
    g = Graph(InputSpec("x", (1, 6, 37, 41)), [
        Node("a", "reshape", ["x"], ["a"], {"shape": (6, 37, 41)}),
        Node("t", "permute", ["a"], ["t"], {"dims": (0, 2, 1)}),
        Node("m", "matmul", ["t", "a"], ["m"]),            # (6, 41, 41), K = 37
        Node("b", "reshape", ["m"], ["b"], {"shape": (1, 6, 41, 41)}),
        Node("n", "matmul", ["b", "b"], ["y"])], ["y", "m"])
    x = rng.standard_normal((1, 6, 37, 41)).astype(np.float32)
    one, two = Model(g, n_threads=1).run(x), Model(g, n_threads=2).run(x)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    m = x[0].transpose(0, 2, 1).astype(np.float64) @ x[0].astype(np.float64)
    close(one[1], m.astype(np.float32))


def test_linear_on_rows():
    """mm(x, W) on a (L, C) matrix: the linear layer computes each row."""
    g = check(Net(lambda m, x: m.fc(x.view(36, 8)), fc=nn.Linear(8, 5)))
    assert ops(g) == ["reshape", "linear"]


# --- pixel shuffle -------------------------------------------------------------------

@pytest.mark.parametrize("fn, shape, want", [
    (lambda m, x: F.pixel_shuffle(x, 2), (1, 8, 5, 7), ["pixel_shuffle"]),
    (lambda m, x: m.ps(x), (1, 18, 4, 3), ["pixel_shuffle"]),
    (lambda m, x: F.pixel_shuffle(x, 1), (1, 3, 4, 3), None),
    (lambda m, x: F.pixel_unshuffle(x, 2), (1, 3, 6, 8), ["pixel_unshuffle"]),
    (lambda m, x: m.pu(x), (1, 2, 9, 6), ["pixel_unshuffle"]),
    (lambda m, x: F.pixel_shuffle(m.conv(x), 2), (1, 3, 5, 7), ["conv2d", "pixel_shuffle"]),
    (lambda m, x: x.view(1, 2, 2, 2, 5, 7).permute(0, 1, 4, 3, 5, 2).reshape(1, 2, 10, 14),
     (1, 8, 5, 7), ["reshape", "permute", "reshape"]),
], ids=["shuffle", "module_r3", "r1", "unshuffle", "module_unshuffle_r3", "after_conv",
        "other_permutation"])
def test_pixel_shuffle(fn, shape, want):
    g = check(Net(fn, ps=nn.PixelShuffle(3), pu=nn.PixelUnshuffle(3),
                  conv=nn.Conv2d(3, 12, 3, padding=1)), shape)
    if want is not None:
        assert ops(g) == want


def test_pixel_shuffle_intermediate_read_elsewhere_stays_unfused():
    def fn(m, x):
        p = x.view(1, 2, 2, 2, 5, 7).permute(0, 1, 4, 2, 5, 3)
        return p.reshape(1, 2, 10, 14), p
    g = check(Net(fn), (1, 8, 5, 7))
    assert ops(g) == ["reshape", "permute", "reshape"]


@pytest.mark.parametrize("module, shape, op", [
    (nn.PixelShuffle(2), (1, 8, 3, 5), "pixel_shuffle"),
    (nn.PixelUnshuffle(3), (1, 2, 6, 9), "pixel_unshuffle")], ids=["shuffle", "unshuffle"])
def test_pixel_shuffle_kept_whole_by_the_exporter(module, shape, op):
    """Before run_decompositions the program holds aten.pixel_shuffle itself."""
    from framedelta.converters.torch_export import lower
    x = torch.randn(shape)
    ep = torch.export.export(module.eval(), (x,))
    graph, _ = lower(ep)
    assert ops(graph) == [op]
    close(Model(graph).run(x.numpy()), module(x).numpy())


# --- layer norm ----------------------------------------------------------------------

class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first layer norm, as torchvision writes it."""

    def __init__(self, c, affine=True):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.ln.weight.normal_()
                self.ln.bias.normal_()

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("fn, want", [
    (lambda m, x: m.ln2d(x), ["layer_norm"]),
    (lambda m, x: F.layer_norm(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2),
     ["layer_norm"]),
    (lambda m, x: m.ln2d_plain(m.conv(x)), ["conv2d", "layer_norm"]),
    (lambda m, x: m.ln(x.flatten(2).transpose(1, 2)), ["reshape", "permute", "layer_norm"]),
    (lambda m, x: F.layer_norm(x, (6,)), ["layer_norm"]),
    (lambda m, x: F.layer_norm(x.permute(0, 2, 3, 1), (8,)), ["permute", "layer_norm"]),
], ids=["LayerNorm2d", "functional", "no_affine", "tokens", "last_axis", "not_permuted_back"])
def test_layer_norm(fn, want):
    g = check(Net(fn, ln2d=LayerNorm2d(8), ln2d_plain=LayerNorm2d(8, affine=False),
                  ln=nn.LayerNorm(8), conv=nn.Conv2d(8, 8, 3, padding=1)))
    assert ops(g) == want
    if want == ["layer_norm"] and g.nodes[0].attrs["axis"] == 1:
        assert Model(g).incremental_plan()[0].masked


def test_layer_norm_nan_and_inf_rows_as_torch():
    x = torch.randn(1, 5, 4, 3)
    x[0, 2, 1, 1] = float("nan")
    x[0, 0, 2, 0] = float("inf")
    x[0, 4, 3, 2] = -float("inf")
    m = LayerNorm2d(5).eval()
    g = convert(m, x)
    with torch.no_grad():
        ref = m(x).numpy()
    y = Model(g).run(x.numpy())
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[0, :, 1, 1]).all() and np.isnan(y[0, :, 2, 0]).all()
    ok = ~np.isnan(ref)
    close(y[ok], ref[ok])


# --- several outputs and a detection head --------------------------------------------

class Heads(nn.Module):
    """Three scales, each a conv then the view / permute / contiguous / view of a YOLO
    head (na anchors, no = 5 + classes outputs per anchor), returned as a tuple."""

    def __init__(self, c=3, na=3, no=7):
        super().__init__()
        self.na, self.no = na, no
        self.stem = nn.Conv2d(c, 8, 3, padding=1)
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(2)])
        self.m = nn.ModuleList([nn.Conv2d(8, na * no, 1) for _ in range(3)])

    def forward(self, x):
        feats = [self.stem(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        out = []
        for f, m in zip(feats, self.m):
            p = m(f)
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            out.append(p.view(bs, -1, self.no))
        return tuple(out)


def test_several_outputs_in_the_model_order():
    g = check(Heads(), (1, 3, 16, 20))
    assert len(g.outputs) == 3
    m = Model(g)
    assert [s[1] for s in m.output_shapes] == [3 * 16 * 20, 3 * 8 * 10, 3 * 4 * 5]


def test_head_stream_equals_dense():
    from test_stream import assert_identical
    torch.manual_seed(0)
    net = Heads().eval()
    x = torch.randn(1, 3, 16, 20)
    model = Model(convert(net, x))
    s = model.stream(threshold=0.0)
    rng = np.random.default_rng(0)
    frame = x.numpy()
    for i in range(4):
        frame = frame.copy()
        frame[:, :, 3 + i:6 + i, 5:9] += rng.standard_normal((1, 3, 3, 4)).astype(np.float32)
        y = s.step(frame)
        assert isinstance(y, tuple) and len(y) == 3
        assert_identical(y, model.run(frame), f"frame {i}")
        with torch.no_grad():
            for a, b in zip(y, net(torch.from_numpy(frame))):
                close(a, b.numpy())


def test_spatial_ops_stay_sparse_in_a_stream():
    """pixel shuffle, unshuffle and the fused layer norm recompute only near the change."""
    from test_stream import assert_identical
    net = Net(lambda m, x: F.pixel_unshuffle(m.ln(F.pixel_shuffle(m.conv(x), 2)), 2),
              conv=nn.Conv2d(3, 16, 3, padding=1), ln=LayerNorm2d(4)).eval()
    x = torch.randn(1, 3, 24, 32)
    g = convert(net, x)
    assert ops(g) == ["conv2d", "pixel_shuffle", "layer_norm", "pixel_unshuffle"]
    model = Model(g)
    s = model.stream()
    s.step(x.numpy())
    x2 = x.numpy().copy()
    x2[0, :, 10, 12] += 1.0
    y = s.step(x2)
    assert_identical(y, model.run(x2))
    active = {n.op: n.active_fraction for n in s.last_stats.nodes}
    assert 0 < active["pixel_shuffle"] < 0.05 and 0 < active["layer_norm"] < 0.05
    assert 0 < active["pixel_unshuffle"] < 0.05
    assert not any(n.dense for n in s.last_stats.nodes)


# --- the model file ------------------------------------------------------------------

def test_tail_ops_round_trip_through_a_file(tmp_path):
    rng = np.random.default_rng(2)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    g = Graph(InputSpec("x", (1, 8, 6, 4)), [
        Node("ps", "pixel_shuffle", ["x"], ["ps"], {"upscale": 2}),
        Node("pu", "pixel_unshuffle", ["ps"], ["pu"], {"downscale": 2}),
        Node("ln", "layer_norm", ["pu"], ["ln"], {"eps": 1e-3},
             {"weight": w(8), "bias": w(8)}),
        Node("v", "reshape", ["ln"], ["v"], {"shape": (8, 6, 4)}),
        Node("p", "permute", ["v"], ["p"], {"dims": (0, 2, 1)}),
        Node("mm", "matmul", ["v", "p"], ["mm"]),
        Node("e", "expand", ["mm"], ["y"], {"shape": (2, 1, 8, 6, 6)})], ["y", "ln"])
    check_graph(g)
    path = tmp_path / "tails.h5"
    write_model(g, path)
    back = read_model(path)
    assert [n.attrs for n in back.nodes] == [n.attrs for n in g.nodes]
    x = rng.standard_normal((1, 8, 6, 4)).astype(np.float32)
    for a, b in zip(Model(back).run(x), run_graph(g, x)):
        close(a, b)


def _graph_with(node, shape=(1, 8, 6, 4), pre=()):
    return Graph(InputSpec("x", shape), list(pre) + [node], [node.outputs[0]])


@pytest.mark.parametrize("node, pre, field", [
    (Node("r", "reshape", ["x"], ["y"], {"shape": (2, 4, 6, 4)}), (), "attrs/shape"),
    (Node("r", "reshape", ["x"], ["y"], {"shape": (1, 1, 1, 1, 1, 8, 24)}), (), "attrs/shape"),
    (Node("p", "permute", ["x"], ["y"], {"dims": (0, 1, 2, 2)}), (), "attrs/dims"),
    (Node("p", "permute", ["x"], ["y"], {"dims": (0, 1, 2)}), (), "attrs/dims"),
    (Node("p", "permute", ["x"], ["y"], {"dims": (1, 0, 2, 3)}), (), "attrs/dims"),
    (Node("e", "expand", ["x"], ["y"], {"shape": (1, 8, 6, 5)}), (), "attrs/shape"),
    (Node("e", "expand", ["x"], ["y"], {"shape": (8, 6, 4)}), (), "attrs/shape"),
    (Node("e", "expand", ["x"], ["y"], {"shape": (3, 1, 8, 6, 4)}), (), None),
    (Node("e", "expand", ["x"], ["y"], {"shape": (65536, 1000, 1, 8, 6, 4)}), (), "outputs"),
    (Node("m", "matmul", ["x", "x"], ["y"]), (), "inputs"),
    (Node("m", "matmul", ["x", "v"], ["y"]),
     (Node("v", "reshape", ["x"], ["v"], {"shape": (8, 4, 6)}),), "inputs"),
    (Node("s", "pixel_shuffle", ["x"], ["y"], {"upscale": 3}), (), "attrs/upscale"),
    (Node("s", "pixel_shuffle", ["v"], ["y"], {"upscale": 2}),
     (Node("v", "reshape", ["x"], ["v"], {"shape": (8, 6, 4)}),), "input[0]"),
    (Node("u", "pixel_unshuffle", ["x"], ["y"], {"downscale": 4}), (), "attrs/downscale"),
    (Node("l", "layer_norm", ["x"], ["y"], {"axis": 4},
          {"weight": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}), (), "attrs/axis"),
    (Node("l", "layer_norm", ["x"], ["y"], {"axis": 2},
          {"weight": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}), (),
     "weights/weight"),
    (Node("l", "layer_norm", ["x"], ["y"], {"eps": -1.0},
          {"weight": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}), (), "attrs/eps"),
], ids=["reshape_rank4_batch", "reshape_rank7", "permute_repeat", "permute_short",
        "permute_rank4_batch", "expand_mismatch", "expand_fewer_axes", "expand_ok",
        "expand_too_big", "matmul_inner", "matmul_rank", "shuffle_channels", "shuffle_rank",
        "unshuffle_size", "ln_axis", "ln_weight", "ln_eps"])
def test_hostile_attributes_are_refused(node, pre, field):
    g = _graph_with(node, pre=pre)
    if field is None:
        check_graph(g)
        return
    with pytest.raises(ModelFormatError) as info:
        check_graph(g)
    assert info.value.field == field


# --- what cannot convert -------------------------------------------------------------

@pytest.mark.parametrize("fn, op, detail", [
    (lambda m, x: x.permute(1, 0, 2, 3), "aten.permute.default", "N = 1"),
    (lambda m, x: x.view(2, 4, 6, 6), "aten.view.default", "N = 1"),
    (lambda m, x: x.view(1, 1, 1, 2, 4, 6, 6), "aten.view.default", "rank"),
    (lambda m, x: x.unsqueeze(0).unsqueeze(0).unsqueeze(0).unsqueeze(0), "aten.unsqueeze.default",
     "rank"),
    (lambda m, x: x.view(1, 8, 1, 36).expand(2, 8, 3, 36), "aten.expand.default", "N = 1"),
    (lambda m, x: F.layer_norm(x, (6, 6)), "aten.native_layer_norm.default",
     "normalized_shape"),
    (lambda m, x: torch.native_layer_norm(x, (6,), None, None, 1e-5)[1],
     "aten.native_layer_norm.default", "mean"),
    (lambda m, x: torch.bmm(x.view(8, 6, 6), m.wb), "aten.bmm.default", "batch"),
], ids=["permute_batch", "view_batch4", "view_rank7", "unsqueeze_rank",
        "expand_batch4", "ln_two_axes", "ln_mean", "bmm_const_batch"])
def test_unsupported_values_name_the_op(fn, op, detail):
    net = Net(fn, wb=param(8, 6, 5))
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(net.eval(), torch.randn(1, 8, 6, 6))
    assert info.value.op == op, str(info.value)
    assert detail in str(info.value)
    assert THIS_FILE in str(info.value)


# --- detection and attention heads (with the activation and slicing ops) ---------------

class Detect(nn.Module):
    """YOLOv5's Detect head in eval mode: per scale a 1x1 conv, view / permute /
    contiguous, sigmoid, split on the last axis, arithmetic with constant grids and
    anchors (broadcasting), pow, cat on the last axis, view; returns the decoded boxes of
    all scales (cat on axis 1) and the raw maps, as a tuple."""

    def __init__(self, nc=2, ch=(8, 8, 8), sizes=((16, 20), (8, 10), (4, 5)),
                 strides=(8, 16, 32), slicing=False):
        super().__init__()
        self.nc, self.no, self.na, self.slicing = nc, nc + 5, 3, slicing
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.strides = strides
        g = torch.Generator().manual_seed(5)
        for i, (ny, nx) in enumerate(sizes):
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2).float() - 0.5
            anchors = torch.rand(1, self.na, 1, 1, 2, generator=g) * 40 + 10
            self.register_buffer(f"grid{i}", grid)
            self.register_buffer(f"anchor_grid{i}", anchors.expand(1, self.na, ny, nx, 2)
                                 .contiguous())

    def forward(self, feats):
        z, raw = [], []
        for i, f in enumerate(feats):
            p = self.m[i](f)
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            y = p.sigmoid()
            if self.slicing:
                xy, wh, conf = y[..., :2], y[..., 2:4], y[..., 4:]
            else:
                xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + getattr(self, f"grid{i}")) * self.strides[i]
            wh = (wh * 2) ** 2 * getattr(self, f"anchor_grid{i}")
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return (torch.cat(z, 1), *raw)


class TinyYolo(nn.Module):
    def __init__(self, slicing=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(3))
        self.detect = Detect(slicing=slicing)

    def forward(self, x):
        f = [self.down[0](torch.nn.functional.silu(self.stem(x)))]
        for d in self.down[1:]:
            f.append(d(f[-1]))
        return self.detect(f)


@pytest.mark.parametrize("slicing", [False, True], ids=["split", "slicing"])
def test_yolo_decoding_head(slicing):
    from test_stream import assert_identical
    torch.manual_seed(0)
    net = TinyYolo(slicing).eval()
    g = check(net, (1, 3, 64, 80))
    assert len(g.outputs) == 4
    assert {"permute", "sigmoid", "pow", "concat"} <= set(ops(g))
    model = Model(g)
    s = model.stream()
    rng = np.random.default_rng(1)
    x = torch.randn(1, 3, 64, 80).numpy()
    for i in range(3):
        x = x.copy()
        x[:, :, 20 + 9 * i:40 + 9 * i, 30:50] += rng.standard_normal((1, 3, 20, 20)).astype(
            np.float32)
        y = s.step(x)
        assert isinstance(y, tuple) and len(y) == 4
        assert_identical(y, model.run(x), f"frame {i}")
        with torch.no_grad():
            for a, b in zip(y, net(torch.from_numpy(x))):
                close(a, b.numpy())


class SelfAttention2d(nn.Module):
    """Non-local / SAGAN-style attention over the positions of a feature map: 1x1 convs,
    flatten, transpose, bmm, softmax over the last axis, bmm, view back, residual."""

    def __init__(self, c=8, d=4):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(c, d, 1), nn.Conv2d(c, d, 1), nn.Conv2d(c, c, 1)
        self.scale = d ** -0.5

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)            # (1, HW, d)
        k = self.k(x).flatten(2)                            # (1, d, HW)
        attn = torch.softmax(q @ k * self.scale, dim=-1)    # (1, HW, HW)
        v = self.v(x).flatten(2)                            # (1, C, HW)
        return x + (v @ attn.transpose(1, 2)).view(b, c, h, w)


def test_attention_block():
    g = check(Net(lambda m, x: m.att(m.conv(x)), conv=nn.Conv2d(8, 8, 3, padding=1),
                  att=SelfAttention2d()))
    assert ops(g).count("matmul") == 2 and "softmax" in ops(g)
