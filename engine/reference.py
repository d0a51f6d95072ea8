"""Plain numpy references: the oracle every kernel is tested against.

One function per op, in torch layout (N, C, H, W), written to be obviously right
rather than fast (float64 accumulation where it matters). Their signature is
``ref(inputs, attrs, weights) -> output`` with ``attrs`` complete (schema defaults
filled in). :func:`run_graph` runs a whole graph with them.
"""

import math

import numpy as np

from framedelta.formats.ops import OPS, resolve_attrs, window_out


def _activation(y, attrs):
    if attrs["activation"] == "relu":
        return _relu_values(y)
    if attrs["activation"] == "clamp":
        return _clamp_values(y, attrs["act_min"], attrs["act_max"])
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

# --- windows: transposed conv, average pools --------------------------------

# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------


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
