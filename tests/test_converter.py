"""The converter: one small test per rule (export, convert, run, compare with torch, as
pnnx's tests do), the passes, the errors, the checkpoint forms and the zoo.

Converted graphs run on the numpy reference executor (engine.reference.run_graph);
torch is the oracle, within the project's tolerance (conftest.close_to_torch).
"""

import math
from pathlib import Path

import pytest
from conftest import close_to_torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framedelta.engine.reference import run_graph
from framedelta.errors import ConversionError, UnsupportedOperatorError
from framedelta.formats import OPS, read_model

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from framedelta.converters import convert  # noqa: E402
from framedelta.converters.checkpoint import load_source  # noqa: E402
from framedelta.converters.rules import RULES, produced_ops  # noqa: E402
from framedelta.converters.zoo import ZOO, randomize_bn, unet  # noqa: E402

THIS_FILE = Path(__file__).name


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


def check(model, shape=(1, 3, 13, 17), seed=0):
    """Convert ``model`` for ``shape``, run the graph, compare every output with torch."""
    torch.manual_seed(seed)
    model.eval()
    x = torch.randn(shape)
    graph = convert(model, x)
    with torch.no_grad():
        ref = model(x)
    refs = ref if isinstance(ref, tuple) else (ref,)
    ys = run_graph(graph, x.numpy())
    assert len(ys) == len(refs)
    for y, r in zip(ys, refs):
        close_to_torch(y, r.numpy())
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


def line_of(marker):
    """The line of this file that carries ``marker`` in a comment."""
    lines = Path(__file__).read_text().splitlines()
    hits = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith("# " + marker)]
    assert len(hits) == 1, marker
    return hits[0]


# --- the rule table -------------------------------------------------------------------------

def test_every_format_op_is_produced_by_some_rule():
    assert set(OPS) <= produced_ops(), set(OPS) - produced_ops()


def test_rules_produce_only_format_ops():
    assert produced_ops() <= set(OPS)
    assert all(r.doc for r in RULES.values())


# --- convolution --------------------------------------------------------------------------

@pytest.mark.parametrize("conv, cin", [
    (nn.Conv2d(3, 8, 3, padding=1), 3),
    (nn.Conv2d(3, 8, 3, stride=2, bias=False), 3),
    (nn.Conv2d(3, 6, (3, 5), stride=(2, 1), padding=(1, 2)), 3),
    (nn.Conv2d(3, 5, 3, padding=2, dilation=2), 3),
    (nn.Conv2d(3, 4, (3, 3), padding=(3, 1), dilation=(2, 1)), 3),
    (nn.Conv2d(4, 6, 3, padding=1, groups=2), 4),
    (nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), 6),    # depthwise
    (nn.Conv2d(4, 8, 3, padding=1, groups=4), 4),              # depthwise multiplier 2
    (nn.Conv2d(3, 7, 1), 3),
], ids=["plain", "stride_nobias", "rect", "dilated", "dilated_rect", "grouped", "depthwise",
        "depthwise_x2", "pointwise"])
def test_conv2d(conv, cin):
    g = check(Net(lambda m, x: m.conv(x), conv=conv), (1, cin, 13, 17))
    assert ops(g) == ["conv2d"]
    a = g.nodes[0].attrs
    assert a["groups"] == conv.groups and a["dilation"] == conv.dilation
    assert a["stride"] == conv.stride and a["kernel"] == conv.kernel_size


def test_conv_functional_with_constant_weight():
    w = torch.randn(4, 3, 3, 3)
    net = Net(lambda m, x: F.conv2d(x, m.w, stride=1, padding=1))
    net.register_buffer("w", w)
    g = check(net, (1, 3, 9, 9))
    assert ops(g) == ["conv2d"] and not g.nodes[0].weights["bias"].any()


def test_conv_same_padding_even_kernel_folds_asymmetric_pads():
    # padding='same' with an even kernel exports as constant_pad_nd + convolution
    g = check(Net(lambda m, x: m.conv(x), conv=nn.Conv2d(3, 4, 4, padding="same")))
    assert ops(g) == ["conv2d"] and g.nodes[0].attrs["pads"] == (1, 1, 2, 2)


