"""Plain numpy references: the oracle every kernel is tested against.

One function per op, in torch layout (N, C, H, W), written to be obviously right
rather than fast (float64 accumulation where it matters). Their signature is
``ref(inputs, attrs, weights) -> output`` with ``attrs`` complete (schema defaults
filled in). :func:`run_graph` runs a whole graph with them.
"""

import builtins
import math

import numpy as np

from framedelta.formats.ops import OPS, resolve_attrs, window_out


def _activation(y, attrs):
    """The activation fused into a conv: the standalone op's reference."""
    act = attrs["activation"]
    if act == "relu":
        return _relu_values(y)
    if act == "clamp":
        return _clamp_values(y, attrs["act_min"], attrs["act_max"])
    if act in FUSED_ACTIVATIONS:
        return FUSED_ACTIVATIONS[act]([y], {}, {})
    return y


def _relu_values(x):
    # NaN stays NaN, as in torch
    return np.where(x < 0, np.zeros_like(x), x)


def _clamp_values(x, lo, hi):
    return np.where(x < lo, np.float32(lo), np.where(x > hi, np.float32(hi), x)).astype(x.dtype)


def _pad(x, pads, value):
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def conv2d(inputs, attrs, weights):
    (x,) = inputs
    w, b = weights["weight"], weights["bias"]
    g = attrs["groups"]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    dh, dw = attrs["dilation"]
    n, cin, h, wd = x.shape
    pt, pl, pb, pr = attrs["pads"]
    oh = window_out(h, kh, sh, pt, pb, dh)
    ow = window_out(wd, kw, sw, pl, pr, dw)
    xp = _pad(x.astype(np.float64), attrs["pads"], 0.0)
    cout = w.shape[0]
    cin_g, cout_g = cin // g, cout // g
    y = np.zeros((n, cout, oh, ow), np.float64)
    for gi in range(g):
        xs = xp[:, gi * cin_g:(gi + 1) * cin_g]
        ws = w[gi * cout_g:(gi + 1) * cout_g].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]
                y[:, gi * cout_g:(gi + 1) * cout_g] += np.einsum(
                    "nchw,oc->nohw", patch, ws[:, :, i, j])
    y += b.astype(np.float64)[None, :, None, None]
    return _activation(y.astype(np.float32), attrs)


def batch_norm(inputs, attrs, weights):
    (x,) = inputs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x * weights["scale"].reshape(shape) + weights["shift"].reshape(shape)).astype(np.float32)


def relu(inputs, attrs, weights):
    return _relu_values(inputs[0])


def clamp(inputs, attrs, weights):
    return _clamp_values(inputs[0], attrs["min"], attrs["max"])


def max_pool2d(inputs, attrs, weights):
    (x,) = inputs
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    dh, dw = attrs["dilation"]
    pt, pl, pb, pr = attrs["pads"]
    n, c, h, w = x.shape
    oh = window_out(h, kh, sh, pt, pb, dh, bool(attrs["ceil_mode"]))
    ow = window_out(w, kw, sw, pl, pr, dw, bool(attrs["ceil_mode"]))
    y = np.full((n, c, oh, ow), -np.inf, np.float32)
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = oy * sh - pt + i * dh, ox * sw - pl + j * dw
                    if 0 <= iy < h and 0 <= ix < w:
                        v = x[:, :, iy, ix]
                        cur = y[:, :, oy, ox]
                        y[:, :, oy, ox] = np.where((v > cur) | np.isnan(v), v, cur)
    return y


def global_avg_pool(inputs, attrs, weights):
    (x,) = inputs
    y = x.astype(np.float64).mean(axis=(2, 3), keepdims=bool(attrs["keepdim"]))
    return y.astype(np.float32)


def concat(inputs, attrs, weights):
    return np.concatenate(inputs, axis=attrs["axis"])


def upsample_nearest(inputs, attrs, weights):
    (x,) = inputs
    h, w = x.shape[2:]
    oh, ow = attrs["size"]
    sy, sx = attrs["scales"]
    iy = [min(int(math.floor(np.float32(d) * np.float32(sy))), h - 1) for d in range(oh)]
    ix = [min(int(math.floor(np.float32(d) * np.float32(sx))), w - 1) for d in range(ow)]
    return x[:, :, iy][:, :, :, ix]


def bilinear_source(out_size, in_size, align_corners, scale):
    """Per output index: (i0, i1, weight of i0, weight of i1), as torch computes them."""
    out = []
    for d in range(out_size):
        if align_corners:
            step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
            src = np.float32(step) * np.float32(d)
        else:
            src = max(np.float32(scale) * (np.float32(d) + np.float32(0.5)) - np.float32(0.5),
                      np.float32(0.0))
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        l1 = np.float32(src) - np.float32(i0)
        out.append((i0, i1, np.float32(1.0) - l1, l1))
    return out


