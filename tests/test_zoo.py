"""The model zoo end to end: each architecture, written in plain PyTorch and converted
unmodified, runs dense equal to torch, incrementally equal to dense on a moving object,
and reports the MACs and receptive fields `framedelta info` prints; checkpoints of zoo
models convert through the command line; an op without a rule says where it is.

Inputs are small (64x96, or 96x128 where the map would be too small to be worth a
test) and stride-aligned where the architecture needs it; each model is converted
once for the whole file.
"""

import copy
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
from conftest import close_to_torch

import framedelta as fd
from framedelta.engine.model import Model
from framedelta.errors import UnsupportedOperatorError
from framedelta.info import describe, format_table

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from framedelta.cli import main  # noqa: E402
from framedelta.converters import convert  # noqa: E402
from framedelta.converters.zoo import ZOO  # noqa: E402
from framedelta.converters.zoo.segmentation import aspp_rates  # noqa: E402

THIS_FILE = Path(__file__).name


# name: factory kwargs, input shape, format ops the graph must hold, the module whose
# output the receptive-field check follows (None: the output), whether a global op comes
# before the end, and whether that module's centre sees its whole receptive field (it
# lies inside the frame: the gradient then spans exactly the reported size)
CASES = {
    "resnet18": dict(
        kwargs={}, shape=(1, 3, 64, 96),
        ops={"conv2d", "max_pool2d", "add", "relu", "global_avg_pool", "linear"},
        probe="layer3", global_tail=True),
    "mobilenet_v2": dict(
        kwargs={}, shape=(1, 3, 64, 96), ops={"conv2d", "add", "global_avg_pool", "linear"},
        probe="features.3", global_tail=True, rf_exact=True),
    "unet": dict(
        kwargs={}, shape=(1, 3, 48, 64),
        ops={"conv2d", "max_pool2d", "upsample_bilinear", "concat"},
        probe=None, global_tail=False),
    "mobilenet_v3_small": dict(
        kwargs={}, shape=(1, 3, 64, 96),
        ops={"conv2d", "hardswish", "hardsigmoid", "mul", "global_avg_pool", "linear"},
        probe="features.1.block.0", global_tail=True, rf_exact=True),
    "efficientnet_b0": dict(
        kwargs={}, shape=(1, 3, 64, 96),
        ops={"conv2d", "silu", "sigmoid", "mul", "global_avg_pool", "linear"},
        probe="features.1.0.block.0", global_tail=True, rf_exact=True),
    "deeplabv3": dict(
        kwargs=dict(atrous_rates=aspp_rates(16, feature_size=6)), shape=(1, 3, 96, 128),
        ops={"conv2d", "max_pool2d", "global_avg_pool", "upsample_bilinear", "concat", "add"},
        probe="backbone.layer4", global_tail=True),
    "yolo": dict(
        kwargs=dict(img_size=(64, 96)), shape=(1, 3, 64, 96),
        ops={"conv2d", "silu", "max_pool2d", "upsample_nearest", "concat", "sigmoid"},
        probe="detect.m.0", global_tail=True),
    "fcn": dict(
        kwargs={}, shape=(1, 3, 64, 96), ops={"conv2d", "conv_transpose2d", "add"},
        probe=None, global_tail=False),
    # anchors built at forward time (arange, meshgrid, full, casts) fold to constants;
    # the DFL softmax, the reshapes and the box decoding are the tail after the sparse part
    "yolov8n": dict(
        kwargs={}, shape=(1, 3, 64, 96),
        ops={"conv2d", "silu", "max_pool2d", "upsample_nearest", "concat", "softmax",
             "sigmoid", "sub", "reshape", "permute"},
        probe="model.22.cv2.0", global_tail=True),
}