def test_asymmetric_pad_before_conv_folds_into_pads():
    g = check(Net(lambda m, x: m.conv(F.pad(x, (1, 0, 2, 1))), conv=nn.Conv2d(3, 4, 3)))
    assert ops(g) == ["conv2d"]
    assert g.nodes[0].attrs["pads"] == (2, 1, 1, 0)   # (top, left, bottom, right)


def test_pad_read_by_two_convs_folds_into_both():
    def fn(m, x):
        p = F.pad(x, (0, 1, 1, 0))
        return m.a(p), m.b(p)
    g = check(Net(fn, a=nn.Conv2d(3, 4, 3, padding=1), b=nn.Conv2d(3, 2, 2)))
    assert ops(g) == ["conv2d", "conv2d"]
    assert [n.attrs["pads"] for n in g.nodes] == [(2, 1, 1, 2), (1, 0, 0, 1)]


@settings(max_examples=12)
@given(st.data())
def test_conv2d_attributes_property(data):
    k = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 4)), label="kernel")
    d = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)), label="dilation")
    s = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)), label="stride")
    p = tuple(data.draw(st.integers(0, d[i] * (k[i] - 1)), label=f"pad{i}") for i in (0, 1))
    extra = data.draw(st.tuples(*[st.integers(0, 1)] * 4), label="F.pad")
    g = data.draw(st.sampled_from([1, 2, 4]), label="groups")
    conv = nn.Conv2d(4, 4, k, s, p, d, groups=g)
    net = Net(lambda m, x: torch.relu(m.conv(F.pad(x, extra))), conv=conv)
    graph = check(net, (1, 4, 11, 10))
    (pt, pw), (kh, kw), (dh, dw) = p, k, d
    fits = (max(pt + extra[2], pt + extra[3]) < dh * (kh - 1) + 1
            and max(pw + extra[0], pw + extra[1]) < dw * (kw - 1) + 1)
    # a pad that would reach the kernel extent stays a pad node
    assert ops(graph) == (["conv2d"] if fits else ["pad", "conv2d"])
    assert graph.nodes[-1].attrs["activation"] == "relu"


# --- batch norm ---------------------------------------------------------------------------

def test_batch_norm_folds_into_conv():
    g = check(Net(lambda m, x: m.bn(m.conv(x)), conv=nn.Conv2d(3, 6, 3, bias=False),
                  bn=nn.BatchNorm2d(6)))
    assert ops(g) == ["conv2d"]


def test_batch_norm_after_add_stays_standalone():
    g = check(Net(lambda m, x: m.bn(m.a(x) + m.b(x)), a=nn.Conv2d(3, 5, 3, padding=1),
                  b=nn.Conv2d(3, 5, 1), bn=nn.BatchNorm2d(5)))
    assert ops(g) == ["conv2d", "conv2d", "add", "batch_norm"]


def test_batch_norm_on_a_conv_with_two_users_stays_standalone():
    def fn(m, x):
        y = m.conv(x)
        return m.bn(y) + torch.relu(y)
    g = check(Net(fn, conv=nn.Conv2d(3, 5, 3), bn=nn.BatchNorm2d(5)))
    assert sorted(ops(g)) == ["add", "batch_norm", "conv2d", "relu"]


def test_batch_norm_on_the_input_and_without_affine():
    g = check(Net(lambda m, x: m.bn(x), bn=nn.BatchNorm2d(3, affine=False)))
    assert ops(g) == ["batch_norm"]


def test_batch_norm_1d_after_linear():
    g = check(Net(lambda m, x: m.bn(m.fc(torch.flatten(m.pool(x), 1))),
                  pool=nn.AdaptiveAvgPool2d(1), fc=nn.Linear(3, 6), bn=nn.BatchNorm1d(6)))
    assert ops(g)[-1] == "batch_norm"


def test_conv_bn_relu_folds_and_fuses_in_order():
    g = check(Net(lambda m, x: F.relu(m.bn(m.conv(x))), conv=nn.Conv2d(3, 6, 3),
                  bn=nn.BatchNorm2d(6)))
    assert ops(g) == ["conv2d"] and g.nodes[0].attrs["activation"] == "relu"


