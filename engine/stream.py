"""Streams: one camera each, with the per-layer caches of the incremental path.

A stream keeps the input its caches represent (``reference_input``) and every node's
last output. Each step:

1. the change detector compares the new input with the reference; changed positions
   take the new values, the others keep the reference's (so the output always equals
   ``model.run(stream.reference_input)``, with no drift over any number of frames);
2. for each node in order, its dirty output mask is its inputs' masks dilated by the
   node's exact receptive-field ranges (``receptive.py``), or the union for
   elementwise and multi-input ops, or everything for a global op with a dirty input;
3. the node recomputes its dirty positions into its cache with its masked kernel, or
   all of them with its dense kernel when the dirty fraction is above the op's
   fallback threshold (same per-position arithmetic either way). When more than
   ``SCENE_CUT`` of the input changed, every node is recomputed whole at once (exact
   mode);
4. optionally (``layer_thresholds``, approx.py: the approximate mode), a recomputed
   position whose value moved by no more than the node's threshold gets its old value
   back and leaves the node's output mask, so the change stops spreading there.

Several streams on one model share the prepared weights and nothing else; two streams
may step concurrently from two Python threads (the kernels release the GIL). One stream
stepped from several threads serialises its steps (a lock per stream): a step reads and
writes the reference, the caches and the masks, so two interleaved steps would leave
them describing no input at all, and the stream would stay wrong until ``reset()``.
"""

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import _masks as I
from . import _pool
from .approx import LayerThresholds, calibrate
from .checks import check_positive_or_none, deviation
from .detect import Reference
from ._layout import hwc_to_chw
from .layout import internal_shape, is_image, to_torch
from .receptive import SAME

# Above this fraction of dirty output positions a node recomputes densely: gathering
# scattered rows stops paying. Exactness does not depend on these values. Measured
# with 8x8-tile masks (benchmarks/README.md, "Dense fallback"):
# a masked conv costs about its dirty fraction of a dense one on deep layers, and
# crosses over near 0.8 on wide, thin layers (32 channels at 360x480, 1x1 144->24).
DENSE_FALLBACK = {"conv2d": 0.8}
DEFAULT_FALLBACK = 0.7
# Above this fraction of changed input pixels (a scene cut, a camera moved, lights on)
# a step recomputes every node whole without propagating masks: past it the sweep
# (benchmarks/README.md) finds the incremental path no faster than dense, and the
# propagation itself costs a pass over every node's mask.
SCENE_CUT = 0.5


@dataclass
class NodeStats:
    name: str
    op: str
    active_fraction: float     # fraction of output positions recomputed
    seconds: float
    dense: bool                # computed by the dense kernel (first step, fallback, global)
    # approximate mode (layer_thresholds): of the node's output positions, the fraction
    # recomputed but held back (not propagated); error_bound: the node's threshold t, so
    # that per position max over channels |cache - layer(input caches)| <= t (None: exact)
    suppressed_fraction: float = 0.0
    error_bound: float = None


@dataclass
class StepStats:
    input_changed_fraction: float
    macs: int                  # multiply-accumulates this step did
    dense_macs: int            # what a dense pass does
    seconds: float             # the step, without the check below
    nodes: list = field(default_factory=list)
    check: object = None       # checks.Deviation from the exact result, on check steps

    @property
    def mac_ratio(self):
        """dense MACs / incremental MACs: the speed-up a perfect kernel would give."""
        return self.dense_macs / max(self.macs, 1)