class Converted:
    def __init__(self, name):
        case = CASES[name]
        self.name, self.case = name, case
        self.net = ZOO[name](**case["kwargs"])
        self.x = torch.rand(case["shape"], generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            ref = self.net(self.x)
        self.refs = [r.numpy() for r in outputs(ref)]
        self.graph = convert(self.net, self.x)
        self.model = Model(self.graph)


_CONVERTED = {}


@pytest.fixture(params=sorted(CASES))
def zoo(request):
    """The converted model, once per model for the whole file."""
    name = request.param
    if name not in _CONVERTED:
        try:
            _CONVERTED[name] = Converted(name)
        except Exception as e:      # the model's other tests fail the same way, at once
            _CONVERTED[name] = e
    if isinstance(_CONVERTED[name], Exception):
        raise _CONVERTED[name]
    return _CONVERTED[name]


def outputs(y):
    """A model's outputs as a flat list (YOLOv8 returns (y, [p3, p4, p5]))."""
    if isinstance(y, (tuple, list)):
        return [t for part in y for t in outputs(part)]
    return [y]


# --- dense -----------------------------------------------------------------------------------

def test_dense_matches_torch(zoo):
    ys = outputs(zoo.model.run(zoo.x.numpy()))
    assert len(ys) == len(zoo.refs)
    for y, ref in zip(ys, zoo.refs):
        close_to_torch(y, ref)
    # an activation counts as present as a node or fused into a convolution's store
    kinds = {n.op for n in zoo.graph.nodes} | {n.attrs.get("activation", "none")
                                                 for n in zoo.graph.nodes}
    assert zoo.case["ops"] <= kinds, zoo.case["ops"] - kinds
    # every BatchNorm of these models follows a convolution and folds into it
    assert "batch_norm" not in kinds


def test_dense_details_of_each_architecture(zoo):
    g, net = zoo.graph, zoo.net
    convs = [n for n in g.nodes if n.op == "conv2d"]
    if zoo.name == "deeplabv3":
        rates = {n.attrs["dilation"][0] for n in convs}
        assert {2} | set(zoo.case["kwargs"]["atrous_rates"]) <= rates   # layer4 and ASPP
        # ASPP's image pooling is broadcast back, the logits upsampled to the input
        ups = [n for n in g.nodes if n.op == "upsample_bilinear"]
        assert [tuple(n.attrs["size"]) for n in ups][-1] == zoo.case["shape"][2:]
    if zoo.name == "yolo":
        assert len(g.outputs) == 3
        pools = [n for n in g.nodes if n.op == "max_pool2d"]
        assert len(pools) == 3 and all(tuple(n.attrs["kernel"]) == (5, 5) for n in pools)
    if zoo.name == "yolov8n":
        # (1, 4 + 80, N) boxes and scores, then the three raw maps; no op from the anchors
        n = sum((64 // s) * (96 // s) for s in (8, 16, 32))
        assert len(g.outputs) == 4 and zoo.refs[0].shape == (1, 84, n)
        assert not {"expand", "linear"} & {m.op for m in g.nodes}
        # the anchors Detect caches during the export are not left on the module
        fresh = ZOO["yolov8n"]()
        convert(fresh, zoo.x)
        assert fresh.model[22].shape is None
        with torch.no_grad():
            close_to_torch(fresh(zoo.x)[0], zoo.refs[0])
    if zoo.name == "fcn":
        ups = [n for n in g.nodes if n.op == "conv_transpose2d"]
        assert len(ups) == len(net.upscore) == 3
    if zoo.name == "efficientnet_b0":
        kernels = {(tuple(n.attrs["kernel"]), tuple(n.attrs["stride"])) for n in convs
                   if n.attrs["groups"] > 1}
        assert ((5, 5), (2, 2)) in kernels and ((3, 3), (2, 2)) in kernels
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert len(convs) + sum(n.op == "linear" for n in g.nodes) >= n_conv


# --- incremental ------------------------------------------------------------------------------

def moving_object(shape, n_frames=4, seed=0):
    """A static textured background with a textured rectangle moving across it."""
    _, c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([np.sin(xx / (5 + i) + i) * np.cos(yy / (7 + i)) for i in range(c)])
    bg += 0.1 * rng.standard_normal((c, h, w)).astype(np.float32)
    oh, ow = max(4, h // 4), max(4, w // 5)
    obj = rng.uniform(-1, 1, (c, oh, ow)).astype(np.float32)
    frames = []
    for t in range(n_frames):
        f = bg.copy()
        y0, x0 = h // 3 + t, w // 4 + 3 * t
        f[:, y0:y0 + oh, x0:x0 + ow] = obj
        frames.append(f[None].astype(np.float32))
    return frames


@pytest.mark.parametrize("detector", ["pixel", "block"])
def test_stream_equals_dense_on_a_moving_object(zoo, detector):
    s = zoo.model.stream(threshold=0.0 if detector == "pixel" else 0.02, detector=detector,
                         block=8)
    for frame in moving_object(zoo.case["shape"]):
        ys = outputs(s.step(frame))
        refs = outputs(zoo.model.run(s.reference_input))
        for y, ref in zip(ys, refs):
            np.testing.assert_array_equal(y, ref)
    stats = s.last_stats
    assert 0 < stats.input_changed_fraction < 0.2
    # even the squeeze-excitation nets save their stem's work before the first global op
    # (at these small sizes most receptive fields cover the whole frame: no more to ask)
    assert stats.mac_ratio > 1.0
    first = next(n for n in stats.nodes if n.op == "conv2d")
    assert first.active_fraction < 0.5


# --- framedelta info ---------------------------------------------------------------------------

def torch_macs(net, x):
    """Multiply-accumulates of the convolutions and linear layers, from forward hooks."""
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] \
                * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] \
                * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def gradient_extent(net, x, module_path):
    """(rows, cols) of input pixels with a nonzero gradient of the centre position of
    ``module_path``'s output (the whole output when None), summed over channels."""
    x = x.clone().double().requires_grad_(True)
    net = copy.deepcopy(net).double()
    got = {}
    if module_path is not None:
        net.get_submodule(module_path).register_forward_hook(
            lambda m, i, o: got.setdefault("y", o))
    y = net(x)
    y = got.get("y", y)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    g = x.grad[0].abs().sum(0)
    rows, cols = np.nonzero(g.numpy())
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_info_macs_and_receptive_fields(zoo):
    rows = describe(zoo.graph)
    conv_macs = sum(r.macs for r in rows if r.op in ("conv2d", "conv_transpose2d", "linear"))
    assert conv_macs == torch_macs(zoo.net, zoo.x)
    total = sum(r.macs for r in rows)
    assert total >= conv_macs
    text = format_table(zoo.graph)
    assert f"total {total / 1e9:.3f} GMACs in {len(rows)} nodes" in text
    assert "largest receptive field" in text
    assert ("sparsity ends at" in text) == zoo.case["global_tail"]

    # the receptive field framedelta reports holds every input pixel that matters
    path = zoo.case["probe"]
    if path is None:
        row = next(r for r in rows if r.name == zoo.graph.outputs[0])
    else:
        row = [r for r in rows if r.source.startswith((path + " ", path + "."))][-1]
    assert row.receptive_field is not None
    rf_h, rf_w = row.receptive_field
    _, _, h, w = zoo.case["shape"]
    assert rf_h <= h and rf_w <= w
    gh, gw = gradient_extent(zoo.net, zoo.x, path)
    assert gh <= rf_h and gw <= rf_w, ((gh, gw), (rf_h, rf_w))
    if zoo.case.get("rf_exact"):
        assert (gh, gw) == (rf_h, rf_w) and rf_h < h and rf_w < w


# --- checkpoints through the command line -----------------------------------------------------

FACTORIES = dedent("""
    from torch import nn
    from framedelta.converters.zoo import mobilenet_v3_small, unet, yolo


    def detector():
        return yolo(num_classes=3, img_size=(64, 96))


    def classifier():
        return mobilenet_v3_small(num_classes=10)


    class IntegralImage(nn.Module):
        def forward(self, x):
            return x.cumsum(2).cumsum(3)  # MARK-cumsum


    class WithIntegralImage(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = unet(widths=(4, 8))
            self.head = IntegralImage()

        def forward(self, x):
            return self.head(self.body(x))


    def integral():
        return WithIntegralImage()
""")


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's module of factories, importable as ``nets``."""
    (tmp_path / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _compare(path, net, x):
    ys = outputs(fd.load(path).run(x.numpy()))
    with torch.no_grad():
        refs = outputs(net(x))
    assert len(ys) == len(refs)
    for y, ref in zip(ys, refs):
        close_to_torch(y, ref.numpy())


@pytest.mark.parametrize("source, zoo_name, kwargs", [
    ("framedelta.converters.zoo:fcn", "fcn", {}),
    ("nets:detector", "yolo", dict(num_classes=3, img_size=(64, 96))),
    ("nets:classifier", "mobilenet_v3_small", dict(num_classes=10)),
])
def test_cli_convert_factory_with_state_dict(user_package, source, zoo_name, kwargs, capsys):
    net = ZOO[zoo_name](seed=3, **kwargs)
    weights = user_package / "ckpt.pth"
    torch.save(net.state_dict(), weights)
    out = user_package / "net.h5"
    assert main(["convert", source, "--weights", str(weights), "--input-shape", "1,3,64,96",
                 "-o", str(out)]) == 0, capsys.readouterr().err
    _compare(out, net, torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5)))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "GMACs" in capsys.readouterr().out


@pytest.mark.parametrize("zoo_name, kwargs", [
    ("deeplabv3", dict(atrous_rates=(1, 2, 3), widths=(8, 16, 32, 64), aspp_channels=16)),
    ("yolo", dict(num_classes=2, img_size=(64, 96))),
])
def test_cli_convert_exported_program(tmp_path, zoo_name, kwargs):
    net = ZOO[zoo_name](seed=4, **kwargs)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x,)), pt2)
    out = tmp_path / "net.h5"
    assert main(["convert", str(pt2), "-o", str(out)]) == 0
    _compare(out, net, x)