# --- activations --------------------------------------------------------------------------

@pytest.mark.parametrize("act, kind, lo, hi", [
    (nn.ReLU(inplace=True), "relu", None, None),
    (nn.ReLU6(inplace=True), "clamp", 0.0, 6.0),
    (nn.Hardtanh(-0.5, 0.25), "clamp", -0.5, 0.25),
    (lambda y: y.clamp(min=-0.1, max=0.3), "clamp", -0.1, 0.3),
    (lambda y: torch.clamp_min(y, 0.0), "relu", None, None),
    (lambda y: torch.clamp_max(y, 0.2), "clamp", -math.inf, 0.2),
], ids=["relu", "relu6", "hardtanh", "clamp", "clamp_min0", "clamp_max"])
def test_activation_fuses_into_conv(act, kind, lo, hi):
    mods = {"act": act} if isinstance(act, nn.Module) else {}
    net = Net(lambda m, x: (m.act if mods else act)(m.conv(x)), conv=nn.Conv2d(3, 4, 3), **mods)
    g = check(net)
    assert ops(g) == ["conv2d"]
    a = g.nodes[0].attrs
    assert a["activation"] == kind
    if kind == "clamp":
        assert (a["act_min"], a["act_max"]) == (lo, hi)


@pytest.mark.parametrize("fn, op", [
    (lambda x: F.relu(x), "relu"),
    (lambda x: F.relu6(x), "clamp"),
    (lambda x: F.hardtanh(x), "clamp"),
    (lambda x: x.clamp(-0.2, 0.4), "clamp"),
    (lambda x: torch.clamp_min(x, 0.1), "clamp"),
], ids=["relu", "relu6", "hardtanh", "clamp", "clamp_min"])
def test_standalone_activation(fn, op):
    g = check(Net(lambda m, x: fn(x)))
    assert ops(g) == [op]


def test_activation_not_fused_when_conv_output_is_returned():
    g = check(Net(lambda m, x: (lambda y: (y, F.relu(y)))(m.conv(x)), conv=nn.Conv2d(3, 4, 3)))
    assert ops(g) == ["conv2d", "relu"]
    assert g.nodes[0].attrs.get("activation", "none") == "none"


def test_activation_not_fused_when_conv_output_has_two_users():
    g = check(Net(lambda m, x: (lambda y: F.relu(y) + y)(m.conv(x)), conv=nn.Conv2d(3, 4, 3)))
    assert ops(g) == ["conv2d", "relu", "add"]


# --- pooling --------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2),
    nn.MaxPool2d(3, 2, 1),
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    nn.MaxPool2d(3, 2, 0, ceil_mode=True),
    nn.MaxPool2d(3, 1, 1, dilation=2),
    nn.MaxPool2d((2, 3), (1, 2), (1, 0), dilation=(2, 1), ceil_mode=True),
], ids=["k2", "k3s2p1", "ceil", "ceil_nopad", "dilated", "rect_all"])
def test_max_pool2d(pool):
    g = check(Net(lambda m, x: m.pool(x), pool=pool))
    assert ops(g) == ["max_pool2d"]


