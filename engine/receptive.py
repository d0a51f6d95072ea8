"""Receptive-field rules: exactly which input positions each output position reads.

One rule per op, keyed by op name in the registry, of the form
``rule(attrs, in_shapes, out_shape)`` returning one of:

- ``SAME``: output position p reads position p of every input (elementwise and
  multi-input ops: a change passes through, the union over inputs);
- ``(rows, cols)``: per spatial axis a pair of int32 arrays ``(lo, hi)``: output index
  o reads input indices ``lo[o]..hi[o]`` (clipped to the input; ``lo > hi`` reads
  nothing, e.g. a window in the padding);
- ``None``: every input position (global ops: one change anywhere changes all).

The incremental path dilates change masks with these ranges (``_masks.dilate_mask``);
``framedelta info`` composes them into receptive-field sizes.
"""

import numpy as np

from framedelta.formats.ops import OPS, Category, resolve_attrs

SAME = "same"


def _clip(lo, hi, size):
    return (np.clip(lo, 0, size - 1).astype(np.int32),
            np.clip(hi, -1, size - 1).astype(np.int32))


def _window_axis(out_size, in_size, k, s, p, d):
    o = np.arange(out_size, dtype=np.int64)
    lo = o * s - p
    hi = lo + d * (k - 1)
    # leading taps in the padding: the first real tap is the first one >= 0
    first = np.where(lo < 0, lo + ((-lo + d - 1) // d) * d, lo)
    last = np.where(hi >= in_size, hi - ((hi - in_size + 1 + d - 1) // d) * d, hi)
    return _clip(first, last, in_size)


def windowed(attrs, in_shapes, out_shape):
    """conv2d and pooling: kernel, stride, padding (asymmetric too), dilation, ceil_mode."""
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs["dilation"]
    h, w = in_shapes[0][2:]
    return (_window_axis(out_shape[2], h, kh, sh, pt, dh),
            _window_axis(out_shape[3], w, kw, sw, pl, dw))


def nearest(attrs, in_shapes, out_shape):
    from .ops import nearest_indices
    axes = []
    for a in range(2):
        idx = nearest_indices(out_shape[2 + a], in_shapes[0][2 + a], attrs["scales"][a])
        axes.append((idx, idx.copy()))
    return tuple(axes)


def bilinear(attrs, in_shapes, out_shape):
    from .ops import bilinear_taps
    axes = []
    for a in range(2):
        idx, wts = bilinear_taps(out_shape[2 + a], in_shapes[0][2 + a],
                                 bool(attrs["align_corners"]), attrs["scales"][a])
        # a tap whose weight is exactly 0 still reads its input: 0 * inf is NaN
        axes.append((idx[:, 0].copy(), idx[:, 1].copy()))
    return tuple(axes)


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

# --- activations and softmax ------------------------------------------------

def softmax(attrs, in_shapes, out_shape):
    """softmax and log_softmax: over the channels of an image each position reads its
    own channels (SAME); over any other axis, or of a non-image tensor, an output reads
    a whole line of the input: global, computed whole."""
    from .ops import is_channel_softmax
    return SAME if is_channel_softmax(attrs, out_shape) else None


# --- windows: transposed conv, average pools --------------------------------

def conv_transpose(attrs, in_shapes, out_shape):
    """conv_transpose2d: output o reads the input indices iy with o = iy * s - pad + i * d
    for some tap i; per o the first and last of them (none: lo > hi)."""
    axes = []
    for a in range(2):
        k, s, d = attrs["kernel"][a], attrs["stride"][a], attrs["dilation"][a]
        p, size = attrs["pads"][a], in_shapes[0][2 + a]
        o = np.arange(out_shape[2 + a], dtype=np.int64)
        lo = np.full(o.shape, size, np.int64)
        hi = np.full(o.shape, -1, np.int64)
        for i in range(k):
            t = o + p - i * d
            ok = (t >= 0) & (t % s == 0) & (t // s < size)
            lo = np.where(ok, np.minimum(lo, t // s), lo)
            hi = np.where(ok, np.maximum(hi, t // s), hi)
        axes.append(_clip(lo, hi, size))
    return tuple(axes)


def pool_windows(op):
    """avg_pool2d and the adaptive pools: each output reads exactly its window's rows
    and columns (ops.pool_axes)."""
    def rule(attrs, in_shapes, out_shape):
        from .ops import pool_axes
        return tuple(_clip(start, end - 1, size) for (start, end, _), size
                     in zip(pool_axes(op, attrs, in_shapes, out_shape), in_shapes[0][2:]))
    rule.__name__ = f"pool_windows_{op}"
    return rule


# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

def _shifted_axis(out_size, in_size, start, step):
    """Output index o reads input index start + o * step, or nothing outside the input."""
    i = start + np.arange(out_size, dtype=np.int64) * step
    ok = (i >= 0) & (i < in_size)
    return np.where(ok, i, 0).astype(np.int32), np.where(ok, i, -1).astype(np.int32)


def pad(attrs, in_shapes, out_shape):
    """Output index o reads input o - pad_before; the padding reads nothing."""
    pt, pl, _, _ = attrs["pads"]
    h, w = in_shapes[0][2:]
    return (_shifted_axis(out_shape[2], h, -pt, 1), _shifted_axis(out_shape[3], w, -pl, 1))


def sliced(attrs, in_shapes, out_shape):
    """slice: on channels elementwise (SAME); on H or W, o reads start + o * step."""
    axis = attrs["axis"]
    if axis == 1:
        return SAME
    h, w = in_shapes[0][2:]
    rows = _shifted_axis(out_shape[2], h, *((attrs["start"], attrs["step"]) if axis == 2
                                            else (0, 1)))
    cols = _shifted_axis(out_shape[3], w, *((attrs["start"], attrs["step"]) if axis == 3
                                            else (0, 1)))
    return rows, cols


def concat(attrs, in_shapes, out_shape):
    """On channels position p reads p of every input (SAME); on H or W global: the
    ranges format reads one input per axis, and a position of the output reads one
    input or another depending on where it lies, so any change recomputes it whole."""
    return SAME if attrs["axis"] == 1 else None

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

def pixel_shuffle(attrs, in_shapes, out_shape):
    """Output (oy, ox) reads input pixel (oy // r, ox // r)."""
    r = attrs["upscale"]
    axes = []
    for a in range(2):
        src = (np.arange(out_shape[2 + a]) // r).astype(np.int32)
        axes.append((src, src.copy()))
    return tuple(axes)


def pixel_unshuffle(attrs, in_shapes, out_shape):
    """Output (oy, ox) reads the r x r block of input pixels starting at (oy r, ox r)."""
    r = attrs["downscale"]
    axes = []
    for a in range(2):
        lo = (np.arange(out_shape[2 + a]) * r).astype(np.int32)
        axes.append((lo, (lo + r - 1).astype(np.int32)))
    return tuple(axes)


def layer_norm(attrs, in_shapes, out_shape):
    """Over the channels of an image (axis 1): each position alone. Over any other axis
    the positions mix: global."""
    return SAME if attrs["axis"] == 1 and len(out_shape) == 4 else None



def same(attrs, in_shapes, out_shape):
    return SAME


def global_(attrs, in_shapes, out_shape):
    return None


def by_category(op):
    """The generic rule of an op's category (STYLE.md 2)."""
    cat = OPS[op].category
    if cat in (Category.ELEMENTWISE, Category.MULTI_INPUT):
        return same
    if cat is Category.GLOBAL:
        return global_
    raise KeyError(f"windowed op {op!r} needs its own receptive-field rule")


def node_rule(node, shapes, rules):
    """The rule's answer for one node of a graph whose tensor shapes are ``shapes``."""
    attrs = resolve_attrs(OPS[node.op], node.attrs)
    out_shape = shapes[node.outputs[0]]
    in_shapes = [shapes[t] for t in node.inputs]
    if len(out_shape) != 4 or any(len(s) != 4 for s in in_shapes):
        return None      # vectors and reshapes: no spatial correspondence
    return rules[node.op](attrs, in_shapes, out_shape)


def input_spans(graph, shapes, rules):
    """Per spatial tensor: per axis (first, last) int64 arrays, the first and last input
    pixel each position depends on (first > last: none); None for tensors after a
    global op. Composes the exact ranges of the rules node by node."""
    h, w = graph.input.shape[2:]
    spans = {graph.input.name: tuple((np.arange(n), np.arange(n)) for n in (h, w))}
    for node in graph.nodes:
        rule = node_rule(node, shapes, rules)
        ins = [spans.get(t) for t in node.inputs]
        t_out = node.outputs[0]
        if rule is None or any(s is None for s in ins):
            spans[t_out] = None
            continue
        if rule is SAME:
            # inputs broadcast over an axis (length 1) see that axis whole
            n_out = shapes[t_out][2:]
            axes = tuple((np.minimum.reduce([np.broadcast_to(s[a][0], n_out[a]) for s in ins]),
                          np.maximum.reduce([np.broadcast_to(s[a][1], n_out[a]) for s in ins]))
                         for a in range(2))
        else:
            axes = []
            for a, (lo, hi) in enumerate(rule):
                first, last = ins[0][a]
                ok = lo <= hi
                safe_lo, safe_hi = np.where(ok, lo, 0), np.where(ok, hi, 0)
                axes.append((np.where(ok, first[safe_lo], np.iinfo(np.int64).max),
                             np.where(ok, last[safe_hi], np.iinfo(np.int64).min)))
            axes = tuple(axes)
        spans[t_out] = axes
    return spans


def receptive_fields(graph, shapes, rules):
    """Per spatial tensor: (rf_h, rf_w), the largest input window one position sees;
    None for tensors after a global op.

    Composes the exact ranges: per axis and output index, the first and last input
    pixel it depends on (:func:`input_spans`).
    """
    out = {}
    for t, axes in input_spans(graph, shapes, rules).items():
        if axes is None:
            out[t] = None
            continue
        sizes = []
        for first, last in axes:
            ok = last >= first
            sizes.append(int((last[ok] - first[ok]).max()) + 1 if ok.any() else 0)
        out[t] = tuple(sizes)
    return out
