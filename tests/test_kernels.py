"""Every op's kernel against its numpy reference, and every reference against torch.

Each op has one hypothesis strategy in CASES that draws a single-node graph (shapes
including odd sizes, attributes at their edges, weights) and an input. The engine runs
it with 1 and 2 threads and with tiny tiles; all must match the reference. The
reference is in turn checked against torch on the same draws (torch is the oracle).
"""


import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from framedelta.engine.model import Model
from framedelta.engine.reference import run_node
from framedelta.formats.graph import Graph, InputSpec, Node, check_graph
from framedelta.formats.ops import CONV_ACTIVATIONS, OPS

torch = pytest.importorskip("torch")
F = torch.nn.functional

EDGE_VALUES = np.array([0.0, -0.0, 1.0, -1.0, 1000.0, -1000.0, 1e-39, -1e-39, 3.0e38,
                        -3.0e38, np.inf, -np.inf, np.nan], np.float32)


def _array(data, shape, edge=False, scale=1.0):
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    if edge and x.size:
        mask = rng.random(shape) < 0.3
        x[mask] = rng.choice(EDGE_VALUES, size=int(mask.sum()))
    return x


def window_attrs(data, max_k=5):
    """Kernel, stride (1-3), pads (each below the kernel extent) and dilation (1-3)."""
    kh, kw = data.draw(st.integers(1, max_k)), data.draw(st.integers(1, max_k))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ext = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    pads = tuple(data.draw(st.integers(0, ext[i % 2] - 1)) for i in range(4))
    return {"kernel": (kh, kw), "stride": (data.draw(st.integers(1, 3)),
                                           data.draw(st.integers(1, 3))),
            "pads": pads, "dilation": (dh, dw)}


def _spatial(data, lo=1, hi=23):
    return data.draw(st.integers(lo, hi)), data.draw(st.integers(lo, hi))


def case_conv2d(data):
    a = window_attrs(data)
    if data.draw(st.integers(0, 3)) == 0:
        # padding wider than the kernel: windows made of padding alone give the bias
        a["pads"] = tuple(p + data.draw(st.integers(0, 3)) for p in a["pads"])
    groups = data.draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        # channels in 16-lane vectors, a partial one, or both (depthwise.h)
        c = data.draw(st.sampled_from([2, 5, 15, 16, 17, 19, 32, 37]))
        cin, cout, groups = c, c, c
    else:
        cin = groups * data.draw(st.integers(1, 6))
        cout = groups * data.draw(st.integers(1, 9))
    h, w = _spatial(data)
    act = data.draw(st.sampled_from(CONV_ACTIVATIONS))
    a.update(out_channels=cout, groups=groups, activation=act, act_min=-0.5, act_max=0.75)
    kh, kw = a["kernel"]
    weights = {"weight": _array(data, (cout, cin // groups, kh, kw), scale=0.5),
               "bias": _array(data, (cout,))}
    return a, [(1, cin, h, w)], weights, False


def case_batch_norm(data):
    c = data.draw(st.integers(1, 17))
    shape = data.draw(st.sampled_from([(1, c, *_spatial(data)), (1, c)]))
    return {}, [shape], {"scale": _array(data, (c,)), "shift": _array(data, (c,))}, True


def _unary(data):
    c = data.draw(st.integers(1, 17))
    return [data.draw(st.sampled_from([(1, c, *_spatial(data)), (1, c)]))]


def case_relu(data):
    return {}, _unary(data), {}, True


def case_clamp(data):
    lo = data.draw(st.floats(-3, 3, width=32))
    hi = data.draw(st.floats(lo, 6, width=32))
    return {"min": float(lo), "max": float(hi)}, _unary(data), {}, True


def case_identity(data):
    return {}, _unary(data), {}, True


def case_max_pool2d(data):
    a = window_attrs(data, max_k=4)
    a["ceil_mode"] = data.draw(st.integers(0, 1))
    c = data.draw(st.integers(1, 11))
    return a, [(1, c, *_spatial(data))], {}, True


def case_global_avg_pool(data):
    c = data.draw(st.integers(1, 130))
    return {"keepdim": data.draw(st.integers(0, 1))}, [(1, c, *_spatial(data))], {}, False


def case_concat(data):
    n = data.draw(st.integers(1, 4))
    shape = list(data.draw(st.sampled_from([(1, 5), (1, 3, *_spatial(data)),
                                             (1, *_spatial(data))])))
    axis = data.draw(st.integers(1, len(shape) - 1))
    shapes = []
    for _ in range(n):
        shape[axis] = data.draw(st.integers(1, 9))
        shapes.append(tuple(shape))
    return {"axis": axis}, shapes, {}, True


def _resize(data):
    c = data.draw(st.integers(1, 7))
    h, w = _spatial(data, 1, 13)
    if data.draw(st.booleans()):     # an integer scale factor, as F.interpolate(scale_factor=)
        f = data.draw(st.integers(1, 4))
        size, scales = (h * f, w * f), (1.0 / f, 1.0 / f)
    else:                            # an explicit size, up or down
        size = _spatial(data, 1, 31)
        scales = (h / size[0], w / size[1])
    return c, (h, w), size, scales


def case_upsample_nearest(data):
    c, (h, w), size, scales = _resize(data)
    return {"size": size, "scales": scales}, [(1, c, h, w)], {}, True


def case_upsample_bilinear(data):
    c, (h, w), size, scales = _resize(data)
    ac = data.draw(st.integers(0, 1))
    return {"size": size, "scales": scales, "align_corners": ac}, [(1, c, h, w)], {}, False


def case_linear(data):
    f, o = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 40))
    return ({"out_features": o}, [(1, f)],
            {"weight": _array(data, (o, f)), "bias": _array(data, (o,))}, False)


