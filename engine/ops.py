"""Each op's kernel bound to one node: weights packed, tables precomputed, once.

``prepare_<op>(node, attrs, in_shapes, out_shape)`` returns ``run(inputs, out,
n_threads, pix=None)``, which computes ``out`` (engine layout, see layout.py) from
``inputs``: every position when ``pix`` is None (the dense path), else only the flat
output positions in ``pix`` (the incremental path: ``out`` is the node's cache and the
other positions keep their values). Both paths run the same code per position, so
they agree bit for bit. Ops registered without a masked form (global ones) ignore
``pix``: the stream only ever calls them whole. All the work that depends only on the
node (weight packing, resize tables, tile sizes) happens here, at load time, once for
both paths, so that a run is just kernel calls.
"""


import numpy as np

from . import _elementwise as E
from . import _kernels as K
from .layout import to_internal, to_torch

ACTIVATIONS = {"none": 0, "relu": 1, "clamp": 2}

# Conv tiling: an im2col tile of about this many bytes stays in L2 while the gemm reads it
# (several times over, once per 32-column panel of the weights).
IM2COL_TILE_BYTES = 512 * 1024
MIN_M_TILE, MAX_M_TILE = 48, 288
M_TILE_ALIGN = 12      # the gemm kernel's register block (FD_MR rows)
# Aim for at least this many independent pieces per conv so both cores stay busy even
# when a layer has few pixels: first with smaller row tiles (down to MIN_M_TILE, aiming
# at MIN_ROW_TILES), then by splitting the columns. Fixed, not n_threads: a speed choice
# only (each element is computed alike in any tiling), but kept independent of threads.
MIN_PIECES = 8
MIN_ROW_TILES = 16


