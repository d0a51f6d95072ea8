"""Converter rules of the rearranging and normalising family: constant pad, slice
(split, chunk, select, narrow), concat on any axis, group norm.

Each test exports a small module, converts it, runs the graph with the engine (dense,
and for some incrementally), compares with torch and says which format ops the graph
holds; unsupported values raise UnsupportedOperatorError naming the aten op.
"""

from pathlib import Path

import numpy as np
import pytest

from framedelta.engine.model import Model
from framedelta.errors import UnsupportedOperatorError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from framedelta.converters import convert  # noqa: E402

THIS_FILE = Path(__file__).name
SHAPE = (1, 8, 10, 12)


# Each test module has its own Net: torch records the forward's line, not the lambda's,
# so an error names this file only when forward is written here.
class Net(nn.Module):
    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for name, m in mods.items():
            setattr(self, name, m)

    def forward(self, x):
        return self.fn(self, x)


def check(fn, shape=SHAPE, seed=0, **mods):
    """Convert ``Net(fn, **mods)``, run it with the engine, compare every output with
    torch; returns the graph."""
    torch.manual_seed(seed)
    model = Net(fn, **mods).eval()
    for m in model.modules():        # affine parameters that are not ones and zeros
        if isinstance(m, nn.GroupNorm) and m.affine:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(shape)
    graph = convert(model, x)
    with torch.no_grad():
        ref = model(x)
    refs = ref if isinstance(ref, tuple) else (ref,)
    ys = Model(graph).run(x.numpy())
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert len(ys) == len(refs)
    for y, r in zip(ys, refs):
        r = r.numpy()
        assert y.shape == r.shape
        np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5 * (1 + np.abs(r).max()))
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


def unsupported(fn, shape=SHAPE, **mods):
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(Net(fn, **mods).eval(), torch.randn(shape))
    assert THIS_FILE in str(info.value)
    return info.value


# --- pad ---------------------------------------------------------------------------------

def test_zero_pad_before_a_conv_still_folds():
    g = check(lambda m, x: m.conv(F.pad(x, (1, 0, 2, 1))), conv=nn.Conv2d(8, 4, 3))
    assert ops(g) == ["conv2d"] and g.nodes[0].attrs["pads"] == (2, 1, 1, 0)


def test_non_zero_pad_is_a_pad_node():
    g = check(lambda m, x: m.conv(F.pad(x, (1, 2, 3, 0), value=0.75)), conv=nn.Conv2d(8, 4, 3))
    assert ops(g) == ["pad", "conv2d"]
    assert g.nodes[0].attrs == {"pads": (3, 1, 0, 2), "value": 0.75}
    assert g.nodes[1].attrs["pads"] == (0, 0, 0, 0)


@pytest.mark.parametrize("value", [0.0, -1.5, float("-inf")])
def test_pad_before_a_max_pool(value):
    g = check(lambda m, x: F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=value), 2))
    assert ops(g) == ["pad", "max_pool2d"]


def test_pad_that_is_a_graph_output_stays():
    def fn(m, x):
        p = F.pad(x, (1, 1, 1, 1))
        return p, m.conv(p)
    g = check(fn, conv=nn.Conv2d(8, 4, 3))
    assert ops(g) == ["pad", "conv2d"]


def test_pad_too_wide_for_the_conv_stays():
    g = check(lambda m, x: m.conv(F.pad(x, (3, 0, 0, 0))), conv=nn.Conv2d(8, 4, 3))
    assert ops(g) == ["pad", "conv2d"] and g.nodes[1].attrs["pads"] == (0, 0, 0, 0)


def test_negative_pad_crops_through_slices():
    g = check(lambda m, x: F.pad(x, (-1, 2, 3, -2), value=0.5))
    assert ops(g) == ["slice", "slice", "pad"]
    assert [n.attrs for n in g.nodes[:2]] == [
        {"axis": 2, "start": 0, "end": 8}, {"axis": 3, "start": 1, "end": 12}]
    assert g.nodes[2].attrs["pads"] == (3, 0, 0, 2)


def test_pad_stream_equals_dense():
    g = check(lambda m, x: m.conv(F.pad(torch.relu(x), (2, 1, 0, 3), value=-0.5)),
              conv=nn.Conv2d(8, 4, 3, padding=1))
    model = Model(g)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    s = model.stream()
    s.step(x)
    for _ in range(3):
        x = x.copy()
        y0, x0 = rng.integers(0, 9), rng.integers(0, 11)
        x[:, :, y0:y0 + 2, x0:x0 + 2] += 1.0
        np.testing.assert_array_equal(s.step(x), model.run(x))
    assert s.last_stats.nodes[0].active_fraction < 1.0


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_reflect_and_replicate_pads_name_the_index_op(mode):
    e = unsupported(lambda m, x: F.pad(x, (1, 1, 1, 1), mode=mode))
    assert e.op == "aten.index.Tensor"
    assert "reflect" in str(e) and "aten.arange" in str(e) and "constant" in str(e)


