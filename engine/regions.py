"""Region re-run: the whole, unmodified model run densely on crops around what changed.

The second way to skip what did not change (DESIGN.md). Instead of per-layer caches,
a :class:`RegionStream` keeps only the model's last outputs. Each step:

1. the stream's :class:`detect.Reference` detects the changed pixels and takes them
   into the reference input (same detector, thresholds and uint8 handling as the
   layer-wise stream, so ``step(x)`` still returns ``model.run(reference_input)``);
2. the change mask's connected components (OpenCV's ``connectedComponentsWithStats``
   on a grid of ``cell`` x ``cell`` cells) become boxes;
3. each box becomes a crop of the input: with ``margin="exact"``, just wide enough to
   compute right every output the box affects (see Exactness; a left and right reach
   that differ, from asymmetric pads, are both honoured); with ``margin=N``, the box
   grown by N pixels. Crop origins are aligned to the model's total stride ``alignment``
   (so that the crop's grid of every tensor lies on the full frame's grid), lengths
   rounded up to a multiple of ``quantum`` (so few crop shapes recur), and crops are
   clipped to the frame (a crop edge on the frame edge then has the frame's padding);
4. boxes merge while running the union costs no more than running both apart, in the
   cost model ``macs(crop) = dense_macs * crop_area / frame_area + CROP_OVERHEAD_MACS``
   (the overhead stands for the per-crop fixed cost: crop copy, one Python dispatch per
   node, small kernels' start-up); when the crops together cost more than one dense
   pass the frame is run whole;
5. each crop runs through a :class:`Model` of the same graph prepared for the crop's
   shape (cached by shape, ``max_crop_models`` of them, least recently used dropped),
   and per output the positions whose receptive field meets the box are pasted into
   the output cache at their full-frame coordinates (the offset is the crop origin
   times the output's stride ratio).

Exactness. A crop's output position is right (equal to the full frame's) when every
position it reads is right in the crop's input tensor, and reads beyond a crop
tensor's edge (the crop's padding) are right only where that edge is the frame's edge
(the frame's padding then). The stream walks this through the graph, per axis, on the
crop grown by a border (so the rules' ranges are those of an unbounded frame), once per
(crop length, which edges are the frame's): aligned shifts change nothing. With
``margin="exact"`` a crop grows (origin by the alignment, length by the quantum) until
every output position the change can affect (those whose receptive span, from
``receptive.input_spans``, meets the changed box) lies on the crop's output grid and is
right, and the paste checks it again (RuntimeError otherwise: a bug, never a silent
error). Every pasted position is then computed by the same kernels from the same
operands as in ``model.run(reference_input)``: the tests hold it to 1e-5 * (1 + max |y|)
and find it bit for bit.

What can run on crops: every node must map an image to an image and commute with a
shift of the input by ``alignment`` pixels. Global ops (global pooling, linear, group
norm, softmax over H or W, concat on H or W, permute, reshape), adaptive pools and
slices on H or W (their windows depend on the frame size), resizing by a ratio that is
not an integer or with align_corners (its taps depend on the size), and constant
operands of the frame's size (a YOLO Detect head's grids) cannot: ``model.stream(...,
mode="regions")`` raises ValueError naming the first such node and why. A YOLO model
therefore runs in this mode without its Detect head (its backbone and neck).

Approximate margins: with ``margin=N`` smaller than the receptive-field reach a crop
loses context at its edges and the pasted outputs deviate; ``check_every=N`` runs the
model densely on the reference input every N steps and reports the deviation
(:class:`checks.Deviation`) in ``last_stats.check``.
"""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from framedelta.formats.graph import Graph, InputSpec, Node, check_graph
from framedelta.formats.ops import OPS, SchemaError, resolve_attrs

from .checks import check_positive_or_none, deviation
from .detect import Reference
from .layout import internal_shape, to_torch
from .receptive import SAME, input_spans, node_rule
from .registry import RECEPTIVE_RULES
from .stream import StepStats

# The per-crop fixed cost in the merge cost model, as MACs: a crop pays one Python
# dispatch per node (~20 us) and the crop copy; at ~10 GMAC/s on one core 20 us is
# 2e5 MACs. Only the merging decisions depend on it, never the results.
CROP_OVERHEAD_MACS_PER_NODE = 200_000

# Crops under this many MACs run on one thread: their kernels are too small for a
# parallel region to pay (PNet on vtest, 2 threads, quiet machine: 13.4 ms/frame with
# both threads, 7.7 with one). Thread counts never change results.
SERIAL_CROP_MACS = 100_000_000