def case_reshape(data):
    c, (h, w) = data.draw(st.integers(1, 6)), _spatial(data, 1, 7)
    n = c * h * w
    target = data.draw(st.sampled_from([(1, n), (1, c * h, w, 1), (1, w, c, h), (1, n, 1, 1)]))
    return {"shape": target}, [(1, c, h, w)], {}, True


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

def _broadcast_pair(data):
    """Two same-rank shapes that broadcast: an image or a vector, and the same with
    some axes (batch kept) shrunk to 1 (squeeze-excitation, attention maps, scalars)."""
    c = data.draw(st.integers(1, 17))
    full = data.draw(st.sampled_from([(1, c, *_spatial(data)), (1, c), (2, c, 3)]))
    small = tuple(n if i == 0 or data.draw(st.booleans()) else 1 for i, n in enumerate(full))
    return (full, small) if data.draw(st.booleans()) else (small, full)


def _case_binary(data):
    a, b = _broadcast_pair(data)
    if data.draw(st.booleans()):
        return {}, [a, b], {}, True
    # one input and the constant operand, either way round
    attrs = {"other_shape": b, "reverse": data.draw(st.integers(0, 1))}
    return attrs, [a], {"other": _array(data, b, edge=True)}, True


case_add = case_sub = case_mul = case_div = _case_binary


# --- activations and softmax ------------------------------------------------

def _any_rank(data, c_max=17):
    """An image, a vector, or a tensor of another rank (a detection head's (1, A, K))."""
    c = data.draw(st.integers(1, c_max))
    kind = data.draw(st.sampled_from(["image", "image", "vector", "rank3", "other"]))
    if kind == "image":
        return (1, c, *_spatial(data))
    if kind == "vector":
        return (1, c)
    if kind == "rank3":
        return (1, c, data.draw(st.integers(1, 13)))
    return data.draw(st.sampled_from([(1, c, 2, 1, 3), (3, c), (2, c, 4)]))


def case_leaky_relu(data):
    slope = data.draw(st.one_of(st.sampled_from([0.01, 0.0, 1.0, -1.0, 0.2]),
                                st.floats(-3, 3, width=32)))
    return {"negative_slope": float(slope)}, [_any_rank(data)], {}, True