def upsample_bilinear(inputs, attrs, weights):
    (x,) = inputs
    h, w = x.shape[2:]
    oh, ow = attrs["size"]
    ac = bool(attrs["align_corners"])
    ys = bilinear_source(oh, h, ac, attrs["scales"][0])
    xs = bilinear_source(ow, w, ac, attrs["scales"][1])
    y = np.zeros(x.shape[:2] + (oh, ow), np.float32)
    for oy, (y0, y1, hy0, hy1) in enumerate(ys):
        for ox, (x0, x1, wx0, wx1) in enumerate(xs):
            y[:, :, oy, ox] = (hy0 * (wx0 * x[:, :, y0, x0] + wx1 * x[:, :, y0, x1])
                               + hy1 * (wx0 * x[:, :, y1, x0] + wx1 * x[:, :, y1, x1]))
    return y


def linear(inputs, attrs, weights):
    (x,) = inputs
    y = x.astype(np.float64) @ weights["weight"].astype(np.float64).T + weights["bias"]
    return y.astype(np.float32)


def reshape(inputs, attrs, weights):
    return inputs[0].reshape(attrs["shape"])


def identity(inputs, attrs, weights):
    return inputs[0]


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

def _operands(inputs, attrs, weights):
    a = inputs[0]
    b = inputs[1] if len(inputs) == 2 else weights["other"].reshape(attrs["other_shape"])
    return (b, a) if attrs["reverse"] else (a, b)


def add(inputs, attrs, weights):
    a, b = _operands(inputs, attrs, weights)
    return np.add(a, b, dtype=np.float32)


def sub(inputs, attrs, weights):
    a, b = _operands(inputs, attrs, weights)
    return np.subtract(a, b, dtype=np.float32)


def mul(inputs, attrs, weights):
    a, b = _operands(inputs, attrs, weights)
    return np.multiply(a, b, dtype=np.float32)


def div(inputs, attrs, weights):
    a, b = _operands(inputs, attrs, weights)
    return np.divide(a, b, dtype=np.float32)


# --- activations and softmax ------------------------------------------------

# Elementwise ops compute in float32, as torch does, so that overflow and the NaN/inf
# cases come out where torch's do; the transcendental ones in float64 and round once.

def _in_float64(fn, x):
    with np.errstate(all="ignore"):
        return fn(x.astype(np.float64)).astype(np.float32)


def leaky_relu(inputs, attrs, weights):
    x = inputs[0]
    with np.errstate(all="ignore"):
        return np.where(x > 0, x, x * np.float32(attrs["negative_slope"])).astype(np.float32)


def prelu(inputs, attrs, weights):
    x = inputs[0]
    slope = weights["slope"].astype(np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))
    with np.errstate(all="ignore"):
        return np.where(x > 0, x, x * slope).astype(np.float32)


def sigmoid(inputs, attrs, weights):
    return _in_float64(lambda x: 1.0 / (1.0 + np.exp(-x)), inputs[0])


def tanh(inputs, attrs, weights):
    return _in_float64(np.tanh, inputs[0])


def silu(inputs, attrs, weights):
    return _in_float64(lambda x: x / (1.0 + np.exp(-x)), inputs[0])


def _relu6_of_x_plus_3(x):
    return _clamp_values(x + np.float32(3), np.float32(0), np.float32(6))


def hardswish(inputs, attrs, weights):
    x = inputs[0]
    with np.errstate(all="ignore"):
        return (x * _relu6_of_x_plus_3(x) / np.float32(6)).astype(np.float32)


# activations a conv may carry in its store (formats/ops.py CONV_ACTIVATIONS)
FUSED_ACTIVATIONS = {"silu": silu, "hardswish": hardswish, "sigmoid": sigmoid}


def hardsigmoid(inputs, attrs, weights):
    with np.errstate(all="ignore"):
        return (_relu6_of_x_plus_3(inputs[0]) / np.float32(6)).astype(np.float32)


def gelu(inputs, attrs, weights):
    if attrs["approximate"] == "tanh":
        k = math.sqrt(2.0 / math.pi)
        return _in_float64(lambda x: 0.5 * x * (1.0 + np.tanh(k * (x + 0.044715 * x ** 3))),
                           inputs[0])
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return _in_float64(lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))), inputs[0])