def _ceil_div(a, b):
    return -(-a // b)


def conv_tiling(m, k, n, groups, m_tile=None):
    """(m_tile, n_split) for an (m x k) . (k x n) product per group.

    n_split is in 32-column panels of the packed weights (the kernel rounds blocks up to
    whole panels). Results never depend on either: each element is computed alike.
    """
    if m_tile is None:
        m_tile = IM2COL_TILE_BYTES // (4 * k)
        m_tile = max(MIN_M_TILE, min(MAX_M_TILE, m_tile // M_TILE_ALIGN * M_TILE_ALIGN))
        if _ceil_div(m, m_tile) < MIN_ROW_TILES:
            m_tile = max(MIN_M_TILE, min(m_tile, _ceil_div(_ceil_div(m, MIN_ROW_TILES),
                                                           M_TILE_ALIGN) * M_TILE_ALIGN))
    n_mt = _ceil_div(m, m_tile)
    n_split = 1
    if groups == 1 and n_mt < MIN_PIECES:
        # few pixels (deep layers): also split the output channels, in whole panels
        n_split = max(1, min(_ceil_div(MIN_PIECES, n_mt), _ceil_div(n, 32)))
    return m_tile, n_split


def _conv_common(attrs):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs["dilation"]
    act = ACTIVATIONS[attrs["activation"]]
    return kh, kw, sh, sw, pt, pl, dh, dw, act, float(attrs["act_min"]), float(attrs["act_max"])


def is_depthwise(attrs, in_shapes):
    cin = in_shapes[0][1]
    return attrs["groups"] == cin and attrs["out_channels"] == cin and cin > 1


def pack_conv_weight(w, groups):
    """(Cout, Cin/g, KH, KW) torch layout -> (g, KH*KW*Cin/g, Cout/g), im2col's row order."""
    cout, cin_g, kh, kw = w.shape
    w = w.reshape(groups, cout // groups, cin_g, kh, kw)
    return np.ascontiguousarray(w.transpose(0, 3, 4, 2, 1).reshape(groups, kh * kw * cin_g,
                                                                   cout // groups))


def _aligned_empty(n, align=64):
    """float32 (n,) whose data starts on an ``align``-byte boundary (whole cache lines)."""
    raw = np.empty(n + align // 4, np.float32)
    off = (-raw.ctypes.data % align) // 4
    return raw[off:off + n]


def gemm_pack(b):
    """A (K, N) matrix packed for the gemm kernel (engine/gemm.h), cache-line aligned."""
    b = np.ascontiguousarray(b, np.float32)
    out = _aligned_empty(K.gemm_packed_size(*b.shape))
    K.gemm_pack(b, out)
    return out


def pack_conv_weight_gemm(w, groups):
    """(Cout, Cin/g, KH, KW) torch layout -> (g, gemm_packed_size(KH*KW*Cin/g, Cout/g)):
    each group's pack_conv_weight matrix packed for fd_gemm_bias_act."""
    wm = pack_conv_weight(w, groups)
    size = K.gemm_packed_size(wm.shape[1], wm.shape[2])
    out = _aligned_empty(groups * size).reshape(groups, size)
    for g in range(groups):
        K.gemm_pack(wm[g], out[g])
    return out


def pack_linear_weight(w):
    """(O, F) torch layout -> the (F, O) matrix w.T packed for the gemm kernel."""
    return gemm_pack(np.asarray(w, np.float32).T)


def pack_depthwise_weight(w):
    """(C, 1, KH, KW) -> (KH*KW, C): the taps of one position, channels contiguous."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c, kh * kw).T)


def positions(a):
    """(P, C) view of an engine-layout array: (H*W, C) for images, (1, F) otherwise."""
    return a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a.reshape(1, -1)


def prepare_conv2d(node, attrs, in_shapes, out_shape, m_tile=None):
    kh, kw, sh, sw, pt, pl, dh, dw, act, lo, hi = _conv_common(attrs)
    bias = np.ascontiguousarray(node.weights["bias"], np.float32)
    if is_depthwise(attrs, in_shapes):
        w = pack_depthwise_weight(node.weights["weight"])

        def run(inputs, out, n_threads, pix=None):
            K.depthwise_conv2d(inputs[0], w, bias, out, kh, kw, sh, sw, pt, pl, dh, dw,
                               act, lo, hi, n_threads, pix)
        return run

    g = attrs["groups"]
    cout, cin_g = node.weights["weight"].shape[:2]
    w = pack_conv_weight_gemm(node.weights["weight"], g)
    m = out_shape[2] * out_shape[3]
    mt, ns = conv_tiling(m, kh * kw * cin_g, cout // g, g, m_tile)

    def run(inputs, out, n_threads, pix=None):
        if pix is None:
            K.conv2d(inputs[0], w, bias, out, kh, kw, sh, sw, pt, pl, dh, dw, act, lo, hi,
                     mt, ns, n_threads)
        else:
            K.conv2d_masked(inputs[0], w, bias, out, pix, kh, kw, sh, sw, pt, pl, dh, dw,
                            act, lo, hi, mt, n_threads)
    return run


def prepare_batch_norm(node, attrs, in_shapes, out_shape):
    scale = np.ascontiguousarray(node.weights["scale"], np.float32)
    shift = np.ascontiguousarray(node.weights["shift"], np.float32)

    def run(inputs, out, n_threads, pix=None):
        K.affine(positions(inputs[0]), scale, shift, positions(out), n_threads, pix)
    return run


def _prepare_activation(act, lo, hi):
    def run(inputs, out, n_threads, pix=None):
        K.activation(positions(inputs[0]), positions(out), act, lo, hi, n_threads, pix)
    return run


def prepare_relu(node, attrs, in_shapes, out_shape):
    return _prepare_activation(ACTIVATIONS["relu"], 0.0, 0.0)


def prepare_clamp(node, attrs, in_shapes, out_shape):
    return _prepare_activation(ACTIVATIONS["clamp"], float(attrs["min"]), float(attrs["max"]))


def prepare_identity(node, attrs, in_shapes, out_shape):
    return _prepare_activation(ACTIVATIONS["none"], 0.0, 0.0)


def prepare_max_pool2d(node, attrs, in_shapes, out_shape):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs["dilation"]

    def run(inputs, out, n_threads, pix=None):
        K.max_pool2d(inputs[0], out, kh, kw, sh, sw, pt, pl, dh, dw, n_threads, pix)
    return run


def prepare_global_avg_pool(node, attrs, in_shapes, out_shape):
    def run(inputs, out, n_threads, pix=None):
        K.global_avg_pool(inputs[0], out.reshape(-1), n_threads)
    return run


def prepare_concat(node, attrs, in_shapes, out_shape):
    if len(out_shape) == 4 or len(out_shape) == 2:
        # channels are the last engine axis for images and the only one for vectors
        def run(inputs, out, n_threads, pix=None):
            K.concat_channels([positions(a) for a in inputs], positions(out), n_threads, pix)
        return run

    def run_other(inputs, out, n_threads, pix=None):
        out[...] = np.concatenate(inputs, axis=attrs["axis"])
    return run_other


def nearest_indices(out_size, in_size, scale):
    """torch's nearest source index: min(floor(dst * scale), in - 1), in float32."""
    src = np.floor(np.arange(out_size, dtype=np.float32) * np.float32(scale))
    return np.minimum(src.astype(np.int64), in_size - 1).astype(np.int32)


def prepare_upsample_nearest(node, attrs, in_shapes, out_shape):
    iy = nearest_indices(out_shape[2], in_shapes[0][2], attrs["scales"][0])
    ix = nearest_indices(out_shape[3], in_shapes[0][3], attrs["scales"][1])

    def run(inputs, out, n_threads, pix=None):
        K.gather_pixels(inputs[0], iy, ix, out, n_threads, pix)
    return run


def bilinear_taps(out_size, in_size, align_corners, scale):
    """Per output index: source indices (out, 2) int32 and weights (out, 2) float32.

    Same float32 arithmetic as torch's area_pixel_compute_source_index.
    """
    d = np.arange(out_size, dtype=np.float32)
    if align_corners:
        step = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
        src = step * d
    else:
        src = np.maximum(np.float32(scale) * (d + np.float32(0.5)) - np.float32(0.5),
                         np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    idx = np.stack([i0, i1], 1).astype(np.int32)
    wts = np.stack([np.float32(1) - l1, l1], 1).astype(np.float32)
    return np.ascontiguousarray(idx), np.ascontiguousarray(wts)


def prepare_upsample_bilinear(node, attrs, in_shapes, out_shape):
    ac = bool(attrs["align_corners"])
    ys, wy = bilinear_taps(out_shape[2], in_shapes[0][2], ac, attrs["scales"][0])
    xs, wx = bilinear_taps(out_shape[3], in_shapes[0][3], ac, attrs["scales"][1])

    def run(inputs, out, n_threads, pix=None):
        K.bilinear(inputs[0], ys, wy, xs, wx, out, n_threads, pix)
    return run


def prepare_linear(node, attrs, in_shapes, out_shape):
    w = pack_linear_weight(node.weights["weight"])
    b = np.ascontiguousarray(node.weights["bias"], np.float32)

    def run(inputs, out, n_threads, pix=None):
        K.linear(inputs[0], w, b, out, n_threads)
    return run


def prepare_reshape(node, attrs, in_shapes, out_shape):
    in_shape = in_shapes[0]

    def run(inputs, out, n_threads, pix=None):
        # torch's view is row-major over torch layout: go there and back
        out[...] = to_internal(to_torch(inputs[0], in_shape).reshape(out_shape), out_shape)
    return run


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

def is_image(shape):
    """(1, C, H, W): the engine holds it as an (H, W, C) array."""
    return len(shape) == 4 and shape[0] == 1


def broadcast_strides(shape, out_shape):
    """Element strides over the output's engine axes (y, x, c) of a C-contiguous
    engine-layout image of torch ``shape``; 0 along the axes it broadcasts over."""
    h, w, c = shape[2], shape[3], shape[1]
    strides = (w * c, c, 1)
    return np.array([0 if n == 1 else s for n, s in zip((h, w, c), strides)], np.intp)


_NUMPY_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _prepare_binary(node, attrs, in_shapes, out_shape):
    """add, sub, mul, div: two inputs, or the input and the constant ``other``."""
    op = node.op
    shapes = list(in_shapes)
    const = None
    if len(in_shapes) == 1:
        shapes.append(tuple(attrs["other_shape"]))
        const = np.ascontiguousarray(node.weights["other"], np.float32).reshape(shapes[1])
    order = (1, 0) if attrs["reverse"] else (0, 1)

    if is_image(out_shape):
        other = None if const is None else to_internal(const, shapes[1])
        strides = [broadcast_strides(s, out_shape) for s in shapes]
        code = E.OPS[op]

        def run(inputs, out, n_threads, pix=None):
            operands = [inputs[0], inputs[1] if other is None else other]
            a, b = (operands[i] for i in order)
            E.binary(a, strides[order[0]], b, strides[order[1]], out, code, n_threads, pix)
        return run

    fn = _NUMPY_BINARY[op]

    def run_whole(inputs, out, n_threads, pix=None):
        # tails (vectors, detection heads): torch layout, numpy's broadcasting
        operands = [to_torch(inputs[0], shapes[0]),
                    const if const is not None else to_torch(inputs[1], shapes[1])]
        a, b = (operands[i] for i in order)
        with np.errstate(all="ignore"):        # inf and NaN are values here, as in torch
            out[...] = to_internal(fn(a, b, dtype=np.float32), out_shape)
    return run_whole


prepare_add = prepare_sub = prepare_mul = prepare_div = _prepare_binary


# --- activations and softmax ------------------------------------------------

# --- windows: transposed conv, average pools --------------------------------

# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------
