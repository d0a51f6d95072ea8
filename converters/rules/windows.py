"""Convolutions, batch norm and pooling: the window ops.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import numpy as np

from . import Unused, axis_index, fits_window, pair, rule


# --- convolution and batch norm ------------------------------------------------------

@rule("aten.convolution.default", produces=("conv2d", "conv_transpose2d"))
def convolution(ctx, a):
    """nn.Conv2d and F.conv2d (groups, depthwise, dilation); bias None becomes zeros.
    transposed=True: conv_transposed (below)."""
    if a["transposed"]:
        return conv_transposed(ctx, a)
    x = ctx.data(a["input"], "input")
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument 'input': only 2-D convolution is supported, the "
                              f"input has shape {ctx.shape(x)}")
    w = ctx.const(a["weight"], "weight")
    bias = np.zeros(w.shape[0], np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    ph, pw = pair(a["padding"], "padding")
    attrs = {"out_channels": int(w.shape[0]), "kernel": (int(w.shape[2]), int(w.shape[3])),
             "stride": pair(a["stride"], "stride"), "pads": (ph, pw, ph, pw),
             "dilation": pair(a["dilation"], "dilation"), "groups": int(a["groups"])}
    if not fits_window(attrs["pads"], attrs["kernel"], attrs["dilation"]):
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} is not smaller than the "
                              f"dilated kernel extent")
    return ctx.emit("conv2d", [x], attrs, {"weight": w, "bias": bias.reshape(-1)})


@rule("aten._native_batch_norm_legit_no_training.default", produces=("batch_norm",))
def batch_norm(ctx, a):
    """Eval-mode BatchNorm as a per-channel affine; passes.fold_batch_norm folds it
    into the preceding conv where it can."""
    x = ctx.data(a["input"], "input")
    if len(ctx.shape(x)) not in (2, 4):
        raise ctx.unsupported(f"argument 'input': batch norm needs a (N, C) or (N, C, H, W) "
                              f"input, got shape {ctx.shape(x)}")
    mean = ctx.const(a["running_mean"], "running_mean").astype(np.float64)
    var = ctx.const(a["running_var"], "running_var").astype(np.float64)
    gamma = np.ones_like(mean) if a["weight"] is None else ctx.const(a["weight"], "weight")
    beta = np.zeros_like(mean) if a["bias"] is None else ctx.const(a["bias"], "bias")
    scale = gamma.astype(np.float64) / np.sqrt(var + float(a["eps"]))
    shift = beta.astype(np.float64) - mean * scale
    y = ctx.emit("batch_norm", [x], {}, {"scale": scale, "shift": shift})
    op = "aten._native_batch_norm_legit_no_training.default"
    return y, Unused(op, "the saved mean"), Unused(op, "the saved inverse std")


# --- pooling ----------------------------------------------------------------------------

@rule("aten.max_pool2d_with_indices.default", produces=("max_pool2d",))
def max_pool2d_with_indices(ctx, a):
    """nn.MaxPool2d / F.max_pool2d; an empty stride means stride = kernel."""
    x = ctx.data(a["self"], "self")
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument 'self': max pool needs an (N, C, H, W) input, "
                              f"got shape {ctx.shape(x)}")
    kernel = pair(a["kernel_size"], "kernel_size")
    stride = pair(a["stride"], "stride") if len(a["stride"]) else kernel
    ph, pw = pair(a["padding"], "padding")
    y = ctx.emit("max_pool2d", [x], {
        "kernel": kernel, "stride": stride, "pads": (ph, pw, ph, pw),
        "dilation": pair(a["dilation"], "dilation"), "ceil_mode": int(bool(a["ceil_mode"]))})
    return y, Unused("aten.max_pool2d_with_indices.default",
                     "the indices (return_indices=True)")


@rule("aten.mean.dim", produces=("global_avg_pool",))
def mean_dim(ctx, a):
    """x.mean((2, 3)), x.mean((-1, -2)) and AdaptiveAvgPool2d(1) (which export lowers
    to a mean over the last two dims)."""
    x = ctx.data(a["self"], "self")
    rank = len(ctx.shape(x))
    dims = sorted(axis_index(int(d), rank) for d in (a["dim"] or ()))
    if rank != 4 or dims != [2, 3]:
        raise ctx.unsupported(f"argument 'dim' {a['dim']}: only the mean over H and W of an "
                              f"(N, C, H, W) tensor is supported (input shape {ctx.shape(x)})")
    if a["dtype"] is not None:
        raise ctx.unsupported(f"argument 'dtype' {a['dtype']} is not supported")
    return ctx.emit("global_avg_pool", [x], {"keepdim": int(bool(a["keepdim"]))})


def _producer(ctx, tensor):
    return next((n for n in reversed(ctx.nodes) if tensor in n.outputs), None)


def _stacked_terms(ctx, x, axis):
    """When tensor ``x`` is torch.stack(xs, axis) (exported as a cat of xs along
    ``axis`` viewed with the new axis): xs. Else None."""
    view = _producer(ctx, x)
    cat = view is not None and view.op == "reshape" and _producer(ctx, view.inputs[0])
    if not cat or cat.op not in ("concat", "concat_batch") or cat.attrs["axis"] != axis:
        return None
    s = ctx.shape(cat.inputs[0])
    if any(ctx.shape(t) != s for t in cat.inputs) \
            or ctx.shape(x) != s[:axis] + (len(cat.inputs),) + s[axis:]:
        return None
    return list(cat.inputs)


@rule("aten.sum.dim_IntList", produces=("add", "conv2d", "permute", "reshape", "linear"))
def sum_dim(ctx, a):
    """x.sum(dims), keepdim or not: over a stacked axis (torch.stack(xs).sum(0), a
    feature-pyramid merge) a chain of adds; over the channels of an image a 1x1
    convolution with unit weights (pointwise: sparsity survives); over any other axes
    a linear layer with unit weights on the rows of the permuted tensor (global)."""
    from .tails import _linear, emit_reshape
    x = ctx.data(a["self"], "self")
    shape = ctx.shape(x)
    rank = len(shape)
    dims = sorted({axis_index(int(d), rank) for d in (a["dim"] or range(rank))})
    if a["dtype"] is not None:
        raise ctx.unsupported(f"argument 'dtype' {a['dtype']} is not supported")
    terms = _stacked_terms(ctx, x, dims[0]) if len(dims) == 1 else None
    if terms is not None:
        y = terms[0]
        for i, t in enumerate(terms[1:]):
            y = ctx.emit("add", [y, t], shape=ctx.shape(terms[0]),
                         name=f"{ctx.node_name}_{i}").name
        return emit_reshape(ctx, y, "the sum")
    if rank == 4 and dims == [1]:
        y = ctx.emit("conv2d", [x], {
            "out_channels": 1, "kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
            "dilation": (1, 1), "groups": 1}, {"weight": np.ones((1, shape[1], 1, 1)),
                                                "bias": np.zeros(1)},
            shape=(1, 1) + shape[2:], name=f"{ctx.node_name}_conv")
        return emit_reshape(ctx, y.name, "the sum")
    kept = [d for d in range(rank) if d not in dims]
    perm = tuple(kept + dims)
    k = int(np.prod([shape[d] for d in dims]))
    m = int(np.prod([shape[d] for d in kept]))
    y = x
    if perm != tuple(range(rank)):
        y = ctx.emit("permute", [y], {"dims": perm}, shape=tuple(shape[d] for d in perm),
                     name=f"{ctx.node_name}_t").name
    y = emit_reshape(ctx, y, "the rows summed", (m, k), name=f"{ctx.node_name}_rows").name
    y = _linear(ctx, y, np.ones((k, 1), np.float32), None, shape=(m, 1)).name
    return emit_reshape(ctx, y, "the sum")


# --- windows: transposed conv, average pools --------------------------------

def _window_input(ctx, a, arg, what):
    x = ctx.data(a[arg], arg)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument {arg!r}: {what} needs an (N, C, H, W) input, got "
                              f"shape {ctx.shape(x)}")
    return x


def conv_transposed(ctx, a):
    """nn.ConvTranspose2d and F.conv_transpose2d (aten.convolution with transposed=True):
    stride, padding, output_padding, groups, dilation; bias None becomes zeros."""
    from framedelta.formats.ops import MAX_DIM, conv_transpose_out
    x = _window_input(ctx, a, "input", "transposed convolution (2-D only)")
    w = ctx.const(a["weight"], "weight")
    g = int(a["groups"])
    cout = int(w.shape[1]) * g
    bias = np.zeros(cout, np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    ph, pw = pair(a["padding"], "padding")
    (sh, sw), (dh, dw) = pair(a["stride"], "stride"), pair(a["dilation"], "dilation")
    oph, opw = pair(a["output_padding"], "output_padding")
    if min(ph, pw, oph, opw) < 0 or max(ph, pw) > MAX_DIM:
        raise ctx.unsupported(f"arguments 'padding' {[ph, pw]}, 'output_padding' "
                              f"{[oph, opw]}: must be between 0 and {MAX_DIM}")
    if not (oph < max(sh, dh) and opw < max(sw, dw)):
        raise ctx.unsupported(f"argument 'output_padding' {[oph, opw]} must be smaller than "
                              f"the stride or the dilation")
    h, wd = ctx.shape(x)[2:]
    if (conv_transpose_out(h, int(w.shape[2]), sh, ph, ph, dh, oph) < 1
            or conv_transpose_out(wd, int(w.shape[3]), sw, pw, pw, dw, opw) < 1):
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} crops the whole output")
    attrs = {"out_channels": cout, "kernel": (int(w.shape[2]), int(w.shape[3])),
             "stride": (sh, sw), "pads": (ph, pw, ph, pw), "output_padding": (oph, opw),
             "dilation": (dh, dw), "groups": g}
    return ctx.emit("conv_transpose2d", [x], attrs, {"weight": w, "bias": bias.reshape(-1)})


@rule("aten.avg_pool2d.default", produces=("avg_pool2d",))
def avg_pool2d(ctx, a):
    """nn.AvgPool2d / F.avg_pool2d: padding, ceil_mode, count_include_pad,
    divisor_override; an empty stride means stride = kernel."""
    from framedelta.formats.ops import MAX_NUMEL
    x = _window_input(ctx, a, "self", "average pooling")
    kernel = pair(a["kernel_size"], "kernel_size")
    stride = pair(a["stride"], "stride") if len(a["stride"]) else kernel
    ph, pw = pair(a["padding"], "padding")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2 or min(ph, pw) < 0:
        raise ctx.unsupported(f"argument 'padding' {[ph, pw]} must be between 0 and half "
                              f"the kernel {list(kernel)}")
    div = a["divisor_override"]
    div = 0 if div is None else int(div)
    if abs(div) > MAX_NUMEL:
        raise ctx.unsupported(f"argument 'divisor_override'={div} is out of range")
    return ctx.emit("avg_pool2d", [x], {
        "kernel": kernel, "stride": stride, "pads": (ph, pw, ph, pw),
        "ceil_mode": int(bool(a["ceil_mode"])),
        "count_include_pad": int(bool(a["count_include_pad"])), "divisor": div})


@rule("aten._adaptive_avg_pool2d.default", produces=("adaptive_avg_pool2d",))
def adaptive_avg_pool2d(ctx, a):
    """nn.AdaptiveAvgPool2d / F.adaptive_avg_pool2d to any size but 1 x 1 (export lowers
    that to aten.mean.dim: global_avg_pool); None sizes arrive resolved."""
    x = _window_input(ctx, a, "self", "adaptive average pooling")
    return ctx.emit("adaptive_avg_pool2d", [x],
                    {"size": pair(a["output_size"], "output_size")})


@rule("aten.adaptive_max_pool2d.default", produces=("adaptive_max_pool2d",))
def adaptive_max_pool2d(ctx, a):
    """nn.AdaptiveMaxPool2d / F.adaptive_max_pool2d (any size, 1 x 1 too); the indices
    (return_indices=True) are not computed."""
    x = _window_input(ctx, a, "self", "adaptive max pooling")
    y = ctx.emit("adaptive_max_pool2d", [x], {"size": pair(a["output_size"], "output_size")})
    return y, Unused("aten.adaptive_max_pool2d.default", "the indices (return_indices=True)")
