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
   shape (cached by shape while their activation buffers fit ``max_crop_bytes``, least
   recently used dropped; the packed weights are shared by all, ``model.crop_cache_bytes``),
   and per output the positions whose receptive field meets the box are pasted into
   the output cache at their full-frame coordinates (the offset is the crop origin
   times the output's stride ratio). Crops under ``SERIAL_CROP_MACS`` run on one
   thread each, several at once on the stream's threads, and are pasted in crop order.

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

What every region stream of a model shares (strides, spans, validity, crop models)
lives in ``crops.py`` (:class:`crops.RegionPlan`, ``model.region_plan()``).

Approximate margins: with ``margin=N`` smaller than the receptive-field reach a crop
loses context at its edges and the pasted outputs deviate; ``check_every=N`` runs the
model densely on the reference input every N steps and reports the deviation
(:class:`checks.Deviation`) in ``last_stats.check``.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from .crops import run_engine
from .layout import internal_shape, to_torch
from .stream import CameraStream, StepStats

# Crops under this many MACs run on one thread: their kernels are too small for a
# parallel region to pay (PNet on vtest, 2 threads, quiet machine: 13.4 ms/frame with
# both threads, 7.7 with one). Thread counts never change results.
SERIAL_CROP_MACS = 100_000_000

MARGINS_HELP = 'margin must be "exact" or a non-negative integer number of pixels'


def check_margin(margin):
    """"exact" or an int >= 0; ValueError otherwise."""
    if margin == "exact" and isinstance(margin, str):
        return margin
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"{MARGINS_HELP}, got {margin!r}")
    return int(margin)


@dataclass
class RegionStats(StepStats):
    """StepStats of a region step: ``regions`` are the crops run, (y0, x0, y1, x1) in
    input pixels; ``cropped_fraction`` their area over the frame's; ``prepare_seconds``
    what preparing crop models of new shapes cost in this step."""
    regions: list = field(default_factory=list)
    cropped_fraction: float = 0.0
    prepare_seconds: float = 0.0


class RegionStream(CameraStream):
    """Region re-run of one model on one camera. Make it with
    ``model.stream(mode="regions", margin="exact" | N)``."""

    def __init__(self, model, threshold=0.0, detector="pixel", block=16, n_threads=None,
                 check_every=None, margin="exact", cell=8):
        self.margin = check_margin(margin)
        if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < 1:
            raise ValueError(f"cell must be a positive integer, got {cell!r}")
        self.cell = int(cell)
        super().__init__(model, threshold, detector, block, n_threads, check_every)
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
        self.reset()

    @property
    def exact_margin(self):
        """(top, left, bottom, right) pixels: the reach ``margin="exact"`` grows a changed
        pixel by (from the composed receptive fields; left and right may differ)."""
        return self.plan.reach()

    def deepest_dirty_mask(self):
        """bool (H, W): the input area of the crops run in the last step (None after a
        dense step), so `framedelta run --out-video` can draw it."""
        if self.last_stats is None or not self._ref.updated:
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

    def _step(self, x):
        """CameraStream.step: exactly ``model.run(reference_input)`` with
        ``margin="exact"``; within the deviation ``check_every`` measures otherwise."""
        t0 = time.perf_counter()
        new, frame = self._ref.as_input(x)
        stats = RegionStats(0.0, 0, self.plan.dense_macs, 0.0)
        if not self._ref.started:
            self._ref.first(new, frame)
            self._run_whole(stats)
        else:
            changed = self._ref.update(new, frame)
            if changed is not None:
                self._run_regions(changed, stats)
        stats.input_changed_fraction = self._ref.changed_fraction
        outs = tuple(np.array(to_torch(c, self.model.shapes[t]), order="C")
                     for c, t in zip(self._caches, self.model.graph.outputs))
        return self._finish(outs, stats, t0)

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