# ops that commute with an aligned shift of the input; windowed ones need more checks
_SPATIAL_WINDOW_OPS = {"conv2d", "max_pool2d", "avg_pool2d", "conv_transpose2d", "pad",
                       "pixel_shuffle", "pixel_unshuffle", "upsample_nearest",
                       "upsample_bilinear", "slice"}
MARGINS_HELP = 'margin must be "exact" or a non-negative integer number of pixels'


def check_margin(margin):
    """"exact" or an int >= 0; ValueError otherwise."""
    if margin == "exact" and isinstance(margin, str):
        return margin
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"{MARGINS_HELP}, got {margin!r}")
    return int(margin)


def _cannot(node, why):
    return ValueError(f"mode='regions' cannot run node {node.name!r} ({node.op}): {why}")


def _resize_ratio(node, attrs, n_in, n_out, axis):
    """The integer upscale factor of a resize along one axis, or ValueError."""
    if n_out % n_in:
        raise _cannot(node, f"it resizes axis {'HW'[axis]} from {n_in} to {n_out}, not by "
                      "an integer factor, so its taps depend on the frame size")
    k = n_out // n_in
    if not math.isclose(attrs["scales"][axis] * k, 1.0, rel_tol=1e-6):
        raise _cannot(node, f"its source step {attrs['scales'][axis]} is not 1/{k}")
    return k


def crop_strides(model):
    """Per tensor (ry, rx): positions per input pixel as Fractions; ValueError naming the
    first node that cannot run on a crop (see the module docstring)."""
    graph, shapes = model.graph, model.shapes
    ratios = {graph.input.name: (Fraction(1), Fraction(1))}
    for node in graph.nodes:
        attrs = resolve_attrs(OPS[node.op], node.attrs)
        out_shape = shapes[node.outputs[0]]
        in_shapes = [shapes[t] for t in node.inputs]
        if len(out_shape) != 4 or any(len(s) != 4 for s in in_shapes):
            raise _cannot(node, f"its output {tuple(out_shape)} or an input is not an image "
                          "(1, C, H, W): region mode needs spatial outputs to paste")
        if node_rule(node, shapes, RECEPTIVE_RULES) is None:
            raise _cannot(node, "it is global: each output position depends on the whole "
                          "frame, so no crop can compute it")
        if "other_shape" in attrs and attrs["other_shape"] and \
                any(d != 1 for d in tuple(attrs["other_shape"])[2:]):
            raise _cannot(node, f"its constant operand {tuple(attrs['other_shape'])} has the "
                          "frame's spatial size (e.g. a detection head's grid)")
        if node.op not in _SPATIAL_WINDOW_OPS:
            if OPS[node.op].category.value == "windowed":
                raise _cannot(node, "its windows depend on the frame size")
            rs = {ratios[t] for t in node.inputs}
            if len(rs) != 1 or any(s[2:] != out_shape[2:] for s in in_shapes):
                raise _cannot(node, "its inputs have different spatial sizes (broadcast over "
                              "H or W)")
            ratios[node.outputs[0]] = rs.pop()
            continue
        r = ratios[node.inputs[0]]
        op = node.op
        if op in ("conv2d", "max_pool2d", "avg_pool2d"):
            f = tuple(Fraction(1, s) for s in attrs["stride"])
        elif op == "conv_transpose2d":
            f = tuple(Fraction(s) for s in attrs["stride"])
        elif op == "pixel_shuffle":
            f = (Fraction(attrs["upscale"]),) * 2
        elif op == "pixel_unshuffle":
            f = (Fraction(1, attrs["downscale"]),) * 2
        elif op == "pad":
            f = (Fraction(1),) * 2
        elif op == "slice":
            if attrs["axis"] != 1:
                raise _cannot(node, f"it slices axis {attrs['axis']} (H or W): its window "
                              "depends on the frame size")
            f = (Fraction(1),) * 2
        else:          # resizes
            if op == "upsample_bilinear" and attrs["align_corners"]:
                raise _cannot(node, "align_corners=True: its taps depend on the frame size")
            f = tuple(Fraction(_resize_ratio(node, attrs, in_shapes[0][2 + a],
                                             out_shape[2 + a], a)) for a in range(2))
        ratios[node.outputs[0]] = (r[0] * f[0], r[1] * f[1])
    return ratios


def crop_strides_of(ratios, axis):
    """{tensor: positions per input pixel along ``axis``}."""
    return {t: r[axis] for t, r in ratios.items()}