def _softmax_parts(x, axis):
    """(x - max, sum of exp(x - max)) along ``axis``, in float64; NaN anywhere in a row,
    a +inf, or a row of -inf make the whole row NaN, as in torch."""
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        z = x - np.max(x, axis=axis, keepdims=True)
        return z, np.sum(np.exp(z), axis=axis, keepdims=True)


def softmax(inputs, attrs, weights):
    z, s = _softmax_parts(inputs[0], attrs["axis"])
    with np.errstate(all="ignore"):
        return (np.exp(z) / s).astype(np.float32)


def log_softmax(inputs, attrs, weights):
    z, s = _softmax_parts(inputs[0], attrs["axis"])
    with np.errstate(all="ignore"):
        return (z - np.log(s)).astype(np.float32)


def pow(inputs, attrs, weights):
    """torch's pow(Tensor, Scalar): its fast paths for some exponents are part of the
    result (sqrt(-inf) is NaN where pow(-inf, 0.5) is inf; 2 is exactly x * x)."""
    x, e = inputs[0], attrs["exponent"]
    one = np.float32(1)
    with np.errstate(all="ignore"):
        if e == 2:
            y = x * x
        elif e == 3:
            y = x * x * x
        elif e == -2:
            y = one / (x * x)
        elif e == 0.5:
            y = np.sqrt(x)
        elif e == -0.5:
            y = one / np.sqrt(x)
        elif e == -1:
            y = one / x
        else:
            y = np.power(x.astype(np.float64), float(np.float32(e)))
    return y.astype(np.float32)


# --- windows: transposed conv, average pools --------------------------------