def test_conv_padding_mode_reflect_names_the_index_op():
    e = unsupported(lambda m, x: m.conv(x),
                    conv=nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"))
    assert e.op == "aten.index.Tensor" and "padding_mode" in str(e)


def test_circular_pad_names_slice_scatter():
    e = unsupported(lambda m, x: F.pad(x, (1, 1, 1, 1), mode="circular"))
    assert e.op == "aten.slice_scatter.default" and "circular" in str(e)


@pytest.mark.parametrize("fn, detail", [
    (lambda m, x: F.pad(x, (0, 0, 0, 0, 1, 0)), "channel"),
    (lambda m, x: F.pad(x, (1, 1), value=float("nan")), "NaN"),
    (lambda m, x: F.pad(x, (-6, -6)), "crops"),
    (lambda m, x: F.pad(x.flatten(2), (1, 1)), "(N, C, H, W)"),
], ids=["channels", "nan", "crop_all", "rank3"])
def test_unsupported_pads(fn, detail):
    e = unsupported(fn)
    assert e.op == "aten.constant_pad_nd.default" and detail in str(e)


# --- slice, split, chunk, select ------------------------------------------------------------

def test_channel_slice():
    g = check(lambda m, x: x[:, 2:5])
    assert ops(g) == ["slice"] and g.nodes[0].attrs == {"axis": 1, "start": 2, "end": 5,
                                                        "step": 1}


def test_row_slice_with_step():
    g = check(lambda m, x: x[:, :, 1:-1:2])
    assert ops(g) == ["slice"] and g.nodes[0].attrs == {"axis": 2, "start": 1, "end": 9,
                                                        "step": 2}


@pytest.mark.parametrize("fn, attrs", [
    (lambda m, x: x[..., ::3], {"axis": 3, "start": 0, "end": 12, "step": 3}),
    (lambda m, x: x[:, -3:], {"axis": 1, "start": 5, "end": 8, "step": 1}),
    (lambda m, x: x.narrow(3, 4, 5), {"axis": 3, "start": 4, "end": 9, "step": 1}),
    (lambda m, x: x[:, 1::2, 3:100], None),
], ids=["cols_step", "negative_start", "narrow", "two_axes"])
def test_slices(fn, attrs):
    g = check(fn)
    if attrs is None:
        assert ops(g) == ["slice", "slice"]
    else:
        assert ops(g) == ["slice"] and g.nodes[0].attrs == attrs


def test_whole_axis_slice_disappears():
    g = check(lambda m, x: torch.relu(x[:, :, 0:10]))
    assert ops(g) == ["relu"]


def test_chunk_with_both_halves_used():
    g = check(lambda m, x: torch.chunk(x, 2, 1)[0] + torch.chunk(x, 2, 1)[1])
    assert sorted(ops(g)) == ["add", "slice", "slice"]
    assert sorted(n.attrs["start"] for n in g.nodes if n.op == "slice") == [0, 4]


def test_split_with_sizes_both_outputs():
    g = check(lambda m, x: torch.split(x, [3, 5], 1))
    assert ops(g) == ["slice", "slice"]
    assert [(n.attrs["start"], n.attrs["end"]) for n in g.nodes] == [(0, 3), (3, 8)]


def test_split_into_equal_pieces_on_rows():
    g = check(lambda m, x: torch.split(x, 4, 2))
    assert ops(g) == ["slice"] * 3 and g.nodes[-1].attrs["end"] == 10


def test_split_rule_for_split_tensor():
    """aten.split.Tensor when it survives the decompositions: pieces of n, the last
    smaller (the graph is built here without torch.export)."""
    from framedelta.converters.rules import RULES, Data, Unused
    ctx = _FakeCtx({"x": (1, 8, 10, 12)})
    out = RULES["aten.split.Tensor"].fn(ctx, {"self": Data("x"), "split_size": 3, "dim": -1})
    assert [n[1] for n in ctx.nodes] == ["slice"] * 4
    assert [n[2]["end"] for n in ctx.nodes] == [3, 6, 9, 12] and len(out) == 4
    assert not any(isinstance(o, Unused) for o in out)


class _FakeCtx:
    """Just enough of torch_export.Lowering for a rule called directly."""

    def __init__(self, shapes):
        self.shapes = dict(shapes)
        self.nodes = []
        self.op = "test"

    def data(self, value, arg):
        return value.name

    def shape(self, name):
        return self.shapes[name]

    def emit(self, op, inputs, attrs=None, weights=None, shape=None, name=None):
        from framedelta.converters.rules import Data
        name = f"t{len(self.nodes)}"
        self.nodes.append((name, op, attrs))
        self.shapes[name] = shape
        return Data(name)

    def unsupported(self, detail, op=None):
        return UnsupportedOperatorError(op or self.op, None, detail)


@pytest.mark.parametrize("fn", [lambda m, x: x[:, 0], lambda m, x: x[:, :, -2]],
                         ids=["channel", "row"])
def test_select_is_a_slice_and_a_reshape(fn):
    g = check(fn)
    assert ops(g) == ["slice", "reshape"]


def test_slice_feeding_a_conv_and_the_stream():
    g = check(lambda m, x: m.conv(x[:, 1:7, ::2]), conv=nn.Conv2d(6, 4, 3, padding=1))
    assert ops(g) == ["slice", "slice", "conv2d"]
    model = Model(g)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    s = model.stream()
    s.step(x)
    x = x.copy()
    x[:, :, 4, 5] += 2.0
    np.testing.assert_array_equal(s.step(x), model.run(x))
    assert 0 < s.last_stats.nodes[-1].active_fraction < 1


@pytest.mark.parametrize("fn, op, detail", [
    (lambda m, x: x[:, 5:5] + 1, "aten.slice.Tensor", "empty"),
    (lambda m, x: x[1:], "aten.slice.Tensor", "empty"),
    (lambda m, x: x[0], "aten.select.int", "batch"),
], ids=["empty", "batch_empty", "select_batch"])
def test_unsupported_slices(fn, op, detail):
    e = unsupported(fn)
    assert e.op == op and detail in str(e)


# --- concat on any axis ----------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3, -1])
def test_cat_on_h_and_w(dim):
    g = check(lambda m, x: torch.cat([x, torch.relu(x), x], dim))
    assert ops(g)[-1] == "concat" and g.nodes[-1].attrs["axis"] == (dim % 4)


def test_cat_of_different_heights_and_the_stream():
    def fn(m, x):
        return m.conv(torch.cat([x, x[:, :, 3:], F.pad(x, (0, 0, 1, 0), value=2.0)], 2))
    g = check(fn, conv=nn.Conv2d(8, 3, 3, padding=1))
    assert ops(g) == ["slice", "pad", "concat", "conv2d"]
    model = Model(g)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    s = model.stream()
    s.step(x)
    x = x.copy()
    x[:, :, 6, 6] -= 1.0
    np.testing.assert_array_equal(s.step(x), model.run(x))


def test_cat_on_the_last_axis_of_3d_tensors():
    g = check(lambda m, x: torch.cat([x.flatten(2), x[:, :, :2].flatten(2)], -1))
    assert ops(g)[-1] == "concat" and g.nodes[-1].attrs["axis"] == 2


# --- group norm ------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(groups, affine):
    g = check(lambda m, x: m.gn(x), gn=nn.GroupNorm(groups, 8, eps=1e-4, affine=affine))
    assert ops(g) == ["group_norm"]
    node = g.nodes[0]
    assert node.attrs == {"num_groups": groups, "eps": 1e-4}
    if not affine:
        assert (node.weights["weight"] == 1).all() and (node.weights["bias"] == 0).all()


def test_group_norm_after_conv_in_a_stream():
    g = check(lambda m, x: F.relu(m.gn(m.conv(x))), conv=nn.Conv2d(8, 6, 3, padding=1),
              gn=nn.GroupNorm(3, 6))
    assert ops(g) == ["conv2d", "group_norm", "relu"]
    model = Model(g)
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    s = model.stream()
    s.step(x)
    x = x.copy()
    x[:, :, 2, 3] += 1.0
    np.testing.assert_array_equal(s.step(x), model.run(x))
    assert s.last_stats.nodes[1].active_fraction == 1.0     # global: recomputed whole


def test_group_norm_on_a_3d_tensor_goes_through_reshapes():
    g = check(lambda m, x: m.gn(x.flatten(2)), gn=nn.GroupNorm(4, 8))
    assert ops(g) == ["reshape", "reshape", "group_norm", "reshape"]