def reshaped_graph(graph, shapes, h, w):
    """The same graph (same weights, shared) for an input of H x W; resizes keep their
    factor. ValueError (from check_graph) when some tensor would be empty."""
    h, w = int(h), int(w)
    new_shapes = {graph.input.name: (1, graph.input.shape[1], h, w)}
    nodes = []
    for node in graph.nodes:
        attrs = dict(node.attrs)
        if node.op in ("upsample_nearest", "upsample_bilinear"):
            old_in, old_out = shapes[node.inputs[0]], shapes[node.outputs[0]]
            new_in = new_shapes[node.inputs[0]]
            attrs["size"] = tuple(int(new_in[2 + a]) * (old_out[2 + a] // old_in[2 + a])
                                  for a in range(2))
        schema = OPS[node.op]
        full = resolve_attrs(schema, attrs)
        out = tuple(schema.infer(full, [new_shapes[t] for t in node.inputs])[0])
        if any(d < 1 for d in out):
            raise ValueError(f"an input of {h}x{w} leaves node {node.name!r} empty")
        new_shapes[node.outputs[0]] = out
        nodes.append(Node(node.name, node.op, list(node.inputs), list(node.outputs), attrs,
                          node.weights, node.source))
    spec = InputSpec(graph.input.name, (1, graph.input.shape[1], h, w), graph.input.dtype,
                     graph.input.preprocess)
    return Graph(spec, nodes, list(graph.outputs), graph.producer)


def graph_macs(graph, shapes):
    """Dense multiply-accumulates of a graph whose tensor shapes are ``shapes``."""
    total = 0
    for node in graph.nodes:
        attrs = resolve_attrs(OPS[node.op], node.attrs)
        total += OPS[node.op].count_macs(attrs, [shapes[t] for t in node.inputs],
                                         [shapes[t] for t in node.outputs])
    return total


def _lcm(values):
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


class RegionPlan:
    """What every region stream of one model shares: output strides, alignment, the
    full-frame input spans of every output position, crop models by shape."""

    def __init__(self, model, max_crop_models=64):
        self.model = model
        ratios = crop_strides(model)
        self._ratios = ratios
        self._validity = {}                   # (axis, length, edges) -> per output
        self.alignment = tuple(_lcm(r[a].denominator for r in ratios.values())
                               for a in range(2))
        self.out_ratio = [ratios[t] for t in model.graph.outputs]
        _, _, self.h, self.w = model.input_shape
        self.quantum = tuple(s * max(1, -(-16 // s)) for s in self.alignment)
        self._sizes = {}                      # (axis, crop length) -> output lengths
        self._crop_axes = {}                  # crop_axis's answers
        self._affected = {}                   # affected's answers
        self._zones = {}                      # axis -> zones()
        self.spans = self._unbounded_spans()
        self.min_length = tuple(self._min_length(a) for a in range(2))
        dense = model.incremental_plan()
        self.dense_macs = sum(s.macs for s in dense)
        self.crop_overhead = CROP_OVERHEAD_MACS_PER_NODE * len(dense)
        self.max_crop_models = max_crop_models
        self._crops = OrderedDict()           # (h, w) -> (Model, macs)
        self.prepare_seconds = []             # per crop model built: seconds to prepare

    def _unbounded_spans(self):
        """Per output, per axis (first, last) in full-frame input coordinates, counted on
        a frame grown by a border wide enough that no span meets the border: taps in the
        frame's padding count as pixels beyond the edge. The border doubles until
        doubling it changes no span (a span clipped anywhere on the way, at an
        intermediate tensor's edge too, grows when the border does)."""
        border = [s * 2 for s in self.alignment]
        spans = self._spans_with_border(border)
        while True:
            wider = [b * 2 for b in border]
            spans2 = self._spans_with_border(wider)
            if all(np.array_equal(u, v) for s1, s2 in zip(spans, spans2)
                   for a1, a2 in zip(s1, s2) for u, v in zip(a1, a2)):
                self.border = border
                return spans
            if max(wider[0] - self.h, wider[1] - self.w) > 4 * max(self.h, self.w) + 4096:
                raise ValueError("mode='regions': the receptive field of this model does not "
                                 "settle on a bounded frame (spans grow with the border)")
            border, spans = wider, spans2

    def _spans_with_border(self, border):
        g, shapes = self.model.graph, self.model.shapes
        ext = reshaped_graph(g, shapes, self.h + 2 * border[0], self.w + 2 * border[1])
        spans = input_spans(ext, check_graph(ext), RECEPTIVE_RULES)
        out = []
        for t, ratio in zip(g.outputs, self.out_ratio):
            axes = []
            for a, n_full in enumerate(shapes[t][2:]):
                off = int(border[a] * ratio[a])
                first, last = (v[off:off + n_full] for v in spans[t][a])
                real = first <= last          # positions that read nothing keep their marks
                axes.append((np.where(real, first - border[a], first),
                             np.where(real, last - border[a], last)))
            out.append(axes)
        return out

    def round_length(self, axis, need):
        """The shortest crop length >= ``need`` that differs from the frame's by a
        multiple of the quantum: then every tensor's length on the crop is the frame's
        less a whole number of its positions (an aligned crop's shapes are consistent,
        e.g. a pixel unshuffle after a valid convolution still divides)."""
        n, q = (self.h, self.w)[axis], self.quantum[axis]
        return n - ((n - need) // q) * q

    def _min_length(self, axis):
        """The shortest crop length every node has room in."""
        n = (self.h, self.w)[axis]
        length = self.round_length(axis, 1)
        while length < n:
            try:
                size = (length, self.w) if axis == 0 else (self.h, length)
                reshaped_graph(self.model.graph, self.model.shapes, *size)
                return length
            except (ValueError, SchemaError):
                length += self.quantum[axis]
        return n

    def reach(self):
        """(top, left, bottom, right): how far beyond a changed pixel the exact crop
        reaches, the most over pixels of one alignment period in the frame's middle."""
        out = []
        for a, n in enumerate((self.h, self.w)):
            lo = hi = 0
            for p in range(n // 2, min(n, n // 2 + self.alignment[a])):
                need = self.need(a, p, p + 1)
                lo, hi = max(lo, p - need[0]), max(hi, need[1] - p - 1)
            out.append((lo, hi))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def affected(self, axis, y0, y1):
        """Per output, the [o0, o1) positions along ``axis`` whose inputs meet [y0, y1)."""
        key = (axis, y0, y1)
        got = self._affected.get(key)
        if got is None:
            got = self._affected[key] = self._affected_now(axis, y0, y1)
        return got

    def _affected_now(self, axis, y0, y1):
        out = []
        for axes in self.spans:
            first, last = axes[axis]
            hit = np.flatnonzero((first < y1) & (last >= y0))
            out.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0))
        return out

    def need(self, axis, y0, y1):
        """[lo, hi): the input pixels (unclipped) the outputs affected by [y0, y1) read."""
        lo, hi = y0, y1
        for axes, (o0, o1) in zip(self.spans, self.affected(axis, y0, y1)):
            if o1 > o0:
                first, last = axes[axis][0][o0:o1], axes[axis][1][o0:o1]
                real = first <= last
                if real.any():
                    lo, hi = min(lo, int(first[real].min())), max(hi, int(last[real].max()) + 1)
        return lo, hi

    def crop_axis(self, axis, y0, y1, margin):
        """[a, b): the crop along one axis for changed pixels [y0, y1). With "exact",
        grown (a by the alignment, b by the quantum) until every affected position of
        every output lies on the crop's output grid and is valid there. Cached: boxes
        lie on the cell grid, so few (y0, y1) recur."""
        key = (axis, y0, y1, margin, self.quantum[axis])
        got = self._crop_axes.get(key)
        if got is None:
            got = self._crop_axes[key] = self._crop_axis(axis, y0, y1, margin)
        return got

    def _crop_axis(self, axis, y0, y1, margin):
        n, s, q = (self.h, self.w)[axis], self.alignment[axis], self.quantum[axis]
        lo, hi = self.need(axis, y0, y1) if margin == "exact" else (y0 - margin, y1 + margin)
        a = max(0, lo // s * s)
        length = max(self.round_length(axis, hi - a), self.min_length[axis])
        a, b = self._clamp(axis, a, n if a + length >= n else a + length)
        if margin != "exact":
            return a, b
        affected = self.affected(axis, y0, y1)
        zones = self.zones(axis)
        if zones is not None and (a, b) != (0, n):
            a, b = self._clamp(axis, *self._crop_from_zones(axis, affected, zones, a))
        while (a, b) != (0, n):
            grow_a, grow_b = self.crop_fits(axis, a, b, affected)
            if not (grow_a or grow_b):
                break
            a = max(0, a - s) if grow_a else a
            b = min(n, b + q) if grow_b else b
        return a, b

    def _clamp(self, axis, a, b):
        """[a, b) grown to the shortest length every node has room in (to the left when
        the crop ends at the frame's edge)."""
        n, s, m = (self.h, self.w)[axis], self.alignment[axis], self.min_length[axis]
        if b - a >= m:
            return a, b
        if b < n:
            b = min(n, a + self.round_length(axis, m))
        if b - a < m:
            a = max(0, (n - m) // s * s)
        return a, b

    def zones(self, axis):
        """Per output (left, right, offset): a crop with both edges inside the frame
        computes right all its output positions but ``left`` at the start and ``right``
        at the end, and has ``length * ratio + offset`` of them; None when the graph's
        crops do not look like that (then crops grow step by step). Measured on two
        long crops (shifts by the alignment change nothing, lengths by the quantum
        change only the middle)."""
        if axis in self._zones:
            return self._zones[axis]
        q = self.quantum[axis]
        reach = max(self.reach())
        base = self.round_length(axis, max(4 * reach + 4 * q, self.min_length[axis]))
        found = []
        for length in (base, base + q):
            per = []
            for k, v in enumerate(self.crop_validity(axis, length, False, False)):
                ok = np.flatnonzero(v)
                if not ok.size or ok[-1] - ok[0] + 1 != ok.size:
                    per = None
                    break
                per.append((int(ok[0]), int(v.size - 1 - ok[-1]),
                            v.size - length * self.out_ratio[k][axis]))
            found.append(per)
        zones = found[0] if found[0] is not None and found[0] == found[1] else None
        self._zones[axis] = zones
        return zones

    def _crop_from_zones(self, axis, affected, zones, a):
        """The smallest aligned crop whose right positions hold every affected one."""
        n, s = (self.h, self.w)[axis], self.alignment[axis]
        for (o0, o1), (left, _, _), r in zip(affected, zones, self.out_ratio):
            if o1 > o0:
                a = min(a, math.floor(Fraction(o0 - left) / r[axis]))
        a = max(0, a // s * s)
        length = self.min_length[axis]
        for (o0, o1), (_, right, offset), r in zip(affected, zones, self.out_ratio):
            if o1 > o0:
                need = (o1 - a * r[axis] + right - offset) / r[axis]
                length = max(length, math.ceil(need))
        length = self.round_length(axis, length)
        return (a, n) if a + length >= n else (a, a + length)

    def crop_output_sizes(self, axis, length):
        """Per output, its length along ``axis`` for a crop of ``length`` input pixels."""
        key = (axis, length)
        if key not in self._sizes:
            n = (self.h, self.w)[axis]
            if length == n:
                self._sizes[key] = [self.model.shapes[t][2 + axis] for t in
                                    self.model.graph.outputs]
            else:
                size = (length, self.w) if axis == 0 else (self.h, length)
                g = reshaped_graph(self.model.graph, self.model.shapes, *size)
                shapes = check_graph(g)
                self._sizes[key] = [shapes[t][2 + axis] for t in g.outputs]
        return self._sizes[key]

    def crop_validity(self, axis, length, left_edge, right_edge):
        """Per output, bool over a crop's output positions along ``axis``: computed
        exactly as on the full frame, for a crop of ``length`` pixels whose left and
        right edges are (or not) the frame's.

        A crop position is right when every position it reads is a right position of
        the crop's input tensor; reads beyond a crop tensor's edge get the crop's
        padding, which is right only where that edge is the frame's. Walked on the
        crop grown by ``border`` on both sides, so that the rules' ranges are those of
        an unbounded frame; shifts of the crop by the alignment change nothing, so the
        answer is cached by (axis, length, edges)."""
        key = (axis, length, left_edge, right_edge)
        if key in self._validity:
            return self._validity[key]
        g, shapes = self.model.graph, self.model.shapes
        border = self.border[axis]
        size = [self.h, self.w]
        size[axis] = length + 2 * border
        ext = reshaped_graph(g, shapes, *size)
        ext_shapes = check_graph(ext)
        ratio = crop_strides_of(self._ratios, axis)

        def framed(t, inside):
            """``inside`` for the crop's own positions of tensor t, the edges' answer
            beyond them."""
            n = ext_shapes[t][2 + axis]
            off = int(border * ratio[t])
            v = np.empty(n, bool)
            v[:off], v[n - off:] = left_edge, right_edge
            v[off:n - off] = inside[off:n - off] if inside is not None else True
            return v

        valid = {g.input.name: framed(g.input.name, None)}
        for node in ext.nodes:
            rule = node_rule(node, ext_shapes, RECEPTIVE_RULES)
            t = node.outputs[0]
            n = ext_shapes[t][2 + axis]
            if rule is SAME:
                out = np.ones(n, bool)
                for i in node.inputs:
                    out &= valid[i]
            else:
                lo, hi = rule[axis]
                bad = np.concatenate([[0], np.cumsum(~valid[node.inputs[0]])])
                reads = lo <= hi
                out = ~reads | (bad[np.where(reads, hi, 0) + 1] - bad[np.where(reads, lo, 0)]
                                == 0)
            valid[t] = framed(t, out)
        result = []
        for t in g.outputs:
            n = ext_shapes[t][2 + axis]
            off = int(border * ratio[t])
            result.append(valid[t][off:n - off].copy())
        self._validity[key] = result
        return result

    def crop_fits(self, axis, a, b, affected):
        """(grow left, grow right): where the crop [a, b) must grow so that each
        output's ``affected`` [o0, o1) lies on its grid and is computed right."""
        n = (self.h, self.w)[axis]
        validity = self.crop_validity(axis, b - a, a == 0, b == n)
        grow_a = grow_b = False
        for k, (o0, o1) in enumerate(affected):
            if o1 <= o0:
                continue
            origin = int(a * self.out_ratio[k][axis])
            v = validity[k]
            ok = np.flatnonzero(v)
            if not ok.size:
                grow_a = grow_b = True
                continue
            j0, j1 = o0 - origin, o1 - origin
            inner = v[max(j0, 0):min(j1, v.size)]
            grow_a |= j0 < ok[0] or (inner.size and not inner.all() and j0 < ok[0])
            grow_b |= j1 > ok[-1] + 1
            if not grow_a and not grow_b and not inner.all():
                grow_a = grow_b = True           # a hole inside: grow both ways
        return grow_a, grow_b

    def crop_model(self, h, w):
        """(Model, dense MACs) for an h x w crop, prepared once and cached by shape."""
        from .model import Model
        key = (h, w)
        if key in self._crops:
            self._crops.move_to_end(key)
            return self._crops[key], 0.0
        t0 = time.perf_counter()
        g = reshaped_graph(self.model.graph, self.model.shapes, h, w)
        m = Model(g, self.model.path, n_threads=self.model.n_threads)
        macs = graph_macs(g, m.shapes)
        dt = time.perf_counter() - t0
        self.prepare_seconds.append(dt)
        self._crops[key] = (m, macs)
        while len(self._crops) > self.max_crop_models:
            self._crops.popitem(last=False)
        return self._crops[key], dt

    def cost(self, h, w):
        return self.dense_macs * (h * w) / (self.h * self.w) + self.crop_overhead


def run_engine(model, xi, n_threads):
    """Dense pass of ``model`` on an engine-layout input; the outputs' buffers (engine
    layout, owned by the model: read them before its next run)."""
    env = {model.graph.input.name: xi}
    for node, run, out in model._steps:
        run([env[t] for t in node.inputs], out, n_threads)
        env[node.outputs[0]] = out
    return [env[t] for t in model.graph.outputs]


@dataclass
class RegionStats(StepStats):
    """StepStats of a region step: ``regions`` are the crops run, (y0, x0, y1, x1) in
    input pixels; ``cropped_fraction`` their area over the frame's; ``prepare_seconds``
    what preparing crop models of new shapes cost in this step."""
    regions: list = field(default_factory=list)
    cropped_fraction: float = 0.0
    prepare_seconds: float = 0.0


class RegionStream:
    """Region re-run of one model on one camera. Make it with
    ``model.stream(mode="regions", margin="exact" | N)``."""

    def __init__(self, model, threshold=0.0, detector="pixel", block=16, n_threads=None,
                 check_every=None, margin="exact", cell=8):
        from .model import effective_n_threads
        self.margin = check_margin(margin)
        if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < 1:
            raise ValueError(f"cell must be a positive integer, got {cell!r}")
        self.cell = int(cell)
        n_threads = model.n_threads if n_threads is None else effective_n_threads(n_threads)
        self._ref = Reference(model, threshold, detector, block, n_threads)
        self.check_every = check_positive_or_none(check_every, "check_every")
        self.model = model
        self.n_threads = n_threads
        self.plan = model.region_plan()
        try:
            import cv2
        except ImportError as e:
            raise ImportError("mode='regions' finds changed regions with OpenCV: "
                              "pip install opencv-python-headless (or framedelta[regions])"
                              ) from e
        self._cv2 = cv2
        self._executor = None             # threads for running small crops at once
        self._caches = [np.empty(internal_shape(model.shapes[t]), np.float32)
                        for t in model.graph.outputs]
        self.last_stats = None
        self.last_check = None
        self._last_changed = False
        self.reset()

    threshold = property(lambda self: self._ref.threshold)
    detector = property(lambda self: self._ref.detector)
    block = property(lambda self: self._ref.block)

    @property
    def exact_margin(self):
        """(top, left, bottom, right) pixels: the reach ``margin="exact"`` grows a changed
        pixel by (from the composed receptive fields; left and right may differ)."""
        return self.plan.reach()

    def reset(self):
        """Forget the reference: the next step computes densely."""
        self._ref.reset()
        self._n_steps = 0
        self._last_changed = False

    @property
    def reference_input(self):
        """The input the outputs represent now (as :attr:`Stream.reference_input`)."""
        return self._ref.value()

    @property
    def last_change_mask(self):
        """bool (H, W): what the detector counted changed in the last step; None after
        a dense (first) step."""
        if not self._ref.started or self._last_changed is None:
            return None
        if self._last_changed is False:
            return np.zeros(self._ref.change.shape, bool)
        return self._ref.change.astype(bool)

    def deepest_dirty_mask(self):
        """bool (H, W): the input area of the crops run in the last step (None after a
        dense step), so `framedelta run --out-video` can draw it."""
        if self.last_stats is None or self._last_changed is None:
            return None
        m = np.zeros((self.plan.h, self.plan.w), np.uint8)
        for y0, x0, y1, x1 in self.last_stats.regions:
            m[y0:y1, x0:x1] = 1
        return m

    @property
    def cache_bytes(self):
        """Bytes this stream holds: output caches and reference input (crop models are
        shared by every region stream of the model: ``model.region_plan()``)."""
        return sum(a.nbytes for a in self._caches) + self._ref.nbytes

    def step(self, x):
        """Feed the next input; returns the output(s) of ``model.run(reference_input)``
        (exactly with ``margin="exact"``; within the deviation ``check_every`` measures
        otherwise)."""
        t0 = time.perf_counter()
        new, frame = self._ref.as_input(x)
        stats = RegionStats(0.0, 0, self.plan.dense_macs, 0.0)
        if not self._ref.started:
            self._ref.first(new, frame)
            self._run_whole(stats)
            self._last_changed = None
        else:
            changed = self._ref.update(new, frame)
            self._last_changed = changed is not None
            if changed is not None:
                self._run_regions(changed, stats)
        stats.input_changed_fraction = self._ref.changed_fraction
        outs = tuple(np.array(to_torch(c, self.model.shapes[t]), order="C")
                     for c, t in zip(self._caches, self.model.graph.outputs))
        outs = outs[0] if len(outs) == 1 else outs
        stats.seconds = time.perf_counter() - t0
        self._n_steps += 1
        if self.check_every and self._n_steps % self.check_every == 0:
            stats.check = self.last_check = deviation(
                outs, self.model.run(self.reference_input, n_threads=self.n_threads))
        self.last_stats = stats
        return outs

    # --- regions -----------------------------------------------------------------

    def _run_whole(self, stats):
        with self.model._lock:
            for c, y in zip(self._caches, run_engine(self.model, self._ref.input,
                                                     self.n_threads)):
                c[...] = y
        stats.macs = self.plan.dense_macs
        stats.regions = [(0, 0, self.plan.h, self.plan.w)]
        stats.cropped_fraction = 1.0

    def boxes(self, changed):
        """The changed pixels' connected components as (y0, x0, y1, x1) boxes, on the
        grid of cell x cell cells (eight-connected)."""
        h, w = changed.shape
        if self.detector == "block":
            # the block detector changes whole tiles: one sample per tile is the tile
            c = self.block
            grid = np.ascontiguousarray(changed[::c, ::c])
        else:
            c = self.cell
            gh, gw = -(-h // c), -(-w // c)
            pad = np.zeros((gh * c, gw * c), np.uint8)
            pad[:h, :w] = changed
            grid = pad.reshape(gh, c, gw, c).max(axis=(1, 3))
        n, _, st, _ = self._cv2.connectedComponentsWithStats(grid, connectivity=8)
        out = []
        for x, y, bw, bh, _ in st[1:n]:
            out.append((int(y) * c, int(x) * c, min(h, int(y + bh) * c), min(w, int(x + bw) * c)))
        return out

    def _crop(self, box):
        y0, x0, y1, x1 = box
        a, b = self.plan.crop_axis(0, y0, y1, self.margin)
        c, d = self.plan.crop_axis(1, x0, x1, self.margin)
        return a, c, b, d

    def merged_crops(self, boxes):
        """[(box, crop)] after merging while the union is no dearer than both apart."""
        items = [(b, self._crop(b)) for b in boxes]
        cost = self.plan.cost
        while len(items) > 1:
            best = None
            for i in range(len(items)):
                ci = items[i][1]
                cost_i = cost(ci[2] - ci[0], ci[3] - ci[1])
                for j in range(i + 1, len(items)):
                    cj = items[j][1]
                    u = (min(ci[0], cj[0]), min(ci[1], cj[1]), max(ci[2], cj[2]),
                         max(ci[3], cj[3]))
                    saving = cost_i + cost(cj[2] - cj[0], cj[3] - cj[1]) \
                        - cost(u[2] - u[0], u[3] - u[1])
                    if saving >= 0 and (best is None or saving > best[0]):
                        best = (saving, i, j)
            if best is None:
                break
            _, i, j = best
            bi, bj = items[i][0], items[j][0]
            box = (min(bi[0], bj[0]), min(bi[1], bj[1]), max(bi[2], bj[2]), max(bi[3], bj[3]))
            items = [it for k, it in enumerate(items) if k not in (i, j)]
            items.append((box, self._crop(box)))
        return items

    def _run_regions(self, changed, stats):
        items = self.merged_crops(self.boxes(changed))
        plan = self.plan
        area = sum((c[2] - c[0]) * (c[3] - c[1]) for _, c in items)
        if sum(plan.cost(c[2] - c[0], c[3] - c[1]) for _, c in items) >= plan.dense_macs:
            self._run_whole(stats)
            return
        stats.cropped_fraction = area / (plan.h * plan.w)
        jobs = []
        for box, crop in items:
            a, c, b, d = crop
            (m, macs), dt = plan.crop_model(b - a, d - c)
            stats.prepare_seconds += dt
            stats.macs += macs
            stats.regions.append(crop)
            rows = plan.affected(0, box[0], box[2])
            cols = plan.affected(1, box[1], box[3])
            windows = [self._window(k, crop, rows[k], cols[k]) for k in range(len(rows))]
            jobs.append((m, macs, crop, windows))
        small = all(macs < SERIAL_CROP_MACS for _, macs, _, _ in jobs)
        if self.n_threads > 1 and len(jobs) > 1 and small:
            # small crops: one thread each, several at once (the kernels release the
            # GIL); crops of one shape share a model, so they run in turn in one task
            by_shape = {}
            for i, job in enumerate(jobs):
                by_shape.setdefault(id(job[0]), []).append(i)
            pool = self._pool()
            futures = [pool.submit(lambda idx: [(i, self._crop_outputs(jobs[i], 1))
                                                for i in idx], idx)
                       for idx in by_shape.values()]
            results = dict(r for f in futures for r in f.result())
        else:
            results = {i: self._crop_outputs(job, 1 if small else self.n_threads)
                       for i, job in enumerate(jobs)}
        for i in range(len(jobs)):          # pasted in order: overlaps resolve alike
            for cache, win, part in zip(self._caches, jobs[i][3], results[i]):
                if win is not None:
                    r0, r1, c0, c1 = win
                    cache[r0:r1, c0:c1] = part

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(self.n_threads,
                                                thread_name_prefix="framedelta-crops")
        return self._executor

    def _crop_outputs(self, job, n_threads):
        """Run one crop; per output, a copy of its part to paste (None: nothing)."""
        m, _, (a, c, b, d), windows = job
        xi = np.ascontiguousarray(self._ref.input[a:b, c:d])
        with m._lock:
            outs = run_engine(m, xi, n_threads)
            parts = []
            for k, (y, win) in enumerate(zip(outs, windows)):
                if win is None:
                    parts.append(None)
                    continue
                ry, rx = self.plan.out_ratio[k]
                oy, ox = int(a * ry), int(c * rx)
                r0, r1, c0, c1 = win
                parts.append(y[r0 - oy:r1 - oy, c0 - ox:c1 - ox].copy())
        return parts

    def _window(self, k, crop, rows, cols):
        """(r0, r1, c0, c1): output ``k``'s positions a crop pastes, in full-output
        coordinates; None for none. With the exact margin, checks they are right."""
        a, c, b, d = crop
        plan = self.plan
        ry, rx = plan.out_ratio[k]
        oy, ox = int(a * ry), int(c * rx)          # the crop's origin on this output's grid
        ny = plan.crop_output_sizes(0, b - a)[k]
        nx = plan.crop_output_sizes(1, d - c)[k]
        (r0, r1), (c0, c1) = rows, cols
        if r0 >= r1 or c0 >= c1:
            return None
        if self.margin == "exact" and not (oy <= r0 and r1 <= oy + ny
                                           and ox <= c0 and c1 <= ox + nx):
            raise RuntimeError(f"internal: exact crop {crop} misses output {k}'s positions "
                               f"rows {rows} cols {cols}")
        # an approximate margin may leave affected positions outside the crop's grid
        r0, r1 = max(r0, oy), min(r1, oy + ny)
        c0, c1 = max(c0, ox), min(c1, ox + nx)
        if r0 >= r1 or c0 >= c1:
            return None
        if self.margin == "exact":
            n = (plan.h, plan.w)
            vr = plan.crop_validity(0, b - a, a == 0, b == n[0])[k][r0 - oy:r1 - oy]
            vc = plan.crop_validity(1, d - c, c == 0, d == n[1])[k][c0 - ox:c1 - ox]
            if not (vr.all() and vc.all()):
                raise RuntimeError(f"internal: exact crop {crop} does not cover the "
                                   f"receptive field of output {k} rows {rows} cols {cols}")
        return r0, r1, c0, c1
