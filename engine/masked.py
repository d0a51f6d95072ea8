"""Each op's masked kernel bound to one node: ``run(inputs, out, pix, n_threads)``.

``out`` is the node's cache (engine layout) and ``pix`` the flat indices of the
output positions to recompute (int32, ascending); every other position of ``out`` is
left alone. Global ops have no masked form: the stream recomputes them whole when
any input changed (their registry entry says ``masked=None``).
"""

import numpy as np

from . import _incremental as I
from .ops import (ACTIVATIONS, _conv_common, bilinear_taps, conv_tiling, is_depthwise,
                  nearest_indices, pack_conv_weight_gemm, pack_depthwise_weight)


def _positions(a):
    """(P, C) view of an engine-layout image: positions by channels."""
    return a.reshape(-1, a.shape[-1])


def prepare_conv2d(node, attrs, in_shapes, out_shape, m_tile=None):
    kh, kw, sh, sw, pt, pl, dh, dw, act, lo, hi = _conv_common(attrs)
    bias = np.ascontiguousarray(node.weights["bias"], np.float32)
    if is_depthwise(attrs, in_shapes):
        w = pack_depthwise_weight(node.weights["weight"])

        def run(inputs, out, pix, n_threads):
            I.depthwise_masked(inputs[0], w, bias, out, pix, kh, kw, sh, sw, pt, pl, dh, dw,
                               act, lo, hi, n_threads)
        return run
    g = attrs["groups"]
    cout, cin_g, kh, kw = node.weights["weight"].shape
    w = pack_conv_weight_gemm(node.weights["weight"], g)
    mt, _ = conv_tiling(out_shape[2] * out_shape[3], kh * kw * cin_g, cout // g, g, m_tile)

    def run(inputs, out, pix, n_threads):
        I.conv2d_masked(inputs[0], w, bias, out, pix, kh, kw, sh, sw, pt, pl, dh, dw,
                        act, lo, hi, mt, n_threads)
    return run


def prepare_max_pool2d(node, attrs, in_shapes, out_shape):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs["dilation"]

    def run(inputs, out, pix, n_threads):
        I.max_pool2d_masked(inputs[0], out, pix, kh, kw, sh, sw, pt, pl, dh, dw, n_threads)
    return run


def prepare_upsample_nearest(node, attrs, in_shapes, out_shape):
    iy = nearest_indices(out_shape[2], in_shapes[0][2], attrs["scales"][0])
    ix = nearest_indices(out_shape[3], in_shapes[0][3], attrs["scales"][1])

    def run(inputs, out, pix, n_threads):
        I.gather_pixels_masked(inputs[0], iy, ix, out, pix, n_threads)
    return run


def prepare_upsample_bilinear(node, attrs, in_shapes, out_shape):
    ac = bool(attrs["align_corners"])
    ys, wy = bilinear_taps(out_shape[2], in_shapes[0][2], ac, attrs["scales"][0])
    xs, wx = bilinear_taps(out_shape[3], in_shapes[0][3], ac, attrs["scales"][1])

    def run(inputs, out, pix, n_threads):
        I.bilinear_masked(inputs[0], ys, wy, xs, wx, out, pix, n_threads)
    return run


def _activation(act, lo, hi):
    def run(inputs, out, pix, n_threads):
        I.activation_masked(_positions(inputs[0]), _positions(out), pix, act, lo, hi, n_threads)
    return run


def prepare_relu(node, attrs, in_shapes, out_shape):
    return _activation(ACTIVATIONS["relu"], 0.0, 0.0)


def prepare_clamp(node, attrs, in_shapes, out_shape):
    return _activation(ACTIVATIONS["clamp"], float(attrs["min"]), float(attrs["max"]))


def prepare_identity(node, attrs, in_shapes, out_shape):
    return _activation(ACTIVATIONS["none"], 0.0, 0.0)


def prepare_batch_norm(node, attrs, in_shapes, out_shape):
    scale = np.ascontiguousarray(node.weights["scale"], np.float32)
    shift = np.ascontiguousarray(node.weights["shift"], np.float32)

    def run(inputs, out, pix, n_threads):
        I.affine_masked(_positions(inputs[0]), scale, shift, _positions(out), pix, n_threads)
    return run


def prepare_add(node, attrs, in_shapes, out_shape):
    def run(inputs, out, pix, n_threads):
        I.add_masked(_positions(inputs[0]), _positions(inputs[1]), _positions(out), pix,
                     n_threads)
    return run


def prepare_concat(node, attrs, in_shapes, out_shape):
    def run(inputs, out, pix, n_threads):
        I.concat_masked([_positions(a) for a in inputs], _positions(out), pix, n_threads)
    return run