def conv_transpose2d(inputs, attrs, weights):
    """Each input pixel scatters its weighted taps into the (uncropped) output, which
    is then cropped by the pads and extended by output_padding."""
    from framedelta.formats.ops import conv_transpose_out
    (x,) = inputs
    w, b = weights["weight"].astype(np.float64), weights["bias"]
    g = attrs["groups"]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    dh, dw = attrs["dilation"]
    pt, pl, pb, pr = attrs["pads"]
    oph, opw = attrs["output_padding"]
    n, cin, h, wd = x.shape
    oh = conv_transpose_out(h, kh, sh, pt, pb, dh, oph)
    ow = conv_transpose_out(wd, kw, sw, pl, pr, dw, opw)
    cout = attrs["out_channels"]
    cin_g, cout_g = cin // g, cout // g
    # full-size canvas: output row oy sits at canvas row oy + pt
    full = np.zeros((n, cout, max(oh + pt, (h - 1) * sh + dh * (kh - 1) + 1),
                     max(ow + pl, (wd - 1) * sw + dw * (kw - 1) + 1)), np.float64)
    xd = x.astype(np.float64)
    for gi in range(g):
        xs = xd[:, gi * cin_g:(gi + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, w[gi * cin_g:(gi + 1) * cin_g, :, i, j])
                full[:, gi * cout_g:(gi + 1) * cout_g,
                     i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += contrib
    y = full[:, :, pt:pt + oh, pl:pl + ow] + b.astype(np.float64)[None, :, None, None]
    return _activation(y.astype(np.float32), attrs)


def avg_pool_window(o, k, s, p0, size, p1):
    """torch's avg_pool2d window along one axis: (start, end) clipped to the input, and
    the length counted with padding (the window clipped to the padded input)."""
    start = o * s - p0
    end = min(start + k, size + p1)
    padded = end - start
    return max(start, 0), min(end, size), padded


def avg_pool2d(inputs, attrs, weights):
    (x,) = inputs
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, pb, pr = attrs["pads"]
    n, c, h, w = x.shape
    oh = window_out(h, kh, sh, pt, pb, 1, bool(attrs["ceil_mode"]))
    ow = window_out(w, kw, sw, pl, pr, 1, bool(attrs["ceil_mode"]))
    y = np.zeros((n, c, oh, ow), np.float32)
    for oy in range(oh):
        y0, y1, ny = avg_pool_window(oy, kh, sh, pt, h, pb)
        for ox in range(ow):
            x0, x1, nx = avg_pool_window(ox, kw, sw, pl, w, pr)
            if y0 >= y1 or x0 >= x1:
                continue
            if attrs["divisor"]:
                div = attrs["divisor"]
            elif attrs["count_include_pad"]:
                div = ny * nx
            else:
                div = (y1 - y0) * (x1 - x0)
            y[:, :, oy, ox] = _sum_in_order(x[:, :, y0:y1, x0:x1]) / np.float32(div)
    return y


def _sum_in_order(win):
    """float32 sum over a window's rows, then columns, one element at a time: torch's
    order, which the format prescribes for the average pools (an overflow is torch's)."""
    total = np.zeros(win.shape[:2], np.float32)
    for iy in range(win.shape[2]):
        for ix in range(win.shape[3]):
            total = total + win[:, :, iy, ix]
    return total


def _adaptive(x, size, reduce):
    from framedelta.formats.ops import adaptive_window
    n, c, h, w = x.shape
    oh, ow = size
    y = np.zeros((n, c, oh, ow), np.float32)
    for oy in range(oh):
        y0, y1 = adaptive_window(oy, oh, h)
        for ox in range(ow):
            x0, x1 = adaptive_window(ox, ow, w)
            y[:, :, oy, ox] = reduce(x[:, :, y0:y1, x0:x1])
    return y


def adaptive_avg_pool2d(inputs, attrs, weights):
    return _adaptive(inputs[0], attrs["size"], lambda win: _sum_in_order(win)
                     / np.float32(win.shape[2]) / np.float32(win.shape[3]))


def adaptive_max_pool2d(inputs, attrs, weights):
    # np.max propagates NaN, as torch does
    return _adaptive(inputs[0], attrs["size"], lambda win: win.max(axis=(2, 3)))


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

def pad(inputs, attrs, weights):
    (x,) = inputs
    return _pad(x, attrs["pads"], np.float32(attrs["value"])).astype(np.float32)


def slice(inputs, attrs, weights):   # noqa: A001 - the op's name (builtins.slice below)
    (x,) = inputs
    index = [builtins.slice(None)] * x.ndim
    index[attrs["axis"]] = builtins.slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(index)].copy()


def group_norm(inputs, attrs, weights):
    """Statistics per group of channels over the group's channels and all positions,
    in float64: biased variance, y = (x - mean) / sqrt(var + eps) * weight + bias."""
    (x,) = inputs
    n, c = x.shape[:2]
    g = attrs["num_groups"]
    xg = x.astype(np.float64).reshape(n, g, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    rstd = 1.0 / np.sqrt(var + attrs["eps"])
    shape = (1, c) + (1,) * (x.ndim - 2)
    scale = np.repeat(rstd.reshape(n, g), c // g, axis=1).reshape((n, c) + (1,) * (x.ndim - 2))
    meanc = np.repeat(mean.reshape(n, g), c // g, axis=1).reshape(scale.shape)
    y = (x - meanc) * (scale * weights["weight"].astype(np.float64).reshape(shape)) \
        + weights["bias"].astype(np.float64).reshape(shape)
    return y.astype(np.float32)

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

def permute(inputs, attrs, weights):
    return np.ascontiguousarray(np.transpose(inputs[0], attrs["dims"]))


def expand(inputs, attrs, weights):
    return np.ascontiguousarray(np.broadcast_to(inputs[0], attrs["shape"]))


def matmul(inputs, attrs, weights):
    a, b = (x.astype(np.float64) for x in inputs)
    return np.matmul(a, b).astype(np.float32)


def pixel_shuffle(inputs, attrs, weights):
    (x,) = inputs
    r = attrs["upscale"]
    n, c, h, w = x.shape
    y = np.empty((n, c // (r * r), h * r, w * r), np.float32)
    for oy in range(h * r):
        for ox in range(w * r):
            src = [ci * r * r + (oy % r) * r + ox % r for ci in range(c // (r * r))]
            y[:, :, oy, ox] = x[:, src, oy // r, ox // r]
    return y


def pixel_unshuffle(inputs, attrs, weights):
    (x,) = inputs
    r = attrs["downscale"]
    n, c, h, w = x.shape
    y = np.empty((n, c * r * r, h // r, w // r), np.float32)
    for ci in range(c):
        for i in range(r):
            for j in range(r):
                y[:, ci * r * r + i * r + j] = x[:, ci, i::r, j::r]
    return y


def layer_norm(inputs, attrs, weights):
    axis = attrs["axis"]
    x = np.moveaxis(inputs[0].astype(np.float64), axis, -1)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + attrs["eps"]) * weights["weight"].astype(np.float64) \
        + weights["bias"].astype(np.float64)
    return np.ascontiguousarray(np.moveaxis(y, -1, axis)).astype(np.float32)



REFERENCES = {name: globals()[name] for name in OPS}


def run_node(node, inputs):
    attrs = resolve_attrs(OPS[node.op], node.attrs)
    return REFERENCES[node.op](inputs, attrs, node.weights)


def run_graph(graph, x):
    """Run ``graph`` on ``x`` (torch layout float32) with the references; outputs as a tuple."""
    env = {graph.input.name: np.asarray(x, np.float32)}
    for node in graph.nodes:
        env[node.outputs[0]] = run_node(node, [env[t] for t in node.inputs])
    return tuple(env[t] for t in graph.outputs)
