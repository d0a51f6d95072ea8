"""The ONNX importer: models exported from the zoo and small nets at several opsets,
compared with onnxruntime (the project's tolerance); constant folding of shape chains;
the input shape; and every bad input a clear error naming the file (and node).
"""

import numpy as np
import pytest
from conftest import close_to_torch

from framedelta.engine.reference import run_graph
from framedelta.errors import ConversionError, UnsupportedOperatorError

onnx = pytest.importorskip("onnx", reason="the ONNX importer needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the ONNX reference")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import framedelta as fd  # noqa: E402
from framedelta.cli import main  # noqa: E402
from framedelta.converters.onnx import convert  # noqa: E402
from framedelta.converters.onnx.fold import FOLD  # noqa: E402
from framedelta.converters.onnx.rules import ONNX_RULES  # noqa: E402
from framedelta.converters.zoo import ZOO, randomize_bn  # noqa: E402
from framedelta.formats import OPS  # noqa: E402


def session(path_or_model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = path_or_model if isinstance(path_or_model, (str, bytes)) else \
        path_or_model.SerializeToString()
    return ort.InferenceSession(str(data) if not isinstance(data, bytes) else data, opts)


def export(net, shape, path, opset=17, dynamic=False):
    """torch's TorchScript exporter (dynamo=False: no onnxscript needed)."""
    kwargs = {}
    if dynamic:
        kwargs["dynamic_axes"] = {"x": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(net.eval(), (torch.rand(shape),), str(path), dynamo=False,
                      opset_version=opset, input_names=["x"], **kwargs)
    return path


def check(path, shape=None, seed=0):
    """Convert the file, run the graph on the numpy reference, compare every output
    with onnxruntime."""
    graph = convert(path, input_shape=shape)
    x = np.random.default_rng(seed).standard_normal(graph.input.shape).astype(np.float32)
    sess = session(str(path))
    refs = sess.run(None, {sess.get_inputs()[0].name: x})
    ys = run_graph(graph, x)
    assert len(ys) == len(refs)
    for y, r in zip(ys, refs):
        close_to_torch(y, r)
    return graph


class Small(nn.Module):
    """forward(x) = fn(self, x) over a conv-BN-ReLU ``c``, a transposed conv ``u``, a
    linear ``fc``, a PReLU ``p`` and a constant matrix ``w``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.c = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.u, self.fc, self.p = nn.ConvTranspose2d(3, 2, 2, 2), nn.Linear(2, 5), nn.PReLU(4)
        self.register_buffer("w", torch.randn(4, 3))
        randomize_bn(self, seed=1)

    def forward(self, x):
        return self.fn(self, x)


def test_rule_table():
    assert {op for r in ONNX_RULES.values() for op in r.produces} <= set(OPS)
    assert all(r.doc for r in ONNX_RULES.values())
    for op in ("Shape", "Gather", "Unsqueeze", "Concat", "Cast", "Reshape", "Slice"):
        assert op in FOLD


# --- the zoo, exported to ONNX -------------------------------------------------------------

@pytest.mark.parametrize("name, shape, kwargs", [
    ("resnet18", (1, 3, 64, 96), {}),
    ("mobilenet_v2", (1, 3, 64, 96), {}),
    ("mobilenet_v3_small", (1, 3, 64, 96), {}),
    ("unet", (1, 3, 48, 64), {}),
    ("fcn", (1, 3, 64, 96), {}),
    ("deeplabv3", (1, 3, 96, 128), {}),
    ("yolo", (1, 3, 64, 96), dict(img_size=(64, 96))),
])
def test_zoo_model_exported_to_onnx_matches_onnxruntime(name, shape, kwargs, tmp_path):
    path = export(ZOO[name](**kwargs), shape, tmp_path / f"{name}.onnx")
    graph = check(path)
    # an activation counts as present as a node or fused into a convolution's store
    kinds = {n.op for n in graph.nodes} | {n.attrs.get("activation", "none")
                                             for n in graph.nodes}
    assert "batch_norm" not in kinds and "conv2d" in kinds
    if name == "yolo":
        assert "silu" in kinds          # Mul(x, Sigmoid(x)) fused by the shared passes
    if name == "mobilenet_v3_small":
        assert {"hardswish", "hardsigmoid"} <= kinds


# --- small nets at several opsets ----------------------------------------------------------

NETS = {
    "clip_upsample_pad": lambda m, x: F.interpolate(
        F.pad(m.c(x).clamp(-0.5, 0.7), (1, 2, 0, 1), value=0.25), scale_factor=2),
    "bilinear_concat_slice": lambda m, x: torch.cat([F.interpolate(
        m.c(x), scale_factor=2, mode="bilinear", align_corners=False), m.u(x)], 1)[:, 1:5],
    "align_corners_softmax": lambda m, x: F.interpolate(
        m.c(x), size=(11, 13), mode="bilinear", align_corners=True).softmax(1),
    "split_pool_gemm": lambda m, x: m.fc(F.adaptive_avg_pool2d(
        sum(torch.split(m.c(x), 2, 1)), 1).flatten(1)),
    "avgpool_prelu_leaky": lambda m, x: F.leaky_relu(m.p(F.avg_pool2d(
        m.c(x), 3, 1, 1)), 0.2),
    "transpose_matmul": lambda m, x: (m.c(x).flatten(2).transpose(1, 2) @ m.w) * 2,
    "hardsigmoid_sum": lambda m, x: (F.hardsigmoid(m.c(x)) * x.sum(1, keepdim=True)),
}


def small(name):
    return Small(NETS[name])


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 20])
@pytest.mark.parametrize("name", list(NETS))
def test_small_nets_at_each_opset(name, opset, tmp_path):
    if opset == 9 and name in ("align_corners_softmax", "bilinear_concat_slice"):
        pytest.skip("opset 9 has no bilinear resize matching torch's (Upsample linear is "
                    "asymmetric): the exporter refuses it")
    path = export(small(name), (1, 3, 10, 12), tmp_path / "n.onnx", opset)
    check(path)


def test_shape_chains_fold_for_a_dynamic_export(tmp_path):
    # x.view(x.shape[0], 4, -1) with dynamic axes: Shape -> Gather -> Unsqueeze -> Concat
    net = Small(lambda m, x: m.c(x).view(x.shape[0], 4, -1).permute(0, 2, 1) + 1)
    path = export(net, (1, 3, 10, 12), tmp_path / "d.onnx", 13, dynamic=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat"} <= ops
    graph = check(path, shape=(1, 3, 12, 16))
    assert [n.op for n in graph.nodes] == ["conv2d", "reshape", "permute", "add"]


# --- the facade and the command line ----------------------------------------------------

def test_fd_convert_and_the_command_line(tmp_path, capsys):
    path = export(ZOO["fcn"](), (1, 3, 32, 48), tmp_path / "fcn.onnx")
    fd.convert(str(path), path=tmp_path / "a.h5")
    assert main(["convert", str(path), "-o", str(tmp_path / "b.h5")]) in (0, None)
    x = np.random.default_rng(0).random((1, 3, 32, 48), np.float32)
    ya, yb = fd.load(tmp_path / "a.h5").run(x), fd.load(tmp_path / "b.h5").run(x)
    assert np.array_equal(ya, yb)
    sess = session(str(path))
    close_to_torch(ya, sess.run(None, {"x": x})[0])
    assert main(["info", str(tmp_path / "b.h5")]) in (0, None)
    assert "GMACs" in capsys.readouterr().out


def test_input_shape_replaces_a_dynamic_one(tmp_path):
    path = export(small("clip_upsample_pad"), (1, 3, 10, 12), tmp_path / "d.onnx", 17,
                  dynamic=True)
    assert convert(path, input_shape=(1, 3, 20, 24)).input.shape == (1, 3, 20, 24)
    x = torch.rand(1, 3, 16, 16)
    assert fd.convert(str(path), x).input.shape == (1, 3, 16, 16)


# --- bad input ------------------------------------------------------------------------------

def test_unsupported_op_names_op_type_node_and_opset(tmp_path):
    path = export(Small(lambda m, x: torch.atan(m.c(x))), (1, 3, 8, 8),
                  tmp_path / "atan.onnx", 15)
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(path)
    msg = str(info.value)
    assert info.value.op == "Atan"
    assert "/Atan" in msg and "opset 15" in msg and "atan.onnx" in msg


def test_dynamic_input_without_a_shape(tmp_path, capsys):
    path = export(small("clip_upsample_pad"), (1, 3, 10, 12), tmp_path / "dyn.onnx",
                  dynamic=True)
    with pytest.raises(ConversionError, match=r"dyn\.onnx.*dynamic shape.*--input-shape"):
        convert(path)
    assert main(["convert", str(path), "-o", str(tmp_path / "x.h5")]) == 2
    assert "dynamic shape" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_wrong_input_shape(tmp_path):
    path = export(small("clip_upsample_pad"), (1, 3, 10, 12), tmp_path / "s.onnx")
    with pytest.raises(ConversionError, match=r"s\.onnx.*does not fit"):
        convert(path, input_shape=(1, 4, 10, 12))
    with pytest.raises(ConversionError, match=r"s\.onnx.*\(1, C, H, W\)"):
        convert(path, input_shape=(2, 3, 10, 12))


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_file(tmp_path, cut):
    path = export(ZOO["fcn"](), (1, 3, 32, 48), tmp_path / "full.onnx")
    data = path.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ConversionError, match=r"cut\.onnx"):
        convert(bad)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all\x00\xff" * 10])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ConversionError, match=r"bad\.onnx"):
        convert(bad)
    with pytest.raises(ConversionError, match="no such"):
        convert(tmp_path / "absent.onnx")


def test_external_data_is_refused(tmp_path):
    path = export(ZOO["fcn"](), (1, 3, 32, 48), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    ext = tmp_path / "ext.onnx"
    onnx.save(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    with pytest.raises(ConversionError, match=r"ext\.onnx.*external data"):
        convert(ext)


def test_opset_out_of_range(tmp_path):
    path = export(small("clip_upsample_pad"), (1, 3, 10, 12), tmp_path / "o.onnx", 13)
    model = onnx.load(str(path))
    model.opset_import[0].version = 8
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ConversionError, match=r"old\.onnx.*opset 8"):
        convert(tmp_path / "old.onnx")


def _hand_made(tmp_path, nodes, opset=17, name="h.onnx"):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def test_cast_to_float_is_an_identity_and_other_casts_are_refused(tmp_path):
    from onnx import TensorProto, helper
    path = _hand_made(tmp_path, [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
                                 helper.make_node("Relu", ["c"], ["y"])])
    assert [n.op for n in check(path).nodes] == ["relu"]
    path = _hand_made(tmp_path, [helper.make_node("Cast", ["x"], ["y"], name="to_int",
                                                  to=TensorProto.INT64)], name="i.onnx")
    with pytest.raises(UnsupportedOperatorError, match="to_int.*opset 17.*float32"):
        convert(path)


def test_custom_domain_is_named(tmp_path):
    from onnx import helper
    path = _hand_made(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="mine",
                                                  domain="com.example")])
    with pytest.raises(UnsupportedOperatorError, match="'mine'.*com.example"):
        convert(path)