class CameraStream:
    """What every kind of stream shares: its model and threads, the reference input
    and its detector (detect.Reference), ``check_every``, and the end of a step."""

    def __init__(self, model, threshold, detector, block, n_threads, check_every):
        from .model import effective_n_threads
        self.n_threads = model.n_threads if n_threads is None else effective_n_threads(
            n_threads)
        self._ref = Reference(model, threshold, detector, block, self.n_threads)
        self.check_every = check_positive_or_none(check_every, "check_every")
        self.model = model
        self.last_stats = None
        self.last_check = None            # the latest checks.Deviation measured
        # serialises step() and reset() of this stream (re-entrant: a step may reset)
        self._step_lock = threading.RLock()

    threshold = property(lambda self: self._ref.threshold)
    detector = property(lambda self: self._ref.detector)
    block = property(lambda self: self._ref.block)

    def reset(self):
        """Forget the reference: the next step computes densely."""
        with self._step_lock:
            self._ref.reset()
            self._n_steps = 0

    def step(self, x):
        """Feed the next input; returns the output(s) of ``model.run(reference_input)``.

        ``x``: float32 (1, C, H, W) torch layout (numpy or torch), or a uint8 (H, W, 3)
        BGR frame (numpy or torch) when the model file declares image preprocessing
        (threshold then in pixel units). A wrong input raises ValueError and leaves
        the stream as it was. Calls from several threads run one after the other.
        """
        with self._step_lock:
            _pool.wake(self.n_threads)     # the workers run by the step's first kernel
            return self._step(x)

    @property
    def reference_input(self):
        """The input the outputs represent now: a uint8 (H, W, 3) frame for a stream fed
        with frames, else float32 (1, C, H, W) torch layout. None before the first step."""
        with self._step_lock:            # never half of another thread's step
            return self._ref.value()

    @property
    def last_change_mask(self):
        """bool (H, W): what the detector counted changed in the last step; None after
        a dense (first) step."""
        with self._step_lock:
            return self._ref.change_mask()

    def _finish(self, outs, stats, t0):
        """The step's outputs (one array, or a tuple), its time, every ``check_every``
        steps its measured deviation from ``model.run(reference_input)``."""
        outs = outs[0] if len(outs) == 1 else outs
        stats.seconds = time.perf_counter() - t0
        self._n_steps += 1
        if self.check_every and self._n_steps % self.check_every == 0:
            stats.check = self.last_check = deviation(
                outs, self.model.run(self.reference_input, n_threads=self.n_threads))
        self.last_stats = stats
        return outs