def test_max_pool_indices_are_unsupported():
    net = Net(lambda m, x: F.max_pool2d(x, 2, return_indices=True))
    with pytest.raises(UnsupportedOperatorError, match="indices"):
        convert(net, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("fn, keepdim", [
    (lambda x: x.mean((2, 3)), 0),
    (lambda x: x.mean((-1, -2), keepdim=True), 1),
    (lambda x: F.adaptive_avg_pool2d(x, 1), 1),
    (lambda x: torch.flatten(nn.AdaptiveAvgPool2d((1, 1))(x), 1), 1),
], ids=["mean23", "mean_neg_keepdim", "adaptive1", "adaptive_flatten"])
def test_global_avg_pool(fn, keepdim):
    g = check(Net(lambda m, x: fn(x)))
    assert g.nodes[0].op == "global_avg_pool" and g.nodes[0].attrs["keepdim"] == keepdim


# --- add, concat ---------------------------------------------------------------------------

def test_add_residual():
    g = check(Net(lambda m, x: m.conv(x) + x, conv=nn.Conv2d(3, 3, 3, padding=1)))
    assert ops(g) == ["conv2d", "add"]


def test_inplace_add():
    def fn(m, x):
        y = m.conv(x)
        y += m.conv2(x)
        return y
    g = check(Net(fn, conv=nn.Conv2d(3, 4, 1), conv2=nn.Conv2d(3, 4, 3, padding=1)))
    assert ops(g) == ["conv2d", "conv2d", "add"]


@pytest.mark.parametrize("dim", [1, -3])
def test_concat(dim):
    g = check(Net(lambda m, x: torch.cat([x, m.conv(x), x], dim=dim),
                  conv=nn.Conv2d(3, 2, 3, padding=1)))
    assert ops(g) == ["conv2d", "concat"] and len(g.nodes[1].inputs) == 3


# --- resizing -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(scale_factor=2),
    dict(scale_factor=3),
    dict(scale_factor=1.5),
    dict(scale_factor=(2, 1.7)),
    dict(scale_factor=1.5, recompute_scale_factor=True),
    dict(size=(23, 31)),
    dict(size=(7, 40)),
], ids=["x2", "x3", "x1.5", "x2_1.7", "recompute", "size", "size_mixed"])
def test_upsample_nearest(kw):
    g = check(Net(lambda m, x: F.interpolate(x, mode="nearest", **kw)))
    assert ops(g) == ["upsample_nearest"]


def test_upsample_nearest_module():
    g = check(Net(lambda m, x: m.up(x), up=nn.Upsample(scale_factor=2)))
    assert g.nodes[0].attrs["scales"] == (0.5, 0.5)


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("kw", [
    dict(scale_factor=2),
    dict(scale_factor=1.5),
    dict(scale_factor=0.5),
    dict(scale_factor=1.5, recompute_scale_factor=True),
    dict(size=(23, 31)),
    dict(size=(5, 40)),
], ids=["x2", "x1.5", "x0.5", "recompute", "size", "size_mixed"])
def test_upsample_bilinear(kw, align):
    g = check(Net(lambda m, x: F.interpolate(x, mode="bilinear", align_corners=align, **kw)))
    assert ops(g) == ["upsample_bilinear"] and g.nodes[0].attrs["align_corners"] == int(align)


# --- linear, reshape, identity -------------------------------------------------------------

def test_linear_head_with_dropout():
    g = check(Net(lambda m, x: m.fc(m.drop(torch.flatten(m.pool(x), 1))),
                  pool=nn.AdaptiveAvgPool2d(1), drop=nn.Dropout(0.5), fc=nn.Linear(3, 10)))
    assert ops(g) == ["global_avg_pool", "reshape", "linear"]


def test_linear_without_bias_on_a_flattened_map():
    g = check(Net(lambda m, x: m.fc(x.view(1, -1)), fc=nn.Linear(3 * 5 * 4, 7, bias=False)),
              (1, 3, 5, 4))
    assert ops(g) == ["reshape", "linear"] and not g.nodes[1].weights["bias"].any()
    assert g.nodes[0].attrs["shape"] == (1, 60)


def test_reshape_to_a_higher_rank():
    g = check(Net(lambda m, x: x.reshape(1, 3, 2, -1, 17)), (1, 3, 12, 17))
    assert ops(g) == ["reshape"] and g.nodes[0].attrs["shape"] == (1, 3, 2, 6, 17)


def test_identity_kept_only_for_a_returned_tensor():
    g = check(Net(lambda m, x: (m.drop(m.conv(x)), m.drop(x)), conv=nn.Conv2d(3, 3, 1),
                  drop=nn.Dropout()))
    # the dropout on the conv output disappears; the one on the input must stay a node
    assert ops(g) == ["conv2d", "identity"]


def test_no_op_conversions_and_aliases():
    g = check(Net(lambda m, x: m.conv(x.float().to(torch.float32).detach().contiguous()),
                  conv=nn.Conv2d(3, 3, 1)))
    assert ops(g) == ["conv2d"]


