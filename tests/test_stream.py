"""The incremental path equals the dense path: property tests over random graphs.

For random DAGs over the op set (chains, residual adds, concats, strides, dilation,
asymmetric padding, pooling with ceil_mode, upsampling, global tails), random shapes,
random frame sequences with random changed regions (borders included), random
thresholds and detectors, every ``step(x)`` must equal ``run(reference_input)``; with
threshold 0 it must equal ``run(x)``; the same after ``reset()``, with 1 and 2
threads and with any tile size.
"""

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framedelta.engine.model import Model
from framedelta.formats.graph import Graph, InputSpec, Node, Preprocess, check_graph
from framedelta.formats.ops import CONV_ACTIVATIONS, OPS, SchemaError, resolve_attrs
from test_kernels import window_attrs


def assert_identical(y, ref, what=""):
    """Bit for bit (the sign of a zero included; NaNs equal whatever their payload): each
    position is computed by the same arithmetic in both paths."""
    ys = y if isinstance(y, tuple) else (y,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(ys) == len(refs)
    for a, b in zip(ys, refs):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, what
        nan = np.isnan(a)
        np.testing.assert_array_equal(nan, np.isnan(b), err_msg=f"{what}: NaNs")
        bits = a.view(np.uint32 if a.dtype == np.float32 else np.uint64)
        ref_bits = b.view(bits.dtype)
        diff = (bits != ref_bits) & ~nan
        assert not diff.any(), (f"{what}: {int(diff.sum())} elements differ in their bits, "
                                f"e.g. {a[diff][:3]} vs {b[diff][:3]}")


def assert_close(y, ref, what=""):
    """Within 1e-5 * (1 + max |ref|); inf and NaN (deep random graphs overflow) must
    sit at the same places with the same values."""
    ys = y if isinstance(y, tuple) else (y,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(ys) == len(refs)
    for a, b in zip(ys, refs):
        assert a.shape == b.shape
        fin = np.isfinite(b)
        np.testing.assert_array_equal(a[~fin], b[~fin], err_msg=f"{what}: non-finite values")
        bound = 1e-5 * (1 + float(np.abs(b[fin]).max(initial=0)))
        err = float(np.abs(a[fin] - b[fin]).max(initial=0))
        assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g}"


class GraphBuilder:
    """Draws a random valid graph, one node at a time, from a hypothesis ``data``."""

    def __init__(self, data, c, h, w):
        self.data = data
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="wseed"))
        self.nodes = []
        self.shapes = {"x": (1, c, h, w)}
        self.spatial = ["x"]

    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def add(self, op, inputs, attrs, weights=None):
        schema = OPS[op]
        try:
            full = resolve_attrs(schema, attrs)
            in_shapes = [self.shapes[t] for t in inputs]
            want = schema.weights(full, in_shapes)
            out_shape = tuple(schema.infer(full, in_shapes)[0])
        except SchemaError:
            return None
        if weights is None:
            weights = {k: (self.rng.standard_normal(s) * 0.5).astype(np.float32)
                       for k, s in want.items()}
        name = f"t{len(self.nodes)}"
        self.nodes.append(Node(f"n{len(self.nodes)}", op, list(inputs), [name], attrs, weights))
        self.shapes[name] = out_shape
        if len(out_shape) == 4 and out_shape[2] * out_shape[3] > 0:
            self.spatial.append(name)
        return name

    def pick(self):
        # favour recent tensors so that graphs get deep
        k = self.draw(st.integers(0, min(3, len(self.spatial) - 1)))
        return self.spatial[-1 - k]

    def window(self, max_k=4):
        return window_attrs(self.data, max_k)

    def random_node(self):
        op = self.draw(st.sampled_from(MAKER_CHOICES))
        return MAKERS[op](self, self.pick())

    def same_shape(self, x):
        return [t for t in self.spatial if self.shapes[t] == self.shapes[x]]

    def same_hw(self, x):
        return [t for t in self.spatial if self.shapes[t][2:] == self.shapes[x][2:]]

    def global_tail(self, x):
        c = self.shapes[x][1]
        g = self.add("global_avg_pool", [x], {"keepdim": 1})
        r = self.add("reshape", [g], {"shape": (1, c)})
        return self.add("linear", [r], {"out_features": self.draw(st.integers(1, 6))})


# --- layout-breaking tails, computed whole: permute, expand, matmul ---------
# Spatial makers (pixel shuffle / unshuffle, layer norm over channels), and global tails
# that come back to a rank-4 tensor later nodes read as an image, or end in a head.

