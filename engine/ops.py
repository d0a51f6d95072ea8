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

from . import _activations as A
from . import _elementwise as E
from . import _kernels as K
from . import _rearrange
from . import _tails as T
from . import _windows as W
from .layout import internal_shape, is_image, to_internal, to_torch
from .packs import shared

# formats.ops.CONV_ACTIVATIONS -> the kernels' codes (engine/fused.h, _act.pxi)
ACTIVATIONS = {"none": 0, "relu": 1, "clamp": 2, "silu": 3, "hardswish": 4, "sigmoid": 5}

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


@shared     # one packed copy for every crop model (packs.py)
def pack_conv_weight_gemm(w, groups):
    """(Cout, Cin/g, KH, KW) torch layout -> (g, gemm_packed_size(KH*KW*Cin/g, Cout/g)):
    each group's pack_conv_weight matrix packed for fd_gemm_bias_act."""
    wm = pack_conv_weight(w, groups)
    size = K.gemm_packed_size(wm.shape[1], wm.shape[2])
    out = _aligned_empty(groups * size).reshape(groups, size)
    for g in range(groups):
        K.gemm_pack(wm[g], out[g])
    return out


@shared     # one packed copy for every crop model (packs.py)
def pack_linear_weight(w):
    """(O, F) torch layout -> the (F, O) matrix w.T packed for the gemm kernel."""
    return gemm_pack(np.asarray(w, np.float32).T)