def test_model_returning_its_input_twice():
    g = check(Net(lambda m, x: (x, m.conv(x), x), conv=nn.Conv2d(3, 3, 1)))
    assert len(set(g.outputs)) == 3 and g.input.name not in g.outputs


# --- names, sources, files -------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return torch.atan(y)  # MARK-atan


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Identity(), Block())

    def forward(self, x):
        return self.stem(x)


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))  # MARK-convbn


def test_node_names_and_sources_are_readable():
    # torch records only forward() frames: the line is the one in ConvBn.forward
    g = check(Net(lambda m, x: m.block(x), block=ConvBn()))
    node = g.nodes[0]
    # the BN folded into the conv: the conv node now produces the BN's tensor
    assert node.name == "convolution" and g.outputs == ["batch_norm"]
    assert node.source == f"block.conv (Conv2d) at {THIS_FILE}:{line_of('MARK-convbn')}"


def test_unsupported_op_names_op_module_and_line():
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(Outer().eval(), torch.randn(1, 3, 9, 9))
    msg = str(info.value)
    assert info.value.op == "aten.atan.default" and "aten.atan.default" in msg
    assert "stem.1 (Block)" in msg
    assert f"{THIS_FILE}:{line_of('MARK-atan')}" in msg


def test_all_missing_ops_are_listed():
    net = Net(lambda m, x: torch.cumsum(torch.atan(x), 1))
    with pytest.raises(UnsupportedOperatorError, match=r"aten.cumsum.default") as info:
        convert(net, torch.randn(1, 3, 8, 8))
    assert info.value.op == "aten.atan.default"


@pytest.mark.parametrize("fn, op, detail", [
    (lambda m, x: x.reshape(1, 1, 3, 8, 8) + x, "aten.add.Tensor", "ranks"),
    (lambda m, x: x.mean(1), "aten.mean.dim", "dim"),
    (lambda m, x: torch.cat([x, x], 0), "aten.cat.default", "dim"),
    (lambda m, x: F.pad(x, (0, 0, 0, 0, 1, 0)), "aten.constant_pad_nd.default", "pad"),
    (lambda m, x: x.permute(1, 0, 2, 3), "aten.permute.default", "N = 1"),
], ids=["add_ranks", "mean_c", "cat_batch", "pad_channels", "permute_data"])
def test_unsupported_argument_values(fn, op, detail):
    net = Net(fn, up=nn.ConvTranspose2d(3, 3, 2, 2), c1=nn.Conv2d(3, 3, 3))
    net.register_buffer("k", torch.ones(1, 3, 1, 1))
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(net, torch.randn(1, 3, 8, 8))
    if op is not None:
        assert info.value.op == op
        assert detail in str(info.value)
    assert THIS_FILE in str(info.value)


def test_weight_computed_from_the_input_is_a_conversion_error():
    net = Net(lambda m, x: F.conv2d(x, x))
    with pytest.raises(ConversionError, match="aten.convolution.default.*'weight'") as info:
        convert(net, torch.randn(1, 3, 5, 5))
    assert not isinstance(info.value, UnsupportedOperatorError)


@pytest.mark.parametrize("x", [torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8),
                               torch.randn(1, 3, 8, 8, dtype=torch.float64),
                               torch.randn(1, 3, 8, 8).half()],
                         ids=["batch2", "rank3", "float64", "float16"])
def test_input_must_be_one_float32_image(x):
    with pytest.raises(ConversionError, match=r"\(1, C, H, W\) float32"):
        convert(Net(lambda m, x: F.relu(x)), x)


def test_not_a_model_is_a_conversion_error():
    with pytest.raises(ConversionError, match="nn.Module"):
        convert(lambda x: x, torch.randn(1, 3, 8, 8))


def test_convert_writes_a_file_that_reads_back(tmp_path):
    net = Net(lambda m, x: m.fc(torch.flatten(m.pool(F.relu6(m.bn(m.conv(x)))), 1)),
              conv=nn.Conv2d(3, 8, 3, 2, 1), bn=nn.BatchNorm2d(8),
              pool=nn.AdaptiveAvgPool2d(1), fc=nn.Linear(8, 5)).eval()
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "m.h5"
    g = convert(net, x, path)
    back = read_model(path)
    assert [n.op for n in back.nodes] == ops(g)
    with torch.no_grad():
        close_to_torch(run_graph(back, x.numpy())[0], net(x).numpy())


