"""The dense executor: a validated graph, its kernels prepared, run node by node.

Python walks the nodes; each node's kernel runs without the GIL. Activations live in
buffers allocated once per model (engine layout, see layout.py) and outputs are
returned as fresh arrays in torch layout.
"""

import threading
from dataclasses import dataclass

import numpy as np

from framedelta.formats.graph import check_graph
from framedelta.formats.ops import OPS, resolve_attrs

from . import _kernels, _layout, _masks, _pool
from .layout import internal_shape, is_image, to_internal, to_torch
from .receptive import node_rule
from .registry import RECEPTIVE_RULES, REGISTRY

def effective_n_threads(n_threads):
    """None or -1: all cores OpenMP sees (OMP_NUM_THREADS respected); k > 0: k."""
    if n_threads is None or n_threads == -1:
        return _kernels.max_threads()
    if not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer, -1 or None, got {n_threads!r}")
    return int(n_threads)


@dataclass(frozen=True)
class PlanStep:
    """One node as the incremental path sees it (shared by every stream of a model)."""
    node: object
    run: object          # run(inputs, out, n_threads, pix=None), shared with Model.run
    masked: bool         # run() may be given pix; False: recompute the node whole
    rule: object         # receptive.SAME, per-axis (lo, hi) ranges, or None (global)
    mask_shape: tuple    # (OH, OW) for images, (1, 1) otherwise
    macs: int            # dense multiply-accumulates of the node
    fallback: float      # dirty fraction above which the dense kernel is used


def held_arrays(run):
    """The arrays a prepared kernel keeps in its closure (packed weights, tables)."""
    return [c.cell_contents for c in (getattr(run, "__closure__", None) or ())
            if isinstance(c.cell_contents, np.ndarray)]


def _describe(x):
    """'float64 (24, 32, 3)': what an input error says was received."""
    return f"{x.dtype} {tuple(x.shape)}"