def test_detector_built_for_another_size_says_so():
    net = ZOO["yolo"](num_classes=2, img_size=(64, 96))
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():           # eager: the grids follow the input, as in ultralytics
        ys = net(x)
    assert [tuple(y.shape) for y in ys] == [(1, 3 * 32, 7), (1, 3 * 8, 7), (1, 3 * 2, 7)]
    fresh = ZOO["yolo"](num_classes=2, img_size=(64, 96))
    with pytest.raises(fd.ConversionError, match="img_size"):
        convert(fresh, x)


def test_op_without_rule_names_op_module_and_line(user_package, capsys):
    import nets
    with pytest.raises(UnsupportedOperatorError) as info:
        convert(nets.integral().eval(), torch.rand(1, 3, 16, 16))
    line = next(i for i, text in enumerate(FACTORIES.splitlines(), 1)
                if text.endswith("# MARK-cumsum"))
    msg = str(info.value)
    assert info.value.op == "aten.cumsum.default"
    assert "head (IntegralImage)" in msg and f"nets.py:{line}" in msg
    # the command line says the same, and writes nothing
    out = user_package / "x.h5"
    assert main(["convert", "nets:integral", "--input-shape", "1,3,16,16", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "UnsupportedOperatorError" in err and "aten.cumsum.default" in err
    assert f"nets.py:{line}" in err and not out.exists()


# --- the zoo itself ---------------------------------------------------------------------------

def test_every_zoo_model_has_a_case():
    assert set(ZOO) == set(CASES)


def test_aspp_rates_scale_with_the_map():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(16, feature_size=33) == (6, 12, 18)
    assert aspp_rates(16, feature_size=6) == (1, 2, 3)
    assert min(aspp_rates(16, feature_size=1)) == 1


def test_pnet_with_trained_weights_matches_torch(tmp_path):
    from framedelta.converters.zoo.pnet import (PNET_MISSING, pnet, pnet_preprocess,
                                                 pnet_weights_path)
    if pnet_weights_path() is None:
        pytest.skip(PNET_MISSING)
    net = pnet()
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    fd.convert(net, x, tmp_path / "pnet.h5", preprocess=pnet_preprocess())
    model = fd.load(tmp_path / "pnet.h5")
    with torch.no_grad():
        boxes, faces = net(x)
    y_boxes, y_faces = model.run(x.numpy())
    close_to_torch(y_boxes, boxes)
    close_to_torch(y_faces, faces)
    # uint8 frames go through MTCNN's preprocessing: (RGB - 127.5) / 128
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    xf = (torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() - 127.5) / 128
    with torch.no_grad():
        close_to_torch(model.run(frame)[1], net(xf)[1])


@pytest.mark.parametrize("name", ["rnet", "onet"])
def test_rnet_onet_with_trained_weights_on_vtest_crops(name, tmp_path, vtest_path):
    """RNet and ONet classify fixed-size crops (24x24, 48x48); on a fixed camera a
    crop at a fixed place is a stream of its own: dense equals torch, each step equals
    a dense run on the reference input."""
    import importlib

    from framedelta.scenes import video_frames
    mtcnn = importlib.import_module("framedelta.converters.zoo.pnet")   # not the function
    if mtcnn.pnet_weights_path(name) is None:
        pytest.skip(mtcnn.PNET_MISSING)
    net, n = getattr(mtcnn, name)(), mtcnn.MTCNN_SIZES[name]
    fd.convert(net, torch.rand(1, 3, n, n), tmp_path / "m.h5",
               preprocess=mtcnn.pnet_preprocess())
    model = fd.load(tmp_path / "m.h5")
    # where people walk in vtest
    crops = [np.ascontiguousarray(f[200:200 + n, 200:200 + n])
             for f in video_frames(vtest_path, 12)]
    x = (torch.from_numpy(crops[0][..., ::-1].copy()).permute(2, 0, 1)[None].float()
         - 127.5) / 128
    with torch.no_grad():
        refs = net(x)
    for y, ref in zip(outputs(model.run(crops[0])), refs):
        close_to_torch(y, ref)
    s = model.stream(threshold=8, detector="block", block=8)
    for crop in crops:
        for y, ref in zip(outputs(s.step(crop)), outputs(model.run(s.reference_input))):
            np.testing.assert_array_equal(y, ref)