def make_pixel_shuffle(b, x):
    r = b.draw(st.integers(1, 3))
    c = b.shapes[x][1]
    if c % (r * r):
        x = b.add("conv2d", [x], {"out_channels": r * r * b.draw(st.integers(1, 2)),
                                  "kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
                                  "dilation": (1, 1)})
    return b.add("pixel_shuffle", [x], {"upscale": r})


def make_pixel_unshuffle(b, x):
    h, w = b.shapes[x][2:]
    r = b.draw(st.sampled_from([r for r in (1, 2, 3) if h % r == 0 and w % r == 0]))
    return b.add("pixel_unshuffle", [x], {"downscale": r})


def make_layer_norm(b, x):
    return b.add("layer_norm", [x], {"axis": 1, "eps": b.draw(st.sampled_from([1e-5, 0.5]))})


def make_tail(b, x):
    """A global detour: permute (and back), a Gram-like bmm, an expanded pooled map
    added back (SE-like), or a YOLO-like head view/permute/view (not spatial: an output)."""
    _, c, h, w = b.shapes[x]
    kind = b.draw(st.sampled_from(["permute", "bmm", "expand", "head", "ln_tokens"]))
    if kind == "permute":
        y = b.add("permute", [x], {"dims": (0, 2, 3, 1)})
        return b.add("permute", [y], {"dims": (0, 3, 1, 2)}) if b.draw(st.booleans()) else y
    if kind == "bmm":
        a = b.add("reshape", [x], {"shape": (c, h, w)})
        t = b.add("permute", [a], {"dims": (0, 2, 1)})
        m = b.add("matmul", [a, t], {})
        return b.add("reshape", [m], {"shape": (1, c, h, h)})
    if kind == "expand":
        g = b.add("global_avg_pool", [x], {"keepdim": 1})
        e = b.add("expand", [g], {"shape": (1, c, h, w)})
        return b.add("add", [x, e], {})
    if kind == "ln_tokens":
        t = b.add("permute", [b.add("reshape", [x], {"shape": (1, c, h * w)})], {"dims": (0, 2, 1)})
        return b.add("layer_norm", [t], {"axis": 2})
    na = b.draw(st.sampled_from([n for n in (1, 2, 3) if c % n == 0]))
    v = b.add("reshape", [x], {"shape": (1, na, c // na, h, w)})
    p = b.add("permute", [v], {"dims": (0, 1, 3, 4, 2)})
    return b.add("reshape", [p], {"shape": (1, na * h * w, c // na)})


# --- random nodes: one maker per op, ``maker(builder, x) -> tensor name or None`` ------
# ``x`` is a spatial tensor of the graph drawn so far; a maker returns None when its
# draw does not fit (builder.add returns None for attributes the schema refuses).

def make_conv2d(b, x, depthwise=False):
    c = b.shapes[x][1]
    a = b.window()
    if b.draw(st.integers(0, 4)) == 0:   # windows wholly in the padding
        a["pads"] = tuple(p + b.draw(st.integers(0, 2)) for p in a["pads"])
    if depthwise:
        a.update(out_channels=c, groups=c)
    else:
        g = b.draw(st.sampled_from([1, 1, 2]))
        g = g if c % g == 0 else 1
        a.update(out_channels=g * b.draw(st.integers(1, 5)), groups=g)
    a["activation"] = b.draw(st.sampled_from(CONV_ACTIVATIONS))
    a.update(act_min=-0.5, act_max=1.0)
    return b.add("conv2d", [x], a)


def make_max_pool2d(b, x):
    a = b.window(3)
    a["ceil_mode"] = b.draw(st.integers(0, 1))
    return b.add("max_pool2d", [x], a)


def make_binary(b, x, op):
    """a OP b with broadcasting: an equal-shape tensor, a (1, C, 1, 1) scale from a
    global branch (squeeze-excitation), a (1, 1, H, W) map, or a constant."""
    n, c, h, w = b.shapes[x]
    kind = b.draw(st.sampled_from(["tensor", "se", "map", "const"]))
    if kind == "tensor":
        return b.add(op, [x, b.draw(st.sampled_from(b.same_shape(x)))], {})
    if kind == "se":
        g = b.add("global_avg_pool", [x], {"keepdim": 1})
        return b.add(op, [x, g] if b.draw(st.booleans()) else [g, x], {})
    if kind == "map":
        m = b.add("conv2d", [x], {"out_channels": 1, "kernel": (1, 1), "stride": (1, 1),
                                  "pads": (0, 0, 0, 0), "dilation": (1, 1)})
        return b.add(op, [m, x] if b.draw(st.booleans()) else [x, m], {})
    shape = tuple(s if b.draw(st.booleans()) else 1 for s in (n, c, h, w))
    other = (b.rng.standard_normal(shape) + (2.0 if op == "div" else 0.0)).astype(np.float32)
    return b.add(op, [x], {"other_shape": shape, "reverse": b.draw(st.integers(0, 1))},
                 {"other": other})


def make_concat(b, x):
    others = b.draw(st.lists(st.sampled_from(b.same_hw(x)), min_size=1, max_size=2))
    return b.add("concat", [x] + others, {"axis": 1})


def make_resize(b, x, op):
    h, w = b.shapes[x][2:]
    f = b.draw(st.integers(1, 3))
    if b.draw(st.booleans()):
        size, scales = (h * f, w * f), (1.0 / f, 1.0 / f)
    else:
        size = (b.draw(st.integers(1, 2 * h + 1)), b.draw(st.integers(1, 2 * w + 1)))
        scales = (h / size[0], w / size[1])
    a = {"size": size, "scales": scales}
    if op == "upsample_bilinear":
        a["align_corners"] = b.draw(st.integers(0, 1))
    return b.add(op, [x], a)


def make_conv_transpose2d(b, x):
    c, h, w = b.shapes[x][1:]
    big = h * w > 300                    # keep chains of upsamplings small
    k = (b.draw(st.integers(1, 4)), b.draw(st.integers(1, 4)))
    s = (1, 1) if big else (b.draw(st.integers(1, 3)), b.draw(st.integers(1, 3)))
    d = (b.draw(st.integers(1, 2)), b.draw(st.integers(1, 2)))
    pads = tuple(b.draw(st.integers(0, d[i % 2] * (k[i % 2] - 1) + 1)) for i in range(4))
    op = tuple(b.draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(2))
    g = b.draw(st.sampled_from([1, 1, 2, "dw"]))
    g = c if g == "dw" else (g if c % g == 0 else 1)
    cout = c if g == c else g * b.draw(st.integers(1, 4))
    return b.add("conv_transpose2d", [x], {
        "out_channels": cout, "kernel": k, "stride": s, "pads": pads, "output_padding": op,
        "dilation": d, "groups": g, "activation": b.draw(st.sampled_from(["none", "relu"]))})


def make_avg_pool2d(b, x):
    k = (b.draw(st.integers(1, 4)), b.draw(st.integers(1, 4)))
    return b.add("avg_pool2d", [x], {
        "kernel": k, "stride": (b.draw(st.integers(1, 3)), b.draw(st.integers(1, 3))),
        "pads": tuple(b.draw(st.integers(0, k[i % 2] // 2)) for i in range(4)),
        "ceil_mode": b.draw(st.integers(0, 1)), "count_include_pad": b.draw(st.integers(0, 1)),
        "divisor": b.draw(st.sampled_from([0, 0, 0, 2]))})


def make_adaptive(b, x, op):
    h, w = b.shapes[x][2:]
    size = (b.draw(st.integers(1, h + 2)), b.draw(st.integers(1, w + 2)))
    return b.add(op, [x], {"size": size})


# op name -> (maker, how often it is drawn relative to the others)
MAKERS_WEIGHTED = {
    "conv2d": (make_conv2d, 3),
    "dwconv": (lambda b, x: make_conv2d(b, x, depthwise=True), 1),
    "max_pool2d": (make_max_pool2d, 1),
    "relu": (lambda b, x: b.add("relu", [x], {}), 1),
    "clamp": (lambda b, x: b.add("clamp", [x], {"min": -0.3, "max": 0.4}), 1),
    "batch_norm": (lambda b, x: b.add("batch_norm", [x], {}), 1),
    "identity": (lambda b, x: b.add("identity", [x], {}), 1),
    "concat": (make_concat, 1),
    "upsample_nearest": (lambda b, x: make_resize(b, x, "upsample_nearest"), 1),
    "upsample_bilinear": (lambda b, x: make_resize(b, x, "upsample_bilinear"), 1),
    # layout-breaking tails, computed whole: permute, expand, matmul
    "pixel_shuffle": (make_pixel_shuffle, 1),
    "pixel_unshuffle": (make_pixel_unshuffle, 1),
    "layer_norm": (make_layer_norm, 1),
    "tail": (make_tail, 3),
    # broadcasting arithmetic (add, sub, mul, div)
    "add": (lambda b, x: make_binary(b, x, "add"), 1),
    "sub": (lambda b, x: make_binary(b, x, "sub"), 1),
    "mul": (lambda b, x: make_binary(b, x, "mul"), 1),
    "div": (lambda b, x: make_binary(b, x, "div"), 1),
    # activations and softmax
    "leaky_relu": (lambda b, x: b.add("leaky_relu", [x], {
        "negative_slope": b.draw(st.sampled_from([0.01, 0.2, -0.5]))}), 1),
    "prelu": (lambda b, x: b.add("prelu", [x], {
        "num_parameters": b.draw(st.sampled_from([1, b.shapes[x][1]]))}), 1),
    "sigmoid": (lambda b, x: b.add("sigmoid", [x], {}), 1),
    "tanh": (lambda b, x: b.add("tanh", [x], {}), 1),
    "silu": (lambda b, x: b.add("silu", [x], {}), 1),
    "hardswish": (lambda b, x: b.add("hardswish", [x], {}), 1),
    "hardsigmoid": (lambda b, x: b.add("hardsigmoid", [x], {}), 1),
    "gelu": (lambda b, x: b.add("gelu", [x], {
        "approximate": b.draw(st.sampled_from(["none", "tanh"]))}), 1),
    # axis 1: per position; 2 or 3: a global node in the middle of a spatial graph
    "softmax": (lambda b, x: b.add("softmax", [x], {
        "axis": b.draw(st.sampled_from([1, 1, 2, 3]))}), 1),
    "log_softmax": (lambda b, x: b.add("log_softmax", [x], {
        "axis": b.draw(st.sampled_from([1, 1, 2, 3]))}), 1),
    "pow": (lambda b, x: b.add("pow", [x], {
        "exponent": b.draw(st.sampled_from([2.0, 3.0, 0.5, -1.0]))}), 1),
    # windows: transposed conv, average pools
    "conv_transpose2d": (make_conv_transpose2d, 2),
    "avg_pool2d": (make_avg_pool2d, 1),
    "adaptive_avg_pool2d": (lambda b, x: make_adaptive(b, x, "adaptive_avg_pool2d"), 1),
    "adaptive_max_pool2d": (lambda b, x: make_adaptive(b, x, "adaptive_max_pool2d"), 1),
    # rearranging and normalising: pad, pixel shuffle, slice, norms
    "pad": (lambda b, x: b.add("pad", [x], {
        "pads": tuple(b.draw(st.integers(0, 3)) for _ in range(4)),
        "value": b.draw(st.sampled_from([0.0, 0.5, -2.0]))}), 1),
    "slice": (lambda b, x: b.add("slice", [x], {         # channels, H or W
        "axis": (ax := b.draw(st.integers(1, 3))),
        "start": (s0 := b.draw(st.integers(0, b.shapes[x][ax] - 1))),
        "end": b.draw(st.integers(s0 + 1, b.shapes[x][ax])),
        "step": b.draw(st.integers(1, 3))}), 2),
    "concat_hw": (lambda b, x: (lambda ax: b.add("concat", [x] + b.draw(st.lists(
        st.sampled_from([t for t in b.spatial      # equal C and the other spatial axis
                         if all(b.shapes[t][i] == b.shapes[x][i] for i in (1, 5 - ax))]),
        min_size=1, max_size=2)), {"axis": ax}))(b.draw(st.integers(2, 3))), 1),
    "group_norm": (lambda b, x: b.add("group_norm", [x], {
        "num_groups": b.draw(st.sampled_from(
            [g for g in range(1, b.shapes[x][1] + 1) if b.shapes[x][1] % g == 0])),
        "eps": 1e-5}), 1),
}
MAKERS = {op: fn for op, (fn, _) in MAKERS_WEIGHTED.items()}
MAKER_CHOICES = [op for op, (_, k) in MAKERS_WEIGHTED.items() for _ in range(k)]


@st.composite
def graphs(draw, max_nodes=8):
    data = draw(st.data())
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(4, 28)), draw(st.integers(4, 28))
    b = GraphBuilder(data, c, h, w)
    for _ in range(draw(st.integers(1, max_nodes))):
        b.random_node()
    if len(b.nodes) == 0:
        b.add("relu", ["x"], {})
    outputs = [b.nodes[-1].outputs[0]]
    extra = [n.outputs[0] for n in b.nodes[:-1]]
    if extra and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(extra)))
    if draw(st.integers(0, 3)) == 0:
        outputs.append(b.global_tail(b.pick()))
    g = Graph(InputSpec("x", (1, c, h, w)), b.nodes, outputs)
    check_graph(g)
    return g


@st.composite
def frame_sequences(draw, shape, max_frames=5):
    """A base frame and changes: random rectangles (borders included) and small noise."""
    _, c, h, w = shape
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal(shape).astype(np.float32)
    frames = [x]
    for _ in range(draw(st.integers(1, max_frames))):
        x = x.copy()
        for _ in range(draw(st.integers(0, 3))):
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
            x[:, :, y0:y1, x0:x1] += rng.standard_normal((1, c, y1 - y0, x1 - x0)).astype(
                np.float32)
        if draw(st.booleans()):
            x += (rng.standard_normal(shape) * 0.05).astype(np.float32)
        frames.append(x)
    return frames


def stream_settings():
    return st.fixed_dictionaries({
        "threshold": st.sampled_from([0.0, 0.0, 0.02, 0.3, 1.0]),
        "detector": st.sampled_from(["pixel", "block"]),
        "block": st.integers(1, 9),
    })


@given(data=st.data())
def test_step_equals_run_of_reference_input(data):
    g = data.draw(graphs())
    frames = data.draw(frame_sequences(g.input.shape))
    settings = data.draw(stream_settings())
    n_threads = data.draw(st.sampled_from([1, 2]))
    m_tile = data.draw(st.sampled_from([None, 1, 3, 16]))
    model = Model(g, n_threads=n_threads, m_tile=m_tile)
    s = model.stream(**settings)
    for i, x in enumerate(frames):
        y = s.step(x)
        assert_close(y, model.run(s.reference_input), f"frame {i}")
        assert_identical(y, model.run(s.reference_input), f"frame {i}")
        if settings["threshold"] == 0.0:
            assert_identical(y, model.run(x), f"frame {i}, threshold 0")
            np.testing.assert_array_equal(s.reference_input, x)
    s.reset()
    assert s.reference_input is None
    y = s.step(frames[-1])
    assert_close(y, model.run(frames[-1]), "after reset")
    assert s.last_stats.macs == s.last_stats.dense_macs


@given(data=st.data())
def test_threads_and_tiles_do_not_change_stream_results(data):
    g = data.draw(graphs())
    frames = data.draw(frame_sequences(g.input.shape, max_frames=3))
    settings = data.draw(stream_settings())
    outs = []
    for n_threads, m_tile in [(1, None), (2, None), (2, 2)]:
        s = Model(g, n_threads=n_threads, m_tile=m_tile).stream(**settings)
        outs.append([s.step(x) for x in frames])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert_close(a, b, "threads/tiles")


def _small_model(n_threads=None):
    rng = np.random.default_rng(0)

    def conv(i, o, cin, cout, k, s=1):
        p = k // 2
        return Node(f"c{o}", "conv2d", [i], [o],
                    {"out_channels": cout, "kernel": (k, k), "stride": (s, s),
                     "pads": (p, p, p, p), "dilation": (1, 1), "activation": "relu"},
                    {"weight": (rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32),
                     "bias": rng.standard_normal(cout).astype(np.float32)})
    g = Graph(InputSpec("x", (1, 3, 24, 32), preprocess=Preprocess(
        scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))), [
        conv("x", "a", 3, 8, 3, 2), conv("a", "b", 8, 8, 3),
        Node("p", "max_pool2d", ["b"], ["c"], {"kernel": (2, 2), "stride": (2, 2),
                                                "pads": (0, 0, 0, 0), "dilation": (1, 1)}),
        Node("u", "upsample_bilinear", ["c"], ["d"], {"size": (12, 16), "align_corners": 0,
                                                      "scales": (0.5, 0.5)}),
        Node("cat", "concat", ["b", "d"], ["e"], {}),
        conv("e", "f", 16, 4, 1)], ["f"])
    return Model(g, n_threads=n_threads)


def _frames(n, seed=0, h=24, w=32):
    from framedelta.scenes import fixed_camera_frames
    return list(fixed_camera_frames(n, h, w, coverage=0.1, seed=seed, noise=3.0))


def test_no_drift_over_2000_frames():
    model = _small_model()
    s = model.stream(threshold=4, detector="pixel")
    frames = _frames(2000, seed=5)
    for i, f in enumerate(frames):
        y = s.step(f)
        if i % 250 == 0 or i == len(frames) - 1:
            assert_close(y, model.run(s.reference_input), f"frame {i}")
    # the threshold really held changes back: the reference is not the last frame
    assert not np.array_equal(s.reference_input, frames[-1])
    assert np.abs(s.reference_input.astype(int) - frames[-1]).max() <= 4


def test_uint8_frames_threshold_in_pixel_units():
    model = _small_model()
    s = model.stream(threshold=10)
    f0 = _frames(1)[0]
    s.step(f0)
    f1 = f0.copy()
    f1[3, 4] = np.clip(f1[3, 4].astype(int) + 10, 0, 255)      # at the threshold: unchanged
    f1[5, 6, 1] = (int(f1[5, 6, 1]) + 60) % 256                  # one channel, far: changed
    s.step(f1)
    ref = s.reference_input
    assert ref.dtype == np.uint8
    np.testing.assert_array_equal(ref[3, 4], f0[3, 4])
    np.testing.assert_array_equal(ref[5, 6], f1[5, 6])
    assert s.last_stats.input_changed_fraction == pytest.approx(1 / (24 * 32))


def test_block_detector_changes_whole_tiles_by_mean():
    model = _small_model()
    s = model.stream(threshold=5, detector="block", block=8)
    f0 = _frames(1)[0]
    s.step(f0)
    f1 = f0.copy()
    f1[0, 0] = 255 - f1[0, 0]            # one pixel: tile mean stays small -> unchanged
    f1[8:16, 16:24] = 255 - f1[8:16, 16:24]   # a whole tile -> changed, all of it
    s.step(f1)
    ref = s.reference_input
    np.testing.assert_array_equal(ref[0, 0], f0[0, 0])
    np.testing.assert_array_equal(ref[8:16, 16:24], f1[8:16, 16:24])
    assert s.last_stats.input_changed_fraction == pytest.approx(64 / (24 * 32))


def test_nothing_changed_costs_nothing():
    model = _small_model()
    s = model.stream(threshold=0)
    f = _frames(1)[0]
    s.step(f)
    s.step(f)
    st_ = s.last_stats
    assert st_.input_changed_fraction == 0 and st_.macs == 0 and st_.dense_macs > 0
    assert all(n.active_fraction == 0 for n in st_.nodes)


def test_two_streams_do_not_interfere():
    model = _small_model()
    a, b = model.stream(threshold=3), model.stream(threshold=3)
    fa, fb = _frames(30, seed=1), _frames(30, seed=2)
    for x, y in zip(fa, fb):
        ya, yb = a.step(x), b.step(y)
        assert_close(ya, model.run(a.reference_input), "stream a")
        assert_close(yb, model.run(b.reference_input), "stream b")


def test_two_streams_in_two_threads_give_sequential_results():
    model = _small_model(n_threads=1)
    seqs = [_frames(40, seed=3), _frames(40, seed=4)]
    expected = []
    for seq in seqs:
        s = model.stream(threshold=2)
        expected.append([s.step(f) for f in seq])
    got = [None, None]

    def work(k):
        s = model.stream(threshold=2)
        got[k] = [s.step(f) for f in seqs[k]]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for a, b in zip(got[k], expected[k]):
            np.testing.assert_array_equal(a, b)


def test_bad_stream_arguments_and_frames():
    model = _small_model()
    for kw in ({"threshold": -1}, {"threshold": float("nan")}, {"detector": "optical"},
               {"block": 0}):
        with pytest.raises(ValueError):
            model.stream(**kw)
    s = model.stream()
    with pytest.raises(ValueError, match="expected"):
        s.step(np.zeros((24, 31, 3), np.uint8))
    s.step(np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="reset"):
        s.step(np.zeros((1, 3, 24, 32), np.float32))


def test_stats_and_cache_bytes():
    model = _small_model()
    s = model.stream(threshold=15)
    for f in _frames(5):
        s.step(f)
    st_ = s.last_stats
    assert 0 < st_.input_changed_fraction < 1
    assert 0 < st_.macs < st_.dense_macs and st_.mac_ratio > 1
    assert [n.name for n in st_.nodes] == [n.name for n in model.graph.nodes]
    activations = sum(np.prod(model.shapes[t]) * 4 for n in model.graph.nodes
                      for t in n.outputs)
    assert activations <= s.cache_bytes <= 1.5 * activations + 3 * 24 * 32 * 8