class Model:
    """A loaded model. Use :func:`framedelta.load` to make one from a file."""

    def __init__(self, graph, path=None, n_threads=None, m_tile=None):
        self.graph = graph
        self.path = path
        self.shapes = check_graph(graph, path)
        self.n_threads = effective_n_threads(n_threads)
        self._lock = threading.Lock()
        self._plan = None
        self._frame_lut = None
        self._steps = []
        for node in graph.nodes:
            attrs = resolve_attrs(OPS[node.op], node.attrs)
            in_shapes = [self.shapes[t] for t in node.inputs]
            out_shape = self.shapes[node.outputs[0]]
            prepare = REGISTRY[node.op].prepare
            kw = {"m_tile": m_tile} if node.op in ("conv2d", "conv_transpose2d") else {}
            run = prepare(node, attrs, in_shapes, out_shape, **kw)
            self._steps.append((node, run, np.empty(internal_shape(out_shape), np.float32)))

    @property
    def footprint(self):
        """formats.budget.Footprint: activation and weight bytes, MACs, as the graph
        declares them (what [R30] checks at load)."""
        from framedelta.formats.budget import footprint
        return footprint(self.graph, self.shapes)

    @property
    def memory_bytes(self):
        """Bytes this model holds now: its dense pass's activation buffers, its weights
        (as read, and packed for the kernels), and the crop models region streams share
        (``crop_cache_bytes``). Each stream holds its own caches on top
        (``stream.cache_bytes``, about ``footprint.activation_bytes`` for mode="layers")."""
        seen, n = set(), 0
        arrays = [out for _, _, out in self._steps]
        arrays += [w for node in self.graph.nodes for w in node.weights.values()]
        arrays += [a for _, run, _ in self._steps for a in held_arrays(run)]
        for a in arrays:
            if id(a) not in seen:
                seen.add(id(a))
                n += a.nbytes
        return n + self.crop_cache_bytes

    @property
    def crop_cache_bytes(self):
        """Bytes the crop models of region streams hold (0 before the first region
        stream): activation buffers per crop shape, packed weights once for all."""
        plan = getattr(self, "_region_plan", None)
        return 0 if plan is None else plan.cache_bytes

    @property
    def input_shape(self):
        """(1, C, H, W): the shape :meth:`run` takes, torch layout."""
        return tuple(self.graph.input.shape)

    @property
    def output_shapes(self):
        return [self.shapes[t] for t in self.graph.outputs]

    @property
    def takes_frames(self):
        """True when the file declares image preprocessing: run() also takes uint8 frames."""
        return self.graph.input.preprocess is not None

    def frame_to_internal(self, frame, n_threads=None):
        """A uint8 (H, W, 3) BGR frame (numpy or torch) -> the engine-layout input, per the
        input spec (ValueError for a frame this model cannot take)."""
        arr, is_frame = self.check_any_input(frame)
        if not is_frame:
            raise ValueError(f"expected a uint8 frame {self._frame_shape()}, received "
                             f"{_describe(arr)}")
        lut, src = self.frame_lut
        out = np.empty(arr.shape[:2] + (lut.shape[0],), np.float32)
        nt = self.n_threads if n_threads is None else effective_n_threads(n_threads)
        _masks.frame_to_input(arr, lut, src, out, nt)
        return out

    @property
    def frame_lut(self):
        """(lut, src): the input spec's preprocessing tabulated, ``lut[c, v]`` the value of
        channel c for a pixel value v read from frame channel ``src[c]``. Computed once
        with the formula itself, so tabulated frames have the formula's bits."""
        if self._frame_lut is None:
            p = self.graph.input.preprocess
            c = self.input_shape[1]
            ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], c, axis=2)
            x = ramp[..., ::-1] if p.bgr_to_rgb else ramp
            x = x.astype(np.float32) * np.float32(p.scale)
            x -= np.asarray(p.mean, np.float32)
            x /= np.asarray(p.std, np.float32)
            src = np.arange(c, dtype=np.int32)
            self._frame_lut = (np.ascontiguousarray(x[0].T),
                               np.ascontiguousarray(src[::-1] if p.bgr_to_rgb else src))
        return self._frame_lut

    def _frame_shape(self):
        _, c, h, w = self.input_shape
        return (h, w, c)

    def accepted_inputs(self):
        """What run() and step() take, in words (every input error ends with it)."""
        what = f"float32 {self.input_shape} (torch layout, numpy or torch)"
        if self.takes_frames:
            what += f", or a uint8 {self._frame_shape()} BGR frame (numpy or torch)"
        return what

    def check_any_input(self, x):
        """``(array, is_frame)``: ``x`` as a numpy array the model takes, and whether it is
        a uint8 camera frame. ValueError naming the real problem first (dtype, rank,
        shape, or a frame for a model without preprocessing), then what is accepted."""
        if hasattr(x, "detach"):          # a torch tensor, without importing torch
            x = x.detach().cpu().numpy()
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"input: not an array ({e}); this model takes "
                             f"{self.accepted_inputs()}") from None
        accepted = f"; this model takes {self.accepted_inputs()}"
        if x.dtype == np.uint8:
            want = self._frame_shape()
            if not self.takes_frames:
                raise ValueError(f"input: received a uint8 {x.shape} array, but this model's "
                                 "file declares no image preprocessing for uint8 frames"
                                 + accepted)
            if x.ndim != 3:
                gray = " (grayscale? frames are BGR)" if x.ndim == 2 else ""
                raise ValueError(f"frame rank: expected 3 axes {want} (H, W, 3 BGR), received "
                                 f"{x.ndim} axes {x.shape}{gray}" + accepted)
            if x.shape != want:
                raise ValueError(f"frame shape: expected {want} (H, W, 3 BGR), received "
                                 f"{x.shape}" + accepted)
            return np.ascontiguousarray(x), True
        if x.dtype != np.float32:
            raise ValueError(f"input dtype: expected float32, received {_describe(x)}"
                             + accepted)
        if x.shape != self.input_shape:
            raise ValueError(f"input shape: expected {self.input_shape}, received "
                             f"{tuple(x.shape)}" + accepted)
        return x, False

    def to_engine_input(self, x):
        """Check ``x`` and return it in engine layout (ValueError naming what is wrong)."""
        arr, is_frame = self.check_any_input(x)
        if is_frame:
            return self.frame_to_internal(arr)
        return to_internal(arr, self.input_shape)

    def run(self, x, n_threads=None):
        """Dense forward pass. ``x``: float32 (1, C, H, W), torch layout (numpy or torch),
        or, when the file declares image preprocessing, a uint8 (H, W, 3) BGR frame.

        Returns the output array in torch layout, or a tuple when the model has several.
        """
        nt = self.n_threads if n_threads is None else effective_n_threads(n_threads)
        _pool.wake(nt)          # the workers run by the first kernel, not woken by it
        xi = self.to_engine_input(x)
        with self._lock:
            env = {self.graph.input.name: xi}
            for node, run, out in self._steps:
                run([env[t] for t in node.inputs], out, nt)
                env[node.outputs[0]] = out
            outs = tuple(self._torch_output(env[t], self.shapes[t], nt)
                         for t in self.graph.outputs)
        return outs[0] if len(outs) == 1 else outs

    @staticmethod
    def _torch_output(a, shape, n_threads):
        if is_image(shape):
            out = np.empty(shape, np.float32)
            _layout.hwc_to_chw(a, out[0], n_threads)
            return out
        return np.array(to_torch(a, shape), order="C")

    def stream(self, threshold=0.0, detector="pixel", block=16, n_threads=None,
               check_every=None, layer_thresholds=None, calibration=None, mode="layers",
               margin=None):
        """A new stream (one camera) with its own caches; see :class:`Stream`.

        ``threshold``: a position counts as changed when the max over channels of
        |x - reference| exceeds it (pixel units for uint8 frames). ``detector``:
        "pixel", or "block" (a block x block tile changes whole when its mean
        max-over-channels change exceeds the threshold). ``check_every``: every N
        steps, run the model densely on the reference input and report the output's
        deviation from it in ``last_stats.check`` (:class:`checks.Deviation`).
        ``layer_thresholds``: the approximate mode (approx.py), off when None: a number
        (relative to each node's mean |output| on the first frame), a dict of absolute
        per-node thresholds, a JSON file from ``framedelta calibrate``, or "auto"
        (calibrate on the first frames; ``calibration``: dict of max_error, metric,
        frames, output).

        ``mode``: "layers" (per-layer caches, :class:`Stream`) or "regions" (the whole
        model re-run on crops around the changes, :class:`regions.RegionStream`;
        ValueError naming the node when the model cannot run on crops). ``margin``
        (regions only): "exact" (the default: crops cover the receptive field) or a
        number of pixels (approximate; measure it with ``check_every``).
        """
        if mode not in ("layers", "regions"):
            raise ValueError(f'mode must be "layers" or "regions", got {mode!r}')
        if mode == "regions":
            if layer_thresholds is not None or calibration is not None:
                raise ValueError('layer_thresholds= and calibration= are options of '
                                 'mode="layers" (the approximate mode) only')
            from .regions import RegionStream
            return RegionStream(self, threshold=threshold, detector=detector, block=block,
                                n_threads=n_threads, check_every=check_every,
                                margin="exact" if margin is None else margin)
        if margin is not None:
            raise ValueError(f'margin={margin!r} is an option of mode="regions" only')
        from .stream import Stream
        return Stream(self, threshold=threshold, detector=detector, block=block,
                      n_threads=n_threads, check_every=check_every,
                      layer_thresholds=layer_thresholds, calibration=calibration)

    def region_plan(self):
        """What region streams share: alignment, receptive spans, crop models (built
        once; ValueError naming the node when the model cannot run on crops)."""
        with self._lock:
            plan = getattr(self, "_region_plan", None)
        if plan is None:
            from .crops import RegionPlan
            plan = RegionPlan(self)
            with self._lock:
                self._region_plan = getattr(self, "_region_plan", None) or plan
        return self._region_plan

    def incremental_plan(self):
        """Per node: dense and masked kernels, receptive-field ranges, MACs (built once)."""
        with self._lock:
            if self._plan is None:
                from .stream import DEFAULT_FALLBACK, DENSE_FALLBACK
                plan = []
                for node, run, _ in self._steps:
                    attrs = resolve_attrs(OPS[node.op], node.attrs)
                    in_shapes = [self.shapes[t] for t in node.inputs]
                    out_shape = self.shapes[node.outputs[0]]
                    rule = node_rule(node, self.shapes, RECEPTIVE_RULES)
                    plan.append(PlanStep(
                        node, run, rule is not None and REGISTRY[node.op].masked, rule,
                        tuple(out_shape[2:]) if len(out_shape) == 4 else (1, 1),
                        OPS[node.op].count_macs(attrs, in_shapes, [out_shape]),
                        DENSE_FALLBACK.get(node.op, DEFAULT_FALLBACK)))
                self._plan = plan
            return self._plan

    def __repr__(self):
        return (f"<framedelta.Model {len(self.graph.nodes)} nodes, input {self.input_shape}, "
                f"{self.n_threads} threads>")