def test_convert_an_exported_program():
    net = Net(lambda m, x: F.relu(m.conv(x)), conv=nn.Conv2d(3, 4, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    ep = torch.export.export(net, (x,))
    g = convert(ep)
    assert g.input.shape == (1, 3, 10, 10)
    with torch.no_grad():
        close_to_torch(run_graph(g, x.numpy())[0], net(x).numpy())
    with pytest.raises(ConversionError, match="exported for"):
        convert(ep, torch.randn(1, 3, 12, 12))


def test_program_exported_in_training_mode_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    ep = torch.export.export(net, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(ConversionError, match="training mode"):
        convert(ep)


# --- checkpoints ----------------------------------------------------------------------------

SMALL_UNET = dict(widths=(4, 8))


def test_checkpoint_pt2(tmp_path):
    net = ZOO["unet"](**SMALL_UNET)
    x = torch.randn(1, 3, 16, 24)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x,)), path)
    source = load_source(path)
    assert isinstance(source, torch.export.ExportedProgram)
    g = convert(source)
    with torch.no_grad():
        close_to_torch(run_graph(g, x.numpy())[0], net(x).numpy())


def test_checkpoint_factory_and_state_dict(tmp_path):
    net = ZOO["unet"]()
    path = tmp_path / "unet.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    loaded = load_source("framedelta.converters.zoo:unet", weights=path)
    assert not loaded.training
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_checkpoint_state_dict_that_does_not_match(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(unet(**SMALL_UNET).state_dict(), path)
    with pytest.raises(ConversionError, match="state dict .* does not match"):
        load_source("framedelta.converters.zoo:unet", weights=path)


@pytest.mark.parametrize("spec, match", [
    ("no_such_package_xyz.models:net", "cannot import module"),
    ("framedelta.converters.zoo:no_such_factory", "has no attribute"),
    ("framedelta.converters.zoo:ZOO", "did not return|not callable|failed|not a torch"),
    ("missing/model.pt2", "does not exist"),
    ("just words", "neither an existing file"),
])
def test_checkpoint_bad_specs(spec, match):
    with pytest.raises(ConversionError, match=match):
        load_source(spec)


def test_checkpoint_missing_weights_file(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        load_source("framedelta.converters.zoo:unet", weights=tmp_path / "nope.pth")


def test_checkpoint_pickled_module_needs_opt_in(tmp_path):
    net = unet(**SMALL_UNET).eval()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ConversionError, match="allow_pickle=True"):
        load_source(path)
    with pytest.raises(ConversionError, match="not a plain state dict"):
        load_source("framedelta.converters.zoo:unet", weights=path)
    loaded = load_source(path, allow_pickle=True)
    assert isinstance(loaded, nn.Module) and not loaded.training


def test_checkpoint_state_dict_given_as_source_says_what_to_do(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(unet(**SMALL_UNET).state_dict(), path)
    with pytest.raises(ConversionError, match="pkg.module:factory"):
        load_source(path)


# --- the zoo -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("resnet18", (1, 3, 64, 96)),
                                         ("mobilenet_v2", (1, 3, 64, 96)),
                                         ("unet", (1, 3, 48, 64))])
def test_zoo_model_converts_and_matches_torch(name, shape):
    net = ZOO[name]()
    g = check(net, shape)
    kinds = set(ops(g))
    assert "batch_norm" not in kinds and "identity" not in kinds
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert n_bn > 0 and ops(g).count("conv2d") == n_conv
    if name == "mobilenet_v2":
        assert "clamp" not in kinds    # every ReLU6 fused into its conv
    if name == "resnet18":
        # the only standalone relus follow the residual adds
        assert ops(g).count("relu") == ops(g).count("add") == 8


def test_zoo_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ZOO["unet"](**SMALL_UNET)
    after = torch.rand(1)
    b = ZOO["unet"](**SMALL_UNET)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.allclose(a.inc[1].running_var, torch.ones_like(a.inc[1].running_var))