class Stream(CameraStream):
    """Incremental execution of one model on one camera. Make it with ``model.stream()``."""

    def __init__(self, model, threshold=0.0, detector="pixel", block=16, n_threads=None,
                 check_every=None, layer_thresholds=None, calibration=None):
        super().__init__(model, threshold, detector, block, n_threads, check_every)
        self._plan = model.incremental_plan()
        shapes = model.shapes
        self._caches = {t: np.empty(internal_shape(shapes[t]), np.float32)
                        for step in self._plan for t in step.node.outputs}
        self._last_masks = {}
        self._torch_outputs = {}          # image outputs in torch layout, (C, H, W)
        self._approx = None               # approx.LayerThresholds; None: the exact mode
        self.calibration = None           # approx.Calibration of layer_thresholds="auto"
        if layer_thresholds is not None:
            self._approx = LayerThresholds(model, self._plan, layer_thresholds, calibration)
            self._approx.check_layouts(self._caches)
        elif calibration is not None:
            raise ValueError('calibration= applies only to layer_thresholds="auto"')
        self.reset()

    # --- public ----------------------------------------------------------------

    def reset(self):
        """Forget the reference: the next step computes densely."""
        with self._step_lock:
            super().reset()
            self._scene_cut = False
            self._calib_frames = []

    @property
    def cache_bytes(self):
        """Bytes this stream holds: caches, reference input, masks' scratch, outputs."""
        n = (sum(a.nbytes for a in self._caches.values()) + self._ref.nbytes
             + sum(a.nbytes for a in self._torch_outputs.values()))
        return n + (self._approx.nbytes if self._approx is not None else 0)

    def _step(self, x):
        t0 = time.perf_counter()
        new, frame = self._ref.as_input(x)
        first = not self._ref.started
        if first:
            self._ref.first(new, frame)
            stats = self._run_nodes(None, first=True)
            self._scene_cut = False
        else:
            changed = self._ref.update(new, frame)
            # (not in the approximate mode: there a noisy frame's small changes are
            # what the thresholds hold back, node by node)
            self._scene_cut = self._approx is None and self._ref.changed_fraction > SCENE_CUT
            stats = self._run_nodes(None, first=True) if self._scene_cut \
                else self._run_nodes(changed)
        stats.input_changed_fraction = self._ref.changed_fraction
        whole = not self._ref.updated or self._scene_cut
        outs = tuple(self._output(t, whole) for t in self.model.graph.outputs)
        if self._approx is not None and self._approx.pending:
            self._approx_pending(x, first)
        return self._finish(outs, stats, t0)

    def _output(self, t, whole):
        """Output tensor ``t`` in torch layout, a new array. An image output is kept in
        torch layout too and updated on the rows its node recomputed: transposing a
        whole 21-channel 360x480 map costs more than a sparse step's kernels."""
        shape = self.model.shapes[t]
        # SPEC.md [G16] lets the graph input itself be an output: no node caches it
        src = self._ref.input if t == self.model.graph.input.name else self._caches[t]
        if not is_image(shape):
            return np.array(to_torch(src, shape), order="C")
        buf = self._torch_outputs.get(t)
        if buf is None:
            buf = self._torch_outputs[t] = np.empty(shape[1:], np.float32)
            whole = True
        if whole:
            hwc_to_chw(src, buf, self.n_threads)
        else:
            mask = self._last_masks.get(t)
            if mask is not None:
                rows = np.flatnonzero(mask.any(axis=1)).astype(np.int32)
                hwc_to_chw(src, buf, self.n_threads, rows)
        return buf[None].copy()

    def dirty_mask(self, node_name):
        """The output positions ``node_name`` recomputed in the last step (bool (OH, OW)),
        or None after a dense (first) step. In the approximate mode: the positions it
        propagated (recomputed and not held back)."""
        for step in self._plan:
            if step.node.name == node_name:
                if not self._ref.updated:
                    return None
                if self._scene_cut:
                    return np.ones(step.mask_shape, bool)
                m = self._last_masks.get(step.node.outputs[0])
                return np.zeros(step.mask_shape, bool) if m is None else m.astype(bool)
        raise KeyError(f"no node named {node_name!r}")

    def deepest_dirty_mask(self):
        """dirty_mask of the last node with a spatial output (where the receptive fields
        are widest), or None."""
        for step in reversed(self._plan):
            if step.rule is not None and step.mask_shape != (1, 1):
                return self.dirty_mask(step.node.name)
        return None

    def _approx_pending(self, x, first):
        """Approximate mode: thresholds from the first frame's scales, or "auto"'s
        calibration on the first frames (run exactly until then)."""
        a = self._approx
        if first:
            a.measure(self._caches)
        if a.auto is None:
            return
        self._calib_frames.append(np.array(x, copy=True))
        if len(self._calib_frames) < a.auto["frames"]:
            return
        self.calibration = calibrate(
            self.model, self._calib_frames, a.auto["max_error"], a.auto["metric"],
            a.auto["output"], self.threshold, self.detector, self.block, self.n_threads)
        a.set_absolute(self.calibration.thresholds)
        a.auto = None
        self._calib_frames = []

    # --- propagation and compute ---------------------------------------------------

    def _run_nodes(self, changed, first=False):
        """Recompute every node where needed (all of them when ``first``).

        ``changed``: the input's uint8 change mask, None when nothing changed. A
        tensor's mask is None while it is clean, so clean parts of the graph cost a
        dictionary lookup per node.
        """
        env = {self.model.graph.input.name: self._ref.input}
        masks = {self.model.graph.input.name: changed}
        macs = dense_macs = 0
        node_stats = []
        nt = self.n_threads
        approx = None if first else self._approx
        for step in self._plan:
            node = step.node
            out_name = node.outputs[0]
            out = self._caches[out_name]
            inputs = [env[t] for t in node.inputs]
            env[out_name] = out
            dense_macs += step.macs
            t0 = time.perf_counter()
            if first:
                mask, frac, dense = None, 1.0, True
            else:
                mask = self._propagate(step, masks)
                frac = 0.0 if mask is None else np.count_nonzero(mask) / mask.size
                dense = not step.masked or frac > step.fallback
                if frac == 0:
                    mask = None
            held = 0
            if frac > 0:
                if approx is None:
                    step.run(inputs, out, nt, None if dense else I.mask_indices(mask))
                else:
                    mask, held = approx.run(step, inputs, out, nt, mask, dense)
            masks[out_name] = mask
            computed = 1.0 if dense and frac > 0 else frac
            macs += int(round(step.macs * computed))
            node_stats.append(NodeStats(node.name, node.op, computed,
                                        time.perf_counter() - t0, dense and frac > 0))
            if self._approx is not None:
                node_stats[-1].suppressed_fraction = held / max(1, step.mask_shape[0] *
                                                                    step.mask_shape[1])
                node_stats[-1].error_bound = self._approx.threshold(node.name)
        self._last_masks = masks
        return StepStats(0.0, macs, dense_macs, 0.0, node_stats)

    def _propagate(self, step, masks):
        """The node's dirty output mask (uint8), or None when no input is dirty."""
        ins = [m for m in (masks[t] for t in step.node.inputs) if m is not None]
        if not ins:
            return None
        if step.rule is None:                       # global: any change dirties all
            return np.ones(step.mask_shape, np.uint8)
        if step.rule is SAME:
            if len(ins) == 1 and ins[0].shape == step.mask_shape:
                return ins[0]
            # the union; an input broadcast over H or W (squeeze-excitation's scale)
            # dirties the output wherever it is dirty, along the whole broadcast axis
            out = np.zeros(step.mask_shape, np.uint8)
            for m in ins:
                np.bitwise_or(out, m, out=out)
            return out
        (lo_y, hi_y), (lo_x, hi_x) = step.rule
        out = np.empty(step.mask_shape, np.uint8)
        I.dilate_mask(ins[0], lo_y, hi_y, lo_x, hi_x, out)
        return out
