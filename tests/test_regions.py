"""Region re-run (engine/regions.py): exact with margin="exact", measured otherwise.

Property tests over random fully convolutional graphs (strides, dilation, asymmetric
and oversized padding, pooling with ceil_mode, transposed convolutions, integer
resizes, pixel (un)shuffle, concats, residual arithmetic, several outputs) and random
changes (borders included): every ``step(x)`` equals ``run(reference_input)``. Any
graph at all either runs exactly or is refused at ``stream()`` naming a node.
"""

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from framedelta.engine.model import Model
from framedelta.engine.crops import reshaped_graph
from framedelta.engine.regions import RegionStats
from framedelta.formats.graph import Graph, InputSpec, Node, Preprocess, check_graph
from test_stream import (MAKERS, GraphBuilder, _frames, _small_model, assert_close,
                         assert_identical, frame_sequences, graphs, stream_settings)


def make_binary_fc(b, x, op):
    """a OP b of two equal-shape tensors, a 1-channel map, or a per-channel constant."""
    n, c, h, w = b.shapes[x]
    kind = b.draw(st.sampled_from(["tensor", "map", "const"]))
    if kind == "tensor":
        return b.add(op, [x, b.draw(st.sampled_from(b.same_shape(x)))], {})
    if kind == "map":
        m = b.add("conv2d", [x], {"out_channels": 1, "kernel": (1, 1), "stride": (1, 1),
                                  "pads": (0, 0, 0, 0), "dilation": (1, 1)})
        return b.add(op, [m, x] if b.draw(st.booleans()) else [x, m], {})
    shape = (1, c if b.draw(st.booleans()) else 1, 1, 1)
    other = (b.rng.standard_normal(shape) + (2.0 if op == "div" else 0.0)).astype(np.float32)
    return b.add(op, [x], {"other_shape": shape, "reverse": b.draw(st.integers(0, 1))},
                 {"other": other})


def make_resize_fc(b, x, op):
    h, w = b.shapes[x][2:]
    if h * w > 400:
        return None
    f = b.draw(st.integers(1, 3))
    a = {"size": (h * f, w * f), "scales": (1.0 / f, 1.0 / f)}
    if op == "upsample_bilinear":
        a["align_corners"] = 0
    return b.add(op, [x], a)


FC_OPS = ["conv2d", "conv2d", "conv2d", "dwconv", "max_pool2d", "relu", "clamp",
          "batch_norm", "concat", "pixel_shuffle", "pixel_unshuffle", "layer_norm",
          "leaky_relu", "prelu", "sigmoid", "silu", "hardswish", "gelu",
          "conv_transpose2d", "conv_transpose2d", "avg_pool2d", "pad"]
FC_MAKERS = {**{op: MAKERS[op] for op in FC_OPS},
             **{op: (lambda o: lambda b, x: make_binary_fc(b, x, o))(op)
                for op in ("add", "sub", "mul", "div")},
             "softmax": lambda b, x: b.add("softmax", [x], {"axis": 1}),
             "upsample_nearest": lambda b, x: make_resize_fc(b, x, "upsample_nearest"),
             "upsample_bilinear": lambda b, x: make_resize_fc(b, x, "upsample_bilinear")}
FC_CHOICES = FC_OPS + ["add", "mul", "sub", "div", "softmax", "upsample_nearest",
                       "upsample_bilinear"]


@st.composite
def fc_graphs(draw, max_nodes=6):
    """Random fully convolutional graphs on frames of 16x24 .. 40x56."""
    data = draw(st.data())
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(16, 40)), draw(st.integers(24, 56))
    b = GraphBuilder(data, c, h, w)
    for _ in range(draw(st.integers(1, max_nodes))):
        op = draw(st.sampled_from(FC_CHOICES))
        FC_MAKERS[op](b, b.pick())
    if not b.nodes:
        b.add("relu", ["x"], {})
    outputs = [b.nodes[-1].outputs[0]]
    extra = [n.outputs[0] for n in b.nodes[:-1] if n.outputs[0] in b.spatial]
    if extra and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(extra)))
    g = Graph(InputSpec("x", (1, c, h, w)), b.nodes, outputs)
    check_graph(g)
    return g


