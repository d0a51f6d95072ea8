"""Conv, ConvTranspose, BatchNormalization and the pools.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import math

import numpy as np

from ...rules import fits_window
from . import image, ints, onnx_rule


def _pads(ctx, attrs, in_hw, kernel, stride, dilation):
    """(top, left, bottom, right) from ``pads`` (begin..., end...) or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = ints(attrs, "pads", (0, 0, 0, 0))
        if len(p) != 4:
            raise ctx.unsupported(f"attribute 'pads' {list(p)}: only 2-D windows are "
                                  f"supported")
        return p
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(f"attribute 'auto_pad'={auto!r} is not supported")
    out = []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    (t, b), (l, r) = out
    return (t, l, b, r)


def _window(ctx, attrs, x, kernel):
    stride = ints(attrs, "strides", (1, 1))
    dilation = ints(attrs, "dilations", (1, 1))
    if len(kernel) != 2 or len(stride) != 2 or len(dilation) != 2:
        raise ctx.unsupported(f"a {len(kernel)}-D window: only 2-D is supported")
    return {"kernel": tuple(int(k) for k in kernel), "stride": stride,
            "pads": _pads(ctx, attrs, ctx.shape(x)[2:], kernel, stride, dilation),
            "dilation": dilation}


@onnx_rule("Conv", produces=("conv2d",))
def conv(ctx, ins, attrs):
    """2-D convolution: pads or auto_pad, strides, dilations, group; no bias is zeros."""
    x = image(ctx, ins[0])
    w = ctx.const(ins[1], "W").astype(np.float32)
    bias = np.zeros(w.shape[0], np.float32) if len(ins) < 3 or ins[2] is None \
        else ctx.const(ins[2], "B")
    a = _window(ctx, attrs, x, w.shape[2:])
    if not fits_window(a["pads"], a["kernel"], a["dilation"]):
        raise ctx.unsupported(f"attribute 'pads' {list(a['pads'])} is not smaller than the "
                              f"dilated kernel extent")
    a.update(out_channels=int(w.shape[0]), groups=int(attrs.get("group", 1)))
    return ctx.emit("conv2d", [x], a, {"weight": w, "bias": bias.reshape(-1)})


@onnx_rule("ConvTranspose", produces=("conv_transpose2d",))
def conv_transpose(ctx, ins, attrs):
    """2-D transposed convolution: pads, output_padding, strides, dilations, group (an
    explicit output_shape or auto_pad is not supported)."""
    x = image(ctx, ins[0])
    w = ctx.const(ins[1], "W").astype(np.float32)
    g = int(attrs.get("group", 1))
    bias = np.zeros(w.shape[1] * g, np.float32) if len(ins) < 3 or ins[2] is None \
        else ctx.const(ins[2], "B")
    for key in ("output_shape",):
        if key in attrs:
            raise ctx.unsupported(f"attribute {key!r} is not supported: give pads instead")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise ctx.unsupported(f"attribute 'auto_pad'={attrs['auto_pad']!r} is not supported")
    a = {"out_channels": int(w.shape[1]) * g, "kernel": tuple(int(k) for k in w.shape[2:]),
         "stride": ints(attrs, "strides", (1, 1)), "pads": ints(attrs, "pads", (0, 0, 0, 0)),
         "output_padding": ints(attrs, "output_padding", (0, 0)),
         "dilation": ints(attrs, "dilations", (1, 1)), "groups": g}
    return ctx.emit("conv_transpose2d", [x], a, {"weight": w, "bias": bias.reshape(-1)})


@onnx_rule("BatchNormalization", produces=("batch_norm",))
def batch_norm(ctx, ins, attrs):
    """Inference-mode batch norm as a per-channel affine (folded into a preceding conv
    by the passes)."""
    x = ctx.data(ins[0], "X")
    gamma, beta, mean, var = (ctx.const(v, n).astype(np.float64)
                              for v, n in zip(ins[1:5], ("scale", "B", "mean", "var")))
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    return ctx.emit("batch_norm", [x], {}, {"scale": scale, "shift": beta - mean * scale})


@onnx_rule("MaxPool", produces=("max_pool2d",))
def max_pool(ctx, ins, attrs):
    """2-D max pooling: pads or auto_pad, strides, dilations, ceil_mode."""
    x = image(ctx, ins[0])
    if attrs.get("storage_order", 0):
        raise ctx.unsupported("attribute 'storage_order'=1 is not supported")
    a = _window(ctx, attrs, x, attrs["kernel_shape"])
    return ctx.emit("max_pool2d", [x], dict(a, ceil_mode=int(attrs.get("ceil_mode", 0))))


@onnx_rule("AveragePool", produces=("avg_pool2d",))
def avg_pool(ctx, ins, attrs):
    """2-D average pooling: pads, strides, ceil_mode, count_include_pad (default 0)."""
    x = image(ctx, ins[0])
    a = _window(ctx, attrs, x, attrs["kernel_shape"])
    if a.pop("dilation") != (1, 1):
        raise ctx.unsupported("attribute 'dilations': dilated average pooling is not "
                              "supported")
    return ctx.emit("avg_pool2d", [x], dict(a, ceil_mode=int(attrs.get("ceil_mode", 0)),
                                            count_include_pad=int(attrs.get(
                                                "count_include_pad", 0))))


@onnx_rule("GlobalAveragePool", produces=("global_avg_pool",))
def global_avg_pool(ctx, ins, attrs):
    """Mean over H and W, kept as (1, C, 1, 1)."""
    return ctx.emit("global_avg_pool", [image(ctx, ins[0])], {"keepdim": 1})


@onnx_rule("GlobalMaxPool", produces=("adaptive_max_pool2d",))
def global_max_pool(ctx, ins, attrs):
    """Max over H and W: an adaptive max pool to 1 x 1."""
    return ctx.emit("adaptive_max_pool2d", [image(ctx, ins[0])], {"size": (1, 1)})