@shared     # one packed copy for every crop model (packs.py)
def pack_depthwise_weight(w):
    """(C, 1, KH, KW) -> (KH*KW, C): the taps of one position, channels contiguous."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c, kh * kw).T)


def positions(a):
    """(P, C) view of an engine-layout array: (H*W, C) for images, (N, F) for (N, F)
    matrices with N != 1, (1, F) otherwise."""
    return a.reshape(-1, a.shape[-1]) if a.ndim in (2, 3) else a.reshape(1, -1)


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
    axis = attrs["axis"]
    if len(out_shape) in (2, 4) and out_shape[0] == 1 and axis == 1:
        # channels are the last engine axis for images and the only one for vectors
        def run(inputs, out, n_threads, pix=None):
            K.concat_channels([positions(a) for a in inputs], positions(out), n_threads, pix)
        return run
    if is_image(out_shape):
        # H or W of an image (engine axes 0, 1): a gather from per-row/column tables
        axis -= 2
        sizes = [s[2 + axis] for s in in_shapes]
        src = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
        loc = np.concatenate([np.arange(n) for n in sizes]).astype(np.int32)

        def run_spatial(inputs, out, n_threads, pix=None):
            _rearrange.concat_spatial(list(inputs), src, loc, axis, out, n_threads, pix)
        return run_spatial

    def run_other(inputs, out, n_threads, pix=None):
        np.concatenate(inputs, axis=axis, out=out)
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
        if inputs[0].ndim == 1:
            K.linear(inputs[0], w, b, out, n_threads)
            return
        for i in range(inputs[0].shape[0]):    # (N, F) with N != 1: row by row
            K.linear(inputs[0][i], w, b, out[i], n_threads)
    return run


def prepare_reshape(node, attrs, in_shapes, out_shape):
    in_shape = in_shapes[0]

    def run(inputs, out, n_threads, pix=None):
        # torch's view is row-major over torch layout: go there and back
        out[...] = to_internal(to_torch(inputs[0], in_shape).reshape(out_shape), out_shape)
    return run


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

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

UNARY = A.unary_codes()

# torch's pow(Tensor, Scalar) fast paths: part of the result, not only of the speed
# (sqrt(-inf) is NaN where pow(-inf, 0.5) is inf; x ** 2 is exactly x * x).
POW_SPECIAL = {2.0: "square", 3.0: "cube", -2.0: "inv_square", 0.5: "sqrt", -0.5: "rsqrt",
               -1.0: "reciprocal"}


def axis_view(shape, axis):
    """(O, N, I): the engine-layout array of a tensor of torch ``shape`` reshaped so that
    torch axis ``axis`` is the middle one. An image's channel axis gives (H*W, C, 1), a
    vector's (1, F, 1); the batch axis of an image or vector (size 1, absent from the
    engine layout) gives (1, 1, numel)."""
    shape = tuple(shape)
    ishape = internal_shape(shape)
    if len(shape) in (2, 4) and shape[0] == 1:
        iaxis = {4: (None, 2, 0, 1), 2: (None, 0)}[len(shape)][axis]
    else:
        iaxis = axis
    if iaxis is None:
        return 1, 1, int(np.prod(ishape))
    return (int(np.prod(ishape[:iaxis])), ishape[iaxis], int(np.prod(ishape[iaxis + 1:])))


def _prepare_unary(name, a=0.0):
    code = UNARY[name]

    def run(inputs, out, n_threads, pix=None):
        A.unary(positions(inputs[0]), positions(out), code, a, n_threads, pix)
    return run


def prepare_leaky_relu(node, attrs, in_shapes, out_shape):
    return _prepare_unary("leaky_relu", float(np.float32(attrs["negative_slope"])))


def prepare_sigmoid(node, attrs, in_shapes, out_shape):
    return _prepare_unary("sigmoid")


def prepare_tanh(node, attrs, in_shapes, out_shape):
    return _prepare_unary("tanh")


def prepare_silu(node, attrs, in_shapes, out_shape):
    return _prepare_unary("silu")


def prepare_hardswish(node, attrs, in_shapes, out_shape):
    return _prepare_unary("hardswish")


def prepare_hardsigmoid(node, attrs, in_shapes, out_shape):
    return _prepare_unary("hardsigmoid")


def prepare_gelu(node, attrs, in_shapes, out_shape):
    return _prepare_unary("gelu_tanh" if attrs["approximate"] == "tanh" else "gelu")


def prepare_pow(node, attrs, in_shapes, out_shape):
    e = float(attrs["exponent"])
    return _prepare_unary(POW_SPECIAL.get(e, "pow"), float(np.float32(e)))


def prepare_prelu(node, attrs, in_shapes, out_shape):
    view = axis_view(out_shape, 1)
    slope = np.ascontiguousarray(np.broadcast_to(
        np.asarray(node.weights["slope"], np.float32).reshape(-1), (view[1],)))

    def run(inputs, out, n_threads, pix=None):
        A.prelu(inputs[0].reshape(view), slope, out.reshape(view), n_threads, pix)
    return run


def is_channel_softmax(attrs, shape):
    """Softmax over the channels of an image: per position, computed where dirty."""
    return is_image(shape) and attrs["axis"] == 1


def _prepare_softmax(attrs, out_shape, log_):
    view = axis_view(out_shape, attrs["axis"])
    if is_channel_softmax(attrs, out_shape):
        def run(inputs, out, n_threads, pix=None):
            A.softmax(inputs[0].reshape(view), out.reshape(view), log_, n_threads, pix)
        return run

    def run_whole(inputs, out, n_threads, pix=None):
        # global (receptive.softmax gives None): the stream never passes pix; a caller
        # that does gets the whole result at those positions, the rest left alone
        if pix is None:
            A.softmax(inputs[0].reshape(view), out.reshape(view), log_, n_threads)
            return
        tmp = np.empty_like(out)
        A.softmax(inputs[0].reshape(view), tmp.reshape(view), log_, n_threads)
        positions(out)[pix] = positions(tmp)[pix]
    return run_whole


def prepare_softmax(node, attrs, in_shapes, out_shape):
    return _prepare_softmax(attrs, out_shape, False)


def prepare_log_softmax(node, attrs, in_shapes, out_shape):
    return _prepare_softmax(attrs, out_shape, True)


# --- windows: transposed conv, average pools --------------------------------

@shared     # one packed copy for every crop model (packs.py)
def pack_conv_transpose_weight(w, groups, stride, dilation):
    """(Cin, Cout/g, KH, KW) torch layout -> the packed weights of _windows.conv_transpose2d:
    per stride phase (ry, rx), row-major, and per group, the (ny * nx * Cin/g, Cout/g)
    matrix of the phase's taps in im2col order (tap row, tap column, input channel),
    gemm-packed. Phases that no tap reaches hold nothing."""
    cin, og, kh, kw = w.shape
    cg = cin // groups
    ys, _, yt = W.phase_tables(kh, stride[0], dilation[0])
    xs, _, xt = W.phase_tables(kw, stride[1], dilation[1])
    wg = np.asarray(w, np.float32).reshape(groups, cg, og, kh, kw)
    n8 = _ceil_div(og, 8) * 8
    out = _aligned_empty(kh * kw * groups * cg * n8)
    off = 0
    for ry in np.flatnonzero(np.diff(ys)):
        ti = yt[ys[ry]:ys[ry + 1]]
        for rx in np.flatnonzero(np.diff(xs)):
            tj = xt[xs[rx]:xs[rx + 1]]
            sub = wg[:, :, :, ti][:, :, :, :, tj]                  # (g, cg, og, ny, nx)
            mats = sub.transpose(0, 3, 4, 1, 2).reshape(groups, len(ti) * len(tj) * cg, og)
            size = mats.shape[1] * n8
            for g in range(groups):
                K.gemm_pack(np.ascontiguousarray(mats[g]), out[off:off + size])
                off += size
    assert off == out.size
    return out


def prepare_conv_transpose2d(node, attrs, in_shapes, out_shape, m_tile=None):
    kh, kw, sh, sw, pt, pl, dh, dw, act, lo, hi = _conv_common(attrs)
    g = attrs["groups"]
    if is_depthwise(attrs, in_shapes):
        # one channel per group: direct loops beat a gemm of one column per group
        wd = pack_depthwise_weight(node.weights["weight"])
        bias = np.ascontiguousarray(node.weights["bias"], np.float32)
        ys, yo, yt = W.phase_tables(kh, sh, dh)
        xs, xo, xt = W.phase_tables(kw, sw, dw)

        def run_dw(inputs, out, n_threads, pix=None):
            W.conv_transpose2d_depthwise(inputs[0], wd, bias, out, sh, sw, pt, pl, ys, yo,
                                         yt, xs, xo, xt, act, lo, hi, n_threads, pix)
        return run_dw
    w = pack_conv_transpose_weight(node.weights["weight"], g, (sh, sw), (dh, dw))
    bias = np.ascontiguousarray(node.weights["bias"], np.float32)
    ys, yo, _ = W.phase_tables(kh, sh, dh)
    xs, xo, _ = W.phase_tables(kw, sw, dw)
    cg, og = in_shapes[0][1] // g, attrs["out_channels"] // g
    k_max = int(np.diff(ys).max()) * int(np.diff(xs).max()) * cg
    mt, _ = conv_tiling(out_shape[2] * out_shape[3], max(1, k_max), og, g, m_tile)

    def run(inputs, out, n_threads, pix=None):
        W.conv_transpose2d(inputs[0], w, bias, out, kh, kw, sh, sw, pt, pl, ys, yo, xs, xo,
                           g, act, lo, hi, mt, n_threads, pix)
    return run


POOL_MODES = {"max": 0, "avg": 1, "avg_axes": 2}


def avg_pool_tables(out_size, in_size, k, s, p0, p1, count_include_pad):
    """torch's avg_pool2d windows along one axis: (start, end, count) int32 per output
    index, [start, end) clipped to the input; count is the window's length clipped to
    the padded input (count_include_pad) or to the input."""
    o = np.arange(out_size, dtype=np.int64)
    start = o * s - p0
    end = np.minimum(start + k, in_size + p1)
    padded = end - start
    start, end = np.maximum(start, 0), np.minimum(end, in_size)
    count = padded if count_include_pad else end - start
    return start.astype(np.int32), end.astype(np.int32), count.astype(np.int32)


def adaptive_tables(out_size, in_size):
    """Adaptive pooling windows along one axis: (start, end, end - start) int32,
    start = floor(i * in / out), end = ceil((i + 1) * in / out)."""
    i = np.arange(out_size, dtype=np.int64)
    start = (i * in_size) // out_size
    end = -(-((i + 1) * in_size) // out_size)
    return start.astype(np.int32), end.astype(np.int32), (end - start).astype(np.int32)


def _prepare_pool(rows, cols, divisor, mode):

    def run(inputs, out, n_threads, pix=None):
        W.window_pool(inputs[0], out, *rows, *cols, divisor, mode, n_threads, pix)
    return run


def pool_axes(op, attrs, in_shapes, out_shape):
    """Per axis (start, end, count) of the windows of avg_pool2d or the adaptive pools."""
    h, w = in_shapes[0][2:]
    if op == "avg_pool2d":
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = attrs["kernel"], attrs["stride"], attrs["pads"]
        inc = bool(attrs["count_include_pad"])
        return (avg_pool_tables(out_shape[2], h, kh, sh, pt, pb, inc),
                avg_pool_tables(out_shape[3], w, kw, sw, pl, pr, inc))
    return adaptive_tables(out_shape[2], h), adaptive_tables(out_shape[3], w)


def prepare_avg_pool2d(node, attrs, in_shapes, out_shape):
    rows, cols = pool_axes("avg_pool2d", attrs, in_shapes, out_shape)
    return _prepare_pool(rows, cols, int(attrs["divisor"]), POOL_MODES["avg"])


def prepare_adaptive_avg_pool2d(node, attrs, in_shapes, out_shape):
    rows, cols = pool_axes("adaptive_avg_pool2d", attrs, in_shapes, out_shape)
    return _prepare_pool(rows, cols, 0, POOL_MODES["avg_axes"])


def prepare_adaptive_max_pool2d(node, attrs, in_shapes, out_shape):
    rows, cols = pool_axes("adaptive_max_pool2d", attrs, in_shapes, out_shape)
    return _prepare_pool(rows, cols, 0, POOL_MODES["max"])


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------


def prepare_pad(node, attrs, in_shapes, out_shape):
    pt, pl, _, _ = attrs["pads"]
    value = float(attrs["value"])

    def run(inputs, out, n_threads, pix=None):
        _rearrange.pad(inputs[0], out, pt, pl, value, n_threads, pix)
    return run


def prepare_slice(node, attrs, in_shapes, out_shape):
    axis, start, end, step = attrs["axis"], attrs["start"], attrs["end"], attrs["step"]
    in_shape = tuple(in_shapes[0])
    if is_image(in_shape):
        def run(inputs, out, n_threads, pix=None):
            _rearrange.slice_image(inputs[0], out, axis, start, step, n_threads, pix)
        return run
    index = [slice(None)] * len(in_shape)
    index[axis] = slice(start, end, step)
    index = tuple(index)

    def run_whole(inputs, out, n_threads, pix=None):
        # vectors and other ranks: a copy in torch layout, computed whole
        out[...] = to_internal(to_torch(inputs[0], in_shape)[index], out_shape)
    return run_whole


def prepare_group_norm(node, attrs, in_shapes, out_shape):
    w = np.ascontiguousarray(node.weights["weight"], np.float32)
    b = np.ascontiguousarray(node.weights["bias"], np.float32)
    g, eps = attrs["num_groups"], float(attrs["eps"])

    def run(inputs, out, n_threads, pix=None):
        _rearrange.group_norm(positions(inputs[0]), w, b, positions(out), g, eps, n_threads)
    return run

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

# permute, expand and matmul run whole (global ops), in torch layout: each input is read
# through a torch-layout view of its engine array (layout.to_torch) and the result
# written through a torch-layout view of ``out``.

def prepare_permute(node, attrs, in_shapes, out_shape):
    in_shape, dims = in_shapes[0], tuple(attrs["dims"])

    def run(inputs, out, n_threads, pix=None):
        to_torch(out, out_shape)[...] = to_torch(inputs[0], in_shape).transpose(dims)
    return run


def prepare_expand(node, attrs, in_shapes, out_shape):
    in_shape = in_shapes[0]

    def run(inputs, out, n_threads, pix=None):
        to_torch(out, out_shape)[...] = to_torch(inputs[0], in_shape)
    return run


def prepare_matmul(node, attrs, in_shapes, out_shape):
    (sa, sb) = in_shapes
    m, k, n = sa[-2], sa[-1], sb[-1]
    batch = int(np.prod(sa[:-2], dtype=np.int64))
    # each batch's packed B starts on a cache line
    stride = -(-T.bmm_packed_size(k, n) // 16) * 16
    zeros = np.zeros(n, np.float32)
    # below rank 4 the engine array holds the torch-layout elements in torch order
    direct = len(out_shape) != 4

    def run(inputs, out, n_threads, pix=None):
        a = np.ascontiguousarray(to_torch(inputs[0], sa)).reshape(batch, m, k)
        b = np.ascontiguousarray(to_torch(inputs[1], sb)).reshape(batch, k, n)
        packed = _aligned_empty(batch * stride).reshape(batch, stride)   # per call: streams
        if direct:                                                       # may run at once
            T.bmm(a, b, packed, zeros, out.reshape(batch, m, n), n_threads)
        else:
            c = np.empty((batch, m, n), np.float32)
            T.bmm(a, b, packed, zeros, c, n_threads)
            to_torch(out, out_shape)[...] = c.reshape(out_shape)
    return run


def prepare_pixel_shuffle(node, attrs, in_shapes, out_shape):
    r = attrs["upscale"]

    def run(inputs, out, n_threads, pix=None):
        T.pixel_shuffle(inputs[0], out, r, n_threads, pix)
    return run


def prepare_pixel_unshuffle(node, attrs, in_shapes, out_shape):
    r = attrs["downscale"]

    def run(inputs, out, n_threads, pix=None):
        T.pixel_unshuffle(inputs[0], out, r, n_threads, pix)
    return run


def prepare_layer_norm(node, attrs, in_shapes, out_shape):
    w = np.ascontiguousarray(node.weights["weight"], np.float32)
    b = np.ascontiguousarray(node.weights["bias"], np.float32)
    eps, shape, axis = float(attrs["eps"]), tuple(in_shapes[0]), attrs["axis"]
    if len(shape) == 4 and axis == 1:
        # channels at each position: the last engine axis, one row per pixel
        def run(inputs, out, n_threads, pix=None):
            T.layer_norm(positions(inputs[0]), w, b, positions(out), eps, n_threads, pix)
        return run

    def run_whole(inputs, out, n_threads, pix=None):
        # any other axis: move it last in torch layout, normalise the rows, move it back
        x = np.ascontiguousarray(np.moveaxis(to_torch(inputs[0], shape), axis, -1))
        y = np.empty_like(x)
        T.layer_norm(x.reshape(-1, shape[axis]), w, b, y.reshape(-1, shape[axis]), eps,
                     n_threads)
        to_torch(out, out_shape)[...] = np.moveaxis(y, -1, axis)
    return run_whole

