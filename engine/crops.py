"""What runs on crops: which models can, their strides and spans, crop models.

The part of the region re-run (``regions.py``) that every region stream of one model
shares, built once by ``model.region_plan()``: the per-tensor strides and the alignment
they impose, the graph re-shaped to a crop size, the unbounded input spans of every
output position, which crop output positions are computed right (``crop_validity``),
the exact crop of a changed box, and the crop models, prepared once per shape.
"""

import math
import threading
import time
from collections import OrderedDict
from fractions import Fraction

import numpy as np

from framedelta.formats.graph import Graph, InputSpec, Node, check_graph
from framedelta.formats.ops import OPS, SchemaError, resolve_attrs

from .packs import packed_arrays, sharing
from .receptive import SAME, input_spans, node_rule
from .registry import RECEPTIVE_RULES

# The per-crop fixed cost in the merge cost model, as MACs: a crop pays one Python
# dispatch per node (~20 us) and the crop copy; at ~10 GMAC/s on one core 20 us is
# 2e5 MACs. Only the merging decisions depend on it, never the results.
CROP_OVERHEAD_MACS_PER_NODE = 200_000

# The crop models' activation buffers may hold this many times the model's own (a dense
# pass's) at most, and never less than CROP_CACHE_MIN_BYTES: crops are smaller than the
# frame, so several shapes fit, and the least recently used goes first. Only speed
# depends on it (a shape dropped is prepared again when it recurs).
CROP_CACHE_FACTOR = 2
CROP_CACHE_MIN_BYTES = 64 << 20

# ops that commute with an aligned shift of the input; windowed ones need more checks
_SPATIAL_WINDOW_OPS = {"conv2d", "max_pool2d", "avg_pool2d", "conv_transpose2d", "pad",
                       "pixel_shuffle", "pixel_unshuffle", "upsample_nearest",
                       "upsample_bilinear", "slice"}

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

    def __init__(self, model, max_crop_bytes=None):
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
        if max_crop_bytes is None:
            max_crop_bytes = max(CROP_CACHE_MIN_BYTES,
                                 CROP_CACHE_FACTOR * model.footprint.activation_bytes)
        self.max_crop_bytes = int(max_crop_bytes)
        self._crops = OrderedDict()           # (h, w) -> (Model, macs, own bytes)
        self._crop_bytes = 0                  # the own bytes of the cached crop models
        self._packs = {}                      # packs.sharing memo: weights packed once
        self._crops_lock = threading.Lock()   # streams of this model step in threads
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
        """((Model, dense MACs), seconds spent preparing it) for an h x w crop, prepared
        once and cached by shape while the cache's bytes allow (least recently used
        dropped first; the one returned is always kept)."""
        from .model import Model, held_arrays
        key = (h, w)
        with self._crops_lock:
            if key in self._crops:
                self._crops.move_to_end(key)
                m, macs, _ = self._crops[key]
                return (m, macs), 0.0
            t0 = time.perf_counter()
            g = reshaped_graph(self.model.graph, self.model.shapes, h, w)
            with sharing(self._packs):
                m = Model(g, self.model.path, n_threads=self.model.n_threads)
            macs = graph_macs(g, m.shapes)
            shared = {id(a) for a in packed_arrays(self._packs)}
            weights = {id(a) for n in g.nodes for a in n.weights.values()}
            own = sum(out.nbytes for _, _, out in m._steps) + sum(
                a.nbytes for _, run, _ in m._steps for a in held_arrays(run)
                if id(a) not in shared and id(a) not in weights)
            dt = time.perf_counter() - t0
            self.prepare_seconds.append(dt)
            self._crops[key] = (m, macs, own)
            self._crop_bytes += own
            while self._crop_bytes > self.max_crop_bytes and len(self._crops) > 1:
                _, (_, _, dropped) = self._crops.popitem(last=False)
                self._crop_bytes -= dropped
            return (m, macs), dt

    @property
    def cache_bytes(self):
        """Bytes the crop models hold: each one's activation buffers and tables, and
        the packed weights they share (one copy for all shapes)."""
        with self._crops_lock:
            return self._crop_bytes + sum(a.nbytes for a in packed_arrays(self._packs))

    @property
    def crop_shapes(self):
        """The crop shapes (h, w) cached now, least recently used first."""
        with self._crops_lock:
            return list(self._crops)

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