def bit_exact_under_shifts(g):
    """False when a bilinear resize's factor is not a power of two: its source position
    scale * (d + 0.5) - 0.5 is rounded to float32 by magnitude, so a crop's tap weights
    can differ from the frame's by an ulp (within the tolerance, not bit for bit)."""
    for n in g.nodes:
        if n.op == "upsample_bilinear":
            f = round(1 / n.attrs["scales"][0]), round(1 / n.attrs["scales"][1])
            if any(k & (k - 1) for k in f):
                return False
    return True


def _eager(stream):
    """Small crops and no per-crop overhead in the merge cost: many crops, many shapes."""
    stream.plan.quantum = stream.plan.alignment
    stream.plan.crop_overhead = 0
    return stream


@given(data=st.data())
def test_exact_margin_equals_run_of_reference_input(data):
    g = data.draw(fc_graphs())
    note([(n.name, n.op, n.attrs) for n in g.nodes])
    frames = data.draw(frame_sequences(g.input.shape))
    settings = data.draw(stream_settings())
    model = Model(g, n_threads=data.draw(st.sampled_from([1, 2])),
                  m_tile=data.draw(st.sampled_from([None, 3, 16])))
    s = model.stream(mode="regions", **settings)
    if data.draw(st.booleans()):
        _eager(s)
    bitwise = bit_exact_under_shifts(g)
    for i, x in enumerate(frames):
        y = s.step(x)
        ref = model.run(s.reference_input)
        if i:
            ch = s.last_change_mask
            note(f"frame {i}: crops {s.last_stats.regions}, changed rows "
                 f"{np.nonzero(ch.any(1))[0]} cols {np.nonzero(ch.any(0))[0]}")
        assert_close(y, ref, f"frame {i}")
        if bitwise:
            # the crops run the same kernels on the same operands: bit for bit
            assert_identical(y, ref, f"frame {i}")
        st_ = s.last_stats
        assert isinstance(st_, RegionStats)
        for y0, x0, y1, x1 in st_.regions:
            assert 0 <= y0 < y1 <= g.input.shape[2] and 0 <= x0 < x1 <= g.input.shape[3]
            assert y0 % s.plan.alignment[0] == 0 and x0 % s.plan.alignment[1] == 0
    s.reset()
    assert s.reference_input is None
    assert_identical(s.step(frames[-1]), model.run(frames[-1]), "after reset")
    assert s.last_stats.macs == s.last_stats.dense_macs


@given(data=st.data())
def test_any_graph_runs_exactly_or_is_refused_naming_a_node(data):
    g = data.draw(graphs(max_nodes=6))
    model = Model(g)
    try:
        s = model.stream(mode="regions")
    except ValueError as e:
        m = re.search(r"node '([^']+)'", str(e))
        assert m and m.group(1) in {n.name for n in g.nodes}, str(e)
        assert "cannot run" in str(e)
        return
    frames = data.draw(frame_sequences(g.input.shape, max_frames=3))
    _eager(s)
    check = assert_identical if bit_exact_under_shifts(g) else assert_close
    for i, x in enumerate(frames):
        check(s.step(x), model.run(s.reference_input), f"frame {i}")


def _scaled_small_model(h=96, w=128, n_threads=1):
    """test_stream's small model (strides 2 and 2, max pool, bilinear x2, concat; RF
    reach 12) on a frame big enough for crops to pay."""
    m = _small_model()
    return Model(reshaped_graph(m.graph, m.shapes, h, w), n_threads=n_threads)