def case_prelu(data):
    shape = _any_rank(data)
    n = data.draw(st.sampled_from([1, shape[1]]))
    return {"num_parameters": n}, [shape], {"slope": _array(data, (n,), scale=0.5)}, True


def case_sigmoid(data):
    return {}, [_any_rank(data)], {}, True


def case_tanh(data):
    return {}, [_any_rank(data)], {}, True


def case_silu(data):
    return {}, [_any_rank(data)], {}, True


def case_hardswish(data):
    return {}, [_any_rank(data)], {}, True


def case_hardsigmoid(data):
    return {}, [_any_rank(data)], {}, True


def case_gelu(data):
    return ({"approximate": data.draw(st.sampled_from(["none", "tanh"]))}, [_any_rank(data)],
            {}, True)


def _softmax_case(data):
    shape = _any_rank(data, c_max=data.draw(st.sampled_from([17, 130])))
    axis = data.draw(st.sampled_from([1, 1, len(shape) - 1, 0] + list(range(len(shape)))))
    return {"axis": axis}, [shape], {}, data.draw(st.booleans())


def case_softmax(data):
    return _softmax_case(data)


def case_log_softmax(data):
    return _softmax_case(data)


POW_EXPONENTS = [2.0, 3.0, -2.0, 0.5, -0.5, -1.0, 0.0, 1.0, 1.5, 4.0, -3.0, 2.5, 1 / 3]


def case_pow(data):
    return ({"exponent": data.draw(st.sampled_from(POW_EXPONENTS))}, [_any_rank(data)], {},
            True)


# --- windows: transposed conv, average pools --------------------------------

def case_conv_transpose2d(data):
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sh, sw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    # crops up to past the kernel extent (the output must stay >= 1, else _valid says no)
    pads = tuple(data.draw(st.integers(0, (dh, dw)[i % 2] * ((kh, kw)[i % 2] - 1) + 2))
                 for i in range(4))
    op = (data.draw(st.integers(0, max(sh, dh) - 1)), data.draw(st.integers(0, max(sw, dw) - 1)))
    groups = data.draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        c = data.draw(st.integers(2, 11))
        cin, cout, groups = c, c, c
    else:
        cin = groups * data.draw(st.integers(1, 5))
        cout = groups * data.draw(st.integers(1, 9))
    h, w = _spatial(data, 1, 13)
    act = data.draw(st.sampled_from(CONV_ACTIVATIONS))
    a = {"out_channels": cout, "kernel": (kh, kw), "stride": (sh, sw), "pads": pads,
         "output_padding": op, "dilation": (dh, dw), "groups": groups, "activation": act,
         "act_min": -0.5, "act_max": 0.75}
    weights = {"weight": _array(data, (cin, cout // groups, kh, kw), scale=0.5),
               "bias": _array(data, (cout,))}
    return a, [(1, cin, h, w)], weights, False


def case_avg_pool2d(data):
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    pads = tuple(data.draw(st.integers(0, (kh, kw)[i % 2] // 2)) for i in range(4))
    if data.draw(st.booleans()):        # torch's symmetric padding, so torch can check it
        pads = pads[:2] * 2
    a = {"kernel": (kh, kw), "stride": (data.draw(st.integers(1, 3)),
                                        data.draw(st.integers(1, 3))),
         "pads": pads, "ceil_mode": data.draw(st.integers(0, 1)),
         "count_include_pad": data.draw(st.integers(0, 1)),
         "divisor": data.draw(st.sampled_from([0, 0, 0, 1, 3, -2, 7]))}
    c = data.draw(st.integers(1, 11))
    return a, [(1, c, *_spatial(data))], {}, True


def _adaptive_case(data):
    c = data.draw(st.integers(1, 11))
    h, w = _spatial(data)
    size = (data.draw(st.integers(1, h + 3)), data.draw(st.integers(1, w + 3)))
    return {"size": size}, [(1, c, h, w)], {}, True


def case_adaptive_avg_pool2d(data):
    return _adaptive_case(data)


def case_adaptive_max_pool2d(data):
    return _adaptive_case(data)


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

def case_pad(data):
    c = data.draw(st.integers(1, 9))
    pads = tuple(data.draw(st.integers(0, 4)) for _ in range(4))
    if data.draw(st.integers(0, 4)) == 0:
        pads = tuple(p + data.draw(st.integers(0, 25)) for p in pads)   # wider than x
    value = data.draw(st.sampled_from([0.0, -0.0, 1.5, -2.25, 3.0e38, -np.inf, np.inf]))
    return {"pads": pads, "value": value}, [(1, c, *_spatial(data))], {}, True


def case_slice(data):
    kind = data.draw(st.sampled_from(["image", "image", "image", "vector", "rank3"]))
    if kind == "image":
        shape = (1, data.draw(st.integers(1, 13)), *_spatial(data))
    elif kind == "vector":
        shape = (1, data.draw(st.integers(1, 40)))
    else:
        shape = (1, *_spatial(data))
    axis = data.draw(st.integers(1, len(shape) - 1))
    n = shape[axis]
    start = data.draw(st.integers(0, n - 1))
    end = data.draw(st.integers(start + 1, n))
    step = data.draw(st.sampled_from([1, 1, 2, 3, 5]))
    return {"axis": axis, "start": start, "end": end, "step": step}, [shape], {}, True


def case_group_norm(data):
    g = data.draw(st.integers(1, 6))
    c = g * data.draw(st.integers(1, 6))
    shape = data.draw(st.sampled_from([(1, c, *_spatial(data)), (1, c)]))
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    return ({"num_groups": g, "eps": eps}, [shape],
            {"weight": _array(data, (c,)), "bias": _array(data, (c,))}, False)

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

def _tail_shape(data, lo_rank=2, hi_rank=6, hi=5):
    """A tensor of rank lo_rank .. hi_rank with small dims (N = 1 at rank 4, as in any
    valid graph)."""
    rank = data.draw(st.integers(lo_rank, hi_rank))
    shape = [data.draw(st.integers(1, hi)) for _ in range(rank)]
    if rank == 4:
        shape[0] = 1
    return tuple(shape)


def case_permute(data):
    shape = _tail_shape(data)
    dims = tuple(data.draw(st.permutations(range(len(shape)))))
    return {"dims": dims}, [shape], {}, True


def case_expand(data):
    shape = _tail_shape(data, 1, 5, 3)
    lead = data.draw(st.lists(st.integers(1, 3), max_size=6 - len(shape)))
    out = tuple(lead) + tuple(d if d != 1 else data.draw(st.integers(1, 4)) for d in shape)
    if len(out) == 4:
        out = (1,) + out[1:]
    return {"shape": out}, [shape], {}, True


def case_matmul(data):
    rank = data.draw(st.integers(2, 5))
    lead = [data.draw(st.integers(1, 3)) for _ in range(rank - 2)]
    if rank == 4:
        lead[0] = 1
    m = data.draw(st.sampled_from([1, 2, 7, 49, 101]))
    k = data.draw(st.sampled_from([1, 3, 16, 33, 330]))
    n = data.draw(st.sampled_from([1, 5, 31, 40, 70]))
    return {}, [tuple(lead) + (m, k), tuple(lead) + (k, n)], {}, False


def case_pixel_shuffle(data):
    r = data.draw(st.integers(1, 3))
    c = r * r * data.draw(st.integers(1, 4))
    return {"upscale": r}, [(1, c, *_spatial(data, 1, 9))], {}, True


def case_pixel_unshuffle(data):
    r = data.draw(st.integers(1, 3))
    h, w = _spatial(data, 1, 7)
    return {"downscale": r}, [(1, data.draw(st.integers(1, 5)), h * r, w * r)], {}, True


def case_layer_norm(data):
    # no edge values: torch's float32 variance overflows where ours (float64) does not;
    # tests/test_convert_tails.py checks NaN and inf rows against torch
    c = data.draw(st.integers(1, 40))
    kind = data.draw(st.sampled_from(["image", "image", "tokens", "vector", "rank5"]))
    if kind == "image":
        shape, axis = (1, c, *_spatial(data, 1, 11)), 1
    elif kind == "tokens":
        shape, axis = (1, data.draw(st.integers(1, 30)), c), 2
    elif kind == "vector":
        shape, axis = (data.draw(st.integers(1, 3)), c), 1
    else:
        shape = _tail_shape(data, 5, 5, 4)
        axis = data.draw(st.integers(1, 4))
    eps = data.draw(st.sampled_from([1e-5, 1e-6, 0.1, 0.0]))
    w = {"weight": _array(data, (shape[axis],)), "bias": _array(data, (shape[axis],))}
    return {"axis": axis, "eps": eps}, [shape], w, False



CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def draw_case(data, op):
    attrs, in_shapes, weights, edge = CASES[op](data)
    names = [f"in{i}" for i in range(len(in_shapes))]
    inputs = [_array(data, s, edge=edge) for s in in_shapes]
    return attrs, in_shapes, weights, inputs, names


def run_engine_node(op, attrs, in_shapes, weights, inputs, n_threads, m_tile=None):
    """Run one node through the engine's prepared kernel (engine layout in and out)."""
    from framedelta.engine.layout import internal_shape, to_internal, to_torch
    from framedelta.engine.registry import REGISTRY
    from framedelta.formats.ops import resolve_attrs
    node = Node("n", op, [f"in{i}" for i in range(len(in_shapes))], ["out"], attrs, weights)
    full = resolve_attrs(OPS[op], attrs)
    out_shape = tuple(OPS[op].infer(full, in_shapes)[0])
    kw = {"m_tile": m_tile} if op in ("conv2d", "conv_transpose2d") else {}
    run = REGISTRY[op].prepare(node, full, in_shapes, out_shape, **kw)
    out = np.full(internal_shape(out_shape), np.float32(12345.0))   # garbage to overwrite
    run([to_internal(x, s) for x, s in zip(inputs, in_shapes)], out, n_threads)
    return np.array(to_torch(out, out_shape))


def _valid(op, attrs, in_shapes):
    from framedelta.formats.ops import SchemaError, resolve_attrs
    try:
        full = resolve_attrs(OPS[op], attrs)
        OPS[op].weights(full, in_shapes)
        OPS[op].infer(full, in_shapes)
    except SchemaError:
        return False
    return True


def assert_matches(y, ref):
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * (1 + float(np.nanmax(
        np.abs(np.where(np.isfinite(ref), ref, 0)), initial=0))), equal_nan=True)


@pytest.mark.parametrize("op", sorted(OPS))
@given(data=st.data())
def test_kernel_matches_reference(op, data):
    attrs, in_shapes, weights, inputs, _ = draw_case(data, op)
    assume(_valid(op, attrs, in_shapes))
    node = Node("n", op, [f"in{i}" for i in range(len(in_shapes))], ["out"], attrs, weights)
    ref = run_node(node, inputs)
    for n_threads, m_tile in [(1, None), (2, None), (2, 3)]:
        y = run_engine_node(op, attrs, in_shapes, weights, inputs, n_threads, m_tile)
        assert y.shape == ref.shape
        assert_matches(y, ref)


def _masked_ops():
    from framedelta.engine.registry import REGISTRY
    return sorted(op for op, impl in REGISTRY.items() if impl.masked)


MASKED_OPS = _masked_ops()


@pytest.mark.parametrize("op", MASKED_OPS)
@given(data=st.data())
def test_masked_kernel_writes_exactly_its_positions(op, data):
    """With pix, a kernel writes those output positions, the same bits as the dense
    pass, and leaves every other position of the cache alone."""
    from framedelta.engine.layout import internal_shape, to_internal
    from framedelta.engine.registry import REGISTRY
    from framedelta.formats.ops import resolve_attrs
    attrs, in_shapes, weights, inputs, _ = draw_case(data, op)
    assume(_valid(op, attrs, in_shapes))
    full = resolve_attrs(OPS[op], attrs)
    out_shape = tuple(OPS[op].infer(full, in_shapes)[0])
    assume(len(out_shape) == 4)
    node = Node("n", op, [f"in{i}" for i in range(len(in_shapes))], ["out"], attrs, weights)
    m_tile = data.draw(st.sampled_from([None, 1, 5]))
    kw = {"m_tile": m_tile} if op in ("conv2d", "conv_transpose2d") else {}
    run = REGISTRY[op].prepare(node, full, in_shapes, out_shape, **kw)
    xs = [to_internal(x, sh) for x, sh in zip(inputs, in_shapes)]
    dense = np.empty(internal_shape(out_shape), np.float32)
    run(xs, dense, 2)
    n_pos = out_shape[2] * out_shape[3]
    keep = np.asarray(data.draw(st.lists(st.booleans(), min_size=n_pos, max_size=n_pos)))
    pix = np.flatnonzero(keep).astype(np.int32)
    cache = np.full(internal_shape(out_shape), np.float32(-7.25))
    run(xs, cache, data.draw(st.sampled_from([1, 2])), pix)
    flat, dflat = cache.reshape(n_pos, -1), dense.reshape(n_pos, -1)
    np.testing.assert_array_equal(flat[keep], dflat[keep])
    assert (flat[~keep] == np.float32(-7.25)).all()


def _torch_activation(y, attrs):
    """A conv's fused activation, in torch."""
    act = attrs.get("activation", "none")
    if act == "relu":
        return F.relu(y)
    if act == "clamp":
        return torch.clamp(y, attrs["act_min"], attrs["act_max"])
    if act == "sigmoid":
        return torch.sigmoid(y)
    if act in ("silu", "hardswish"):
        return getattr(F, act)(y)
    return y


def _torch_op(op, attrs, weights, ts):
    t = {k: torch.from_numpy(v) for k, v in weights.items()}
    x = ts[0]
    if op == "conv2d":
        pt, pl, pb, pr = attrs["pads"]
        y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), t["weight"], t["bias"], attrs["stride"], 0,
                     attrs["dilation"], attrs["groups"])
        return _torch_activation(y, attrs)
    if op == "batch_norm":
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * t["scale"].reshape(shape) + t["shift"].reshape(shape)
    if op == "relu":
        return F.relu(x)
    if op == "clamp":
        return torch.clamp(x, attrs["min"], attrs["max"])
    if op == "identity":
        return x.clone()
    if op == "max_pool2d":
        pt, pl, pb, pr = attrs["pads"]
        if (pt, pl) != (pb, pr) or 2 * pt > attrs["kernel"][0] or 2 * pl > attrs["kernel"][1]:
            return None   # torch takes symmetric padding up to half the kernel only
        return F.max_pool2d(x, attrs["kernel"], attrs["stride"], (pt, pl), attrs["dilation"],
                            bool(attrs["ceil_mode"]))
    if op == "global_avg_pool":
        return x.mean((2, 3), keepdim=bool(attrs["keepdim"]))
    if op == "concat":
        return torch.cat(ts, attrs["axis"])
    if op == "upsample_nearest":
        return F.interpolate(x, size=attrs["size"], mode="nearest")
    if op == "upsample_bilinear":
        return F.interpolate(x, size=attrs["size"], mode="bilinear",
                             align_corners=bool(attrs["align_corners"]))
    if op == "linear":
        return F.linear(x, t["weight"], t["bias"])
    if op == "reshape":
        return x.reshape(attrs["shape"])
    # broadcasting arithmetic (add, sub, mul, div)
    if op in ("add", "sub", "mul", "div"):
        fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
        a, b = ts[0], ts[1] if len(ts) == 2 else t["other"].reshape(attrs["other_shape"])
        return fn(b, a) if attrs["reverse"] else fn(a, b)

    # activations and softmax
    if op == "leaky_relu":
        return F.leaky_relu(x, attrs["negative_slope"])
    if op == "prelu":
        return F.prelu(x, t["slope"])
    if op in ("sigmoid", "tanh"):
        return getattr(torch, op)(x)
    if op in ("silu", "hardswish", "hardsigmoid"):
        return getattr(F, op)(x)
    if op == "gelu":
        # in float64: torch's vectorised float32 gelu overflows to inf above FLT_MAX / 2
        # where its scalar path (and the exact value) does not
        return F.gelu(x.double(), approximate=attrs["approximate"]).float()
    if op == "softmax":
        return F.softmax(x, attrs["axis"])
    if op == "log_softmax":
        return F.log_softmax(x, attrs["axis"])
    if op == "pow":
        return x ** attrs["exponent"]

    # windows: transposed conv, average pools
    if op == "conv_transpose2d":
        # torch pads symmetrically: crop its uncropped output instead; in float64, so
        # that only the reference's own rounding is compared
        pt, pl, pb, pr = attrs["pads"]
        y = F.conv_transpose2d(x.double(), t["weight"].double(), t["bias"].double(),
                               attrs["stride"], 0, attrs["output_padding"], attrs["groups"],
                               attrs["dilation"])
        y = y[:, :, pt:y.shape[2] - pb, pl:y.shape[3] - pr]
        return _torch_activation(y.float(), attrs)
    if op == "avg_pool2d":
        pt, pl, pb, pr = attrs["pads"]
        if (pt, pl) != (pb, pr):
            return None   # torch takes symmetric padding only
        return F.avg_pool2d(x, attrs["kernel"], attrs["stride"], (pt, pl),
                            bool(attrs["ceil_mode"]), bool(attrs["count_include_pad"]),
                            attrs["divisor"] or None)
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, attrs["size"])
    if op == "adaptive_max_pool2d":
        return F.adaptive_max_pool2d(x, attrs["size"])

    # rearranging and normalising: pad, pixel shuffle, slice, norms
    if op == "pad":
        pt, pl, pb, pr = attrs["pads"]
        return F.pad(x, (pl, pr, pt, pb), value=attrs["value"])
    if op == "slice":
        index = (slice(None),) * attrs["axis"] + (slice(attrs["start"], attrs["end"],
                                                        attrs["step"]),)
        return x[index]
    if op == "group_norm":
        # in float64: the reference and the kernel accumulate in double; this checks
        # the semantics (groups, biased variance, eps, affine) against torch's. The aten
        # op, as exported: F.group_norm refuses one value per channel, the op does not
        n, c = x.shape[:2]
        return torch.ops.aten.native_group_norm(
            x.double(), t["weight"].double(), t["bias"].double(), n, c, x[0, 0].numel(),
            attrs["num_groups"], attrs["eps"])[0].float()

    # layout-breaking tails, computed whole: permute, expand, matmul
    if op == "permute":
        return x.permute(attrs["dims"]).contiguous()
    if op == "expand":
        return x.expand(attrs["shape"]).contiguous()
    if op == "matmul":
        return torch.matmul(ts[0], ts[1])
    if op == "pixel_shuffle":
        return F.pixel_shuffle(x, attrs["upscale"])
    if op == "pixel_unshuffle":
        return F.pixel_unshuffle(x, attrs["downscale"])
    if op == "layer_norm":
        a = attrs["axis"]
        return F.layer_norm(x.movedim(a, -1), (x.shape[a],), t["weight"], t["bias"],
                            attrs["eps"]).movedim(-1, a)
    raise KeyError(op)


@pytest.mark.parametrize("op", sorted(OPS))
@given(data=st.data())
def test_reference_matches_torch(op, data):
    attrs, in_shapes, weights, inputs, _ = draw_case(data, op)
    assume(_valid(op, attrs, in_shapes))
    if op in ("upsample_nearest", "upsample_bilinear"):
        # torch derives the step from the sizes when given a size
        attrs = dict(attrs, scales=(in_shapes[0][2] / attrs["size"][0],
                                    in_shapes[0][3] / attrs["size"][1]))
    node = Node("n", op, [f"in{i}" for i in range(len(in_shapes))], ["out"], attrs, weights)
    ref = run_node(node, inputs)
    from framedelta.formats.ops import resolve_attrs
    expect = _torch_op(op, resolve_attrs(OPS[op], attrs), weights,
                       [torch.from_numpy(x) for x in inputs])
    if expect is None:
        return
    expect = expect.numpy()
    assert ref.shape == expect.shape
    # torch sums in float32: allow for its rounding on large reductions
    assert_matches(ref, expect) if op not in ("conv2d", "linear", "global_avg_pool") else \
        np.testing.assert_allclose(ref, expect, rtol=1e-4, atol=1e-4 * (1 + np.abs(expect).max()))


def test_every_op_has_a_case():
    assert set(CASES) == set(OPS)


def test_conv_results_do_not_depend_on_threads_or_tiles():
    """Odd sizes so every thread and tile edge is hit (sklearn's n_threads test)."""
    rng = np.random.default_rng(7)
    attrs = {"out_channels": 37, "kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1),
             "dilation": (1, 1), "groups": 1, "activation": "relu"}
    w = {"weight": rng.standard_normal((37, 13, 3, 3)).astype(np.float32),
         "bias": rng.standard_normal(37).astype(np.float32)}
    x = rng.standard_normal((1, 13, 97, 101)).astype(np.float32)
    shapes = [(1, 13, 97, 101)]
    base = run_engine_node("conv2d", attrs, shapes, w, [x], 1, 64)
    for n_threads in (2, 3):
        np.testing.assert_array_equal(
            run_engine_node("conv2d", attrs, shapes, w, [x], n_threads, 64), base)


def test_model_results_equal_for_1_and_2_threads():
    rng = np.random.default_rng(3)

    def conv(name, i, o, cin, cout, k, s=1, g=1):
        p = k // 2
        return Node(name, "conv2d", [i], [o],
                    {"out_channels": cout, "kernel": (k, k), "stride": (s, s),
                     "pads": (p, p, p, p), "dilation": (1, 1), "groups": g,
                     "activation": "relu"},
                    {"weight": rng.standard_normal((cout, cin // g, k, k)).astype(np.float32),
                     "bias": rng.standard_normal(cout).astype(np.float32)})
    g = Graph(InputSpec("x", (1, 3, 97, 101)), [
        conv("a", "x", "a", 3, 24, 3, 2), conv("b", "a", "b", 24, 24, 3, 1, 24),
        conv("c", "b", "c", 24, 40, 1),
        Node("p", "max_pool2d", ["c"], ["d"], {"kernel": (3, 3), "stride": (2, 2),
                                              "pads": (1, 1, 1, 1), "dilation": (1, 1)}),
        Node("u", "upsample_bilinear", ["d"], ["e"], {"size": (49, 51), "align_corners": 0,
                                                      "scales": (25 / 49, 26 / 51)}),
        Node("cat", "concat", ["c", "e"], ["f"], {}),
        Node("gap", "global_avg_pool", ["f"], ["y"], {})], ["y", "f"])
    x = rng.standard_normal((1, 3, 97, 101)).astype(np.float32)
    one = Model(g, n_threads=1).run(x)
    two = Model(g, n_threads=2).run(x)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_run_rejects_wrong_input():
    g = Graph(InputSpec("x", (1, 2, 5, 5)), [Node("r", "relu", ["x"], ["y"])], ["y"])
    check_graph(g)
    m = Model(g)
    with pytest.raises(ValueError, match=r"expected \(1, 2, 5, 5\), received \(1, 2, 5, 4\)"):
        m.run(np.zeros((1, 2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="expected float32, received float64"):
        m.run(np.zeros((1, 2, 5, 5)))
    y = m.run(torch.full((1, 2, 5, 5), -1.0))
    assert y.shape == (1, 2, 5, 5) and (y == 0).all()


def test_n_threads_validation():
    g = Graph(InputSpec("x", (1, 1, 2, 2)), [Node("r", "relu", ["x"], ["y"])], ["y"])
    with pytest.raises(ValueError, match="n_threads"):
        Model(g, n_threads=0)
    assert Model(g, n_threads=None).n_threads >= 1