def test_changes_at_every_border_and_corner():
    model = _scaled_small_model()
    s = _eager(model.stream(mode="regions", threshold=0.0))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(model.input_shape).astype(np.float32)
    s.step(x)
    h, w = model.input_shape[2:]
    for y0, x0 in [(0, 0), (0, w - 3), (h - 3, 0), (h - 3, w - 3), (0, w // 2),
                   (h // 2, 0), (h - 1, w // 2), (h // 2, w - 1)]:
        x = x.copy()
        x[..., y0:y0 + 3, x0:x0 + 3] += 1.0
        y = s.step(x)
        assert s.last_stats.cropped_fraction < 0.5, s.last_stats.regions
        assert_identical(y, model.run(x), f"change at {(y0, x0)}")


def test_exact_margin_reach_and_integer_margins():
    model = _scaled_small_model()
    exact = model.stream(mode="regions", threshold=8, detector="block", block=8)
    top, left, bottom, right = exact.exact_margin
    assert 0 < top <= 16 and 0 < left <= 16 and bottom > 0 and right > 0
    wide = model.stream(mode="regions", threshold=8, detector="block", block=8,
                        margin=max(exact.exact_margin), check_every=1)
    narrow = model.stream(mode="regions", threshold=8, detector="block", block=8,
                          margin=0, check_every=1)
    _eager(narrow)
    devs = []
    for f in _frames(12, h=96, w=128):
        y = exact.step(f)
        assert_identical(y, model.run(exact.reference_input))
        wide.step(f)
        assert wide.last_stats.check.exact and wide.last_check is wide.last_stats.check
        narrow.step(f)
        d = narrow.last_stats.check
        assert d is not None and 0 <= d.max_abs and 0 <= d.rel_l2 and 0 <= d.label_agreement <= 1
        devs.append(d.max_abs)
    # a margin of 0 loses the context of a 12-pixel reach: measured, not hidden
    assert max(devs) > 1e-3


def test_check_every_only_on_its_steps():
    model = _scaled_small_model()
    s = model.stream(mode="regions", threshold=8, margin=4, check_every=3)
    checks = []
    for f in _frames(6, h=96, w=128):
        s.step(f)
        checks.append(s.last_stats.check is not None)
    assert checks == [False, False, True, False, False, True]


def _model(nodes, outputs, shape=(1, 3, 32, 48)):
    return Model(Graph(InputSpec("x", shape), nodes, outputs))


def _conv(i, o, cin=3, cout=4, k=3, s=1, p=1):
    rng = np.random.default_rng(0)
    return Node(f"conv_{o}", "conv2d", [i], [o],
                {"out_channels": cout, "kernel": (k, k), "stride": (s, s),
                 "pads": (p, p, p, p), "dilation": (1, 1)},
                {"weight": rng.standard_normal((cout, cin, k, k)).astype(np.float32),
                 "bias": rng.standard_normal(cout).astype(np.float32)})


def test_global_op_and_non_spatial_outputs_are_refused_naming_the_node():
    gap = _model([_conv("x", "a"), Node("pool", "global_avg_pool", ["a"], ["g"],
                                        {"keepdim": 1}),
                  Node("scale", "mul", ["a", "g"], ["y"], {})], ["y"])
    with pytest.raises(ValueError, match=r"node 'pool' \(global_avg_pool\).*global"):
        gap.stream(mode="regions")
    head = _model([_conv("x", "a"), Node("flat", "reshape", ["a"], ["f"],
                                         {"shape": (1, 4 * 32 * 48)})], ["f"])
    with pytest.raises(ValueError, match=r"node 'flat' \(reshape\).*not an image"):
        head.stream(mode="regions")
    ac = _model([_conv("x", "a"), Node("up", "upsample_bilinear", ["a"], ["u"], {
        "size": (64, 96), "align_corners": 1, "scales": (0.5, 0.5)})], ["u"])
    with pytest.raises(ValueError, match=r"node 'up'.*align_corners"):
        ac.stream(mode="regions")
    grid = _model([_conv("x", "a"), Node("grid", "add", ["a"], ["y"], {
        "other_shape": (1, 4, 32, 48)}, {"other": np.zeros((1, 4, 32, 48), np.float32)})],
        ["y"])
    with pytest.raises(ValueError, match=r"node 'grid'.*constant operand"):
        grid.stream(mode="regions")
    # the layer-wise mode runs them all
    for m in (gap, head, ac, grid):
        m.stream().step(np.zeros(m.input_shape, np.float32))


def test_bad_mode_and_margin():
    model = _small_model()
    for margin in ("big", -1, 1.5, True, None.__class__):
        with pytest.raises(ValueError, match="margin"):
            model.stream(mode="regions", margin=margin)
    with pytest.raises(ValueError, match="regions"):
        model.stream(margin=8)
    with pytest.raises(ValueError, match="regions"):
        model.stream(mode="layers", margin="exact")
    with pytest.raises(ValueError, match="mode"):
        model.stream(mode="crops")
    with pytest.raises(ValueError, match="check_every"):
        model.stream(mode="regions", check_every=0)
    with pytest.raises(ValueError, match="threshold"):
        model.stream(mode="regions", threshold=-1)


def test_stats_several_outputs_and_uint8_frames():
    m = _scaled_small_model()
    g = m.graph
    # a second output at stride 2 (the first conv), a third at stride 4 (the pool)
    model = Model(Graph(g.input, g.nodes, ["f", "a", "c"]), n_threads=1)
    s = model.stream(mode="regions", threshold=8, detector="block", block=8)
    for i, f in enumerate(_frames(8, h=96, w=128)):
        y = s.step(f)
        assert isinstance(y, tuple) and len(y) == 3
        assert_identical(y, model.run(s.reference_input), f"frame {i}")
        assert s.reference_input.dtype == np.uint8
    st_ = s.last_stats
    assert 0 < st_.input_changed_fraction < 1
    assert 0 < st_.cropped_fraction < 1 and st_.regions
    area = sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in st_.regions)
    assert st_.cropped_fraction == pytest.approx(area / (96 * 128))
    assert 0 < st_.macs < st_.dense_macs and st_.mac_ratio > 1
    assert st_.prepare_seconds >= 0 and st_.seconds > 0
    assert s.cache_bytes >= sum(np.prod(model.shapes[t]) * 4 for t in ("f", "a", "c"))
    assert s.last_change_mask.shape == (96, 128)
    assert s.deepest_dirty_mask().any()
    # nothing changed: nothing runs
    s.step(f)
    assert s.last_stats.macs == 0 and s.last_stats.regions == []


def test_crop_models_are_cached_by_shape():
    model = _scaled_small_model()
    s = model.stream(mode="regions", threshold=8, detector="block", block=8)
    for f in _frames(20, h=96, w=128):
        s.step(f)
    plan = model.region_plan()
    assert plan is s.plan
    # quantised crop shapes: far fewer prepared models than crops run
    assert 1 <= len(plan.crop_shapes) <= len(plan.prepare_seconds)
    for h, w in plan.crop_shapes:     # lengths differ from the frame's by whole strides
        assert (96 - h) % plan.alignment[0] == 0 and (128 - w) % plan.alignment[1] == 0
    assert 0 < plan.cache_bytes <= plan.max_crop_bytes + _packed_bytes(plan)
    assert model.crop_cache_bytes == plan.cache_bytes


def _packed_bytes(plan):
    from framedelta.engine.packs import packed_arrays
    return sum(a.nbytes for a in packed_arrays(plan._packs))


def test_crop_models_share_packed_weights_and_stay_within_their_bytes():
    """Each crop model once packed its own weights and the cache counted models, not
    bytes (a U-Net grew 10.5 GiB in 178 frames): now one packed copy serves every
    shape, and the activation buffers stay within max_crop_bytes."""
    from framedelta.engine.crops import RegionPlan
    from framedelta.engine.model import held_arrays
    model = _scaled_small_model()
    plan = RegionPlan(model, max_crop_bytes=1)      # room for the crop in use only
    shapes = [(48, 64), (64, 64), (48, 96), (64, 96)]
    models = [plan.crop_model(h, w)[0][0] for h, w in shapes]
    assert plan.crop_shapes == [shapes[-1]]
    convs = [[id(a) for (node, run, _) in m._steps if node.op == "conv2d"
              for a in held_arrays(run) if a.ndim == 2] for m in models]
    assert convs[0] and all(c == convs[0] for c in convs)       # the same arrays
    own = sum(out.nbytes for _, _, out in models[-1]._steps)
    assert own <= plan.cache_bytes - _packed_bytes(plan) <= own + 4096
    # a byte budget for two models of the biggest shape keeps at most two
    big = sum(out.nbytes for _, _, out in models[-1]._steps)
    plan = RegionPlan(model, max_crop_bytes=2 * big + 1024)
    for h, w in shapes * 2:
        plan.crop_model(h, w)
        assert plan.cache_bytes - _packed_bytes(plan) <= 2 * big + 1024
    assert 2 <= len(plan.crop_shapes) <= 3
    # the model reports what its region streams' crop models hold
    s = model.stream(mode="regions", threshold=8, detector="block", block=8)
    for f in _frames(6, h=96, w=128):
        s.step(f)
    assert model.crop_cache_bytes == model.region_plan().cache_bytes > 0
    assert model.memory_bytes > model.crop_cache_bytes + model.footprint.activation_bytes // 2


def test_pnet_trained_weights_exact_on_a_synthetic_scene(tmp_path):
    torch = pytest.importorskip("torch")
    import framedelta as fd
    from framedelta.converters.zoo.pnet import (PNET_MISSING, pnet, pnet_preprocess,
                                                 pnet_weights_path)
    if pnet_weights_path() is None:
        pytest.skip(PNET_MISSING)
    h, w = 120, 160
    fd.convert(pnet(), torch.rand(1, 3, h, w), tmp_path / "pnet.h5",
               preprocess=pnet_preprocess())
    model = fd.load(tmp_path / "pnet.h5", n_threads=1)
    s = model.stream(mode="regions", threshold=8, detector="block", block=8)
    assert s.exact_margin == (5, 5, 6, 6) or max(s.exact_margin) <= 12
    fracs = []
    for i, f in enumerate(_frames(10, h=h, w=w)):
        y = s.step(f)
        assert_identical(y, model.run(s.reference_input), f"frame {i}")
        fracs.append(s.last_stats.cropped_fraction)
    assert min(fracs[1:]) < 0.6


def test_cli_run_mode_regions(tmp_path):
    torch = pytest.importorskip("torch")
    cv2 = pytest.importorskip("cv2")
    import framedelta as fd
    from framedelta.converters.zoo import unet
    net = unet(widths=(4, 8, 16, 32)).eval()
    fd.convert(net, torch.rand(1, 3, 64, 96), tmp_path / "unet.h5", preprocess=Preprocess())
    video = tmp_path / "clip.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for f in _frames(6, h=64, w=96):
        wr.write(f)
    wr.release()
    for margin in ("exact", "8"):
        r = subprocess.run([sys.executable, "-m", "framedelta.cli", "run",
                            tmp_path / "unet.h5", video, "--mode", "regions", "--margin",
                            margin, "--check-every", "2"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "regions" in r.stdout and "cropped" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "framedelta.cli", "run", tmp_path / "unet.h5",
                        video, "--margin", "8"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "regions" in r.stderr


def test_threads_do_not_change_results_with_crops_run_at_once():
    outs, regions = [], []
    for n_threads in (1, 2):
        model = _scaled_small_model(n_threads=n_threads)
        s = _eager(model.stream(mode="regions", threshold=8, detector="block", block=8))
        ys = []
        rng = np.random.default_rng(3)
        base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        for t in range(8):                # two objects far apart: two crops
            f = base.copy()
            f[8:20, 8 + 3 * t:20 + 3 * t] = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            f[70:84, 100 - 3 * t:112 - 3 * t] = 255
            ys.append(s.step(f))
            regions.append(len(s.last_stats.regions))
        outs.append(ys)
    assert max(regions) >= 2          # several crops in one step: run at once on 2 threads
    for a, b in zip(*outs):
        assert_identical(a, b, "1 vs 2 threads")
