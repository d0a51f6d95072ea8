"""The approximate mode: per-layer change thresholds with a bounded, non-drifting error.

Exact propagation dirties a growing window in every layer; a few strided layers later
nearly everything is dirty. As in DeltaCNN and CBinfer, the approximate mode stops a
change where it has become small.

Semantics
---------
Each node's cache holds the value it last *propagated*. When a node recomputes a dirty
output position, the position propagates (stays in the node's output mask, so it makes
later nodes dirty) only when some channel moved by more than the node's threshold ``t``
from the cached value; the cache then takes the new value. Otherwise the cached value is
put back and the position leaves the mask: later nodes do not see the change. So, after
every step and for every node, per position::

    max over channels |cache - layer(input caches)| <= t          (the node's error bound)

(the layer applied to its inputs' *caches*, not to the exact activations), and a position
that was not propagated keeps its cached value. Sub-threshold changes are not lost: they
accumulate against the cached value until they exceed ``t``, so the error never drifts,
whatever the number of frames. Nothing bounds the *output's* error in general (a later
layer may amplify a held-back change): it is measured (``check_every``, ``calibrate``).

A "position" is a pixel (all channels) of an image tensor, and the whole tensor for the
others (a squeeze-excitation scale, a linear tail): holding back the small change of an
SE scale vector is what keeps an SE network sparse after its first SE block. Nodes that
are computed whole (global ops, dense fallback) compare every dirty position the same way.

``layer_thresholds`` (``model.stream(...)``)
    ``None``: the exact mode, unchanged (the default).
    a number ``r >= 0``: relative: node n's threshold is ``r * scale_n``, where scale_n is
    the mean |value| of the node's output on the stream's first (dense) frame, measured
    once per stream (``reset()`` keeps it). ``0`` is the exact mode's output, bit for bit.
    Ops that only copy values (``COPY_OPS``: concat, pad, slice, ...) stay exact: a
    change reaches them only where an input moved past its own threshold, so holding
    back there buys almost nothing and costs a compare (measured: it tripled the
    U-Net's concat time).
    a dict ``{node name: t}``: absolute thresholds; nodes not named are exact.
    a path to a JSON file written by :func:`calibrate` (``framedelta calibrate``), or such
    a dict with a ``"thresholds"`` key: the absolute thresholds it holds.
    ``"auto"``: the stream runs exactly for its first ``frames`` steps, then calibrates
    on them (:func:`calibrate`, bounds from ``calibration=``) and switches to the
    thresholds found; ``stream.calibration`` holds the result.

A tensor whose engine layout has no position rows (a rank-4 tensor with a batch other
than 1) stays exact under a relative spec; naming it in a dict is a ValueError.

Nothing is stored in the model file: scales are measured per stream.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import _approx as A
from . import _masks as I
from .checks import deviation

METRICS = ("rel_l2", "max_abs", "labels")
COPY_OPS = frozenset({"concat", "pad", "slice", "identity", "reshape", "pixel_shuffle",
                      "pixel_unshuffle", "upsample_nearest", "permute", "expand"})
# calibrate() keeps thresholds only when they cut the MACs by at least this factor
MIN_MAC_GAIN = 1.1
AUTO_DEFAULTS = {"max_error": 0.01, "metric": "rel_l2", "frames": 30, "output": None}


def _check_number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def rows(cache, mask_shape):
    """The cache as (positions, channels): (H*W, C) for images, (1, size) for the tensors
    with one position; None for a layout the mode does not handle (node kept exact)."""
    if cache.ndim == 3 and cache.shape[:2] == tuple(mask_shape):
        return cache.reshape(-1, cache.shape[2])
    if tuple(mask_shape) == (1, 1):
        return cache.reshape(1, -1)
    return None


def activation_scale(cache):
    """mean |value| over the finite values of a node's output (0 when there are none)."""
    a = np.abs(cache[np.isfinite(cache)], dtype=np.float64)
    return float(a.mean()) if a.size else 0.0


def load_thresholds(path):
    """The absolute per-node thresholds of a JSON file written by :func:`calibrate`."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"layer_thresholds: cannot read {str(path)!r} (expected a number, "
                         f'"auto", or a thresholds JSON file): {e}') from None
    return _thresholds_of(data, f"layer_thresholds file {path}")


def _thresholds_of(data, what):
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a dict of node name -> threshold")
    return data


def check_calibration(calibration):
    """The "auto" mode's bounds: AUTO_DEFAULTS updated by ``calibration`` (a dict)."""
    if calibration is None:
        return dict(AUTO_DEFAULTS)
    if not isinstance(calibration, dict):
        raise ValueError(f"calibration must be a dict, got {type(calibration).__name__}")
    unknown = set(calibration) - set(AUTO_DEFAULTS)
    if unknown:
        raise ValueError(f"calibration: unknown keys {sorted(unknown)}; known: "
                         f"{sorted(AUTO_DEFAULTS)}")
    out = {**AUTO_DEFAULTS, **calibration}
    _check_number(out["max_error"], "calibration max_error")
    if out["metric"] not in METRICS:
        raise ValueError(f"calibration metric must be one of {', '.join(METRICS)}, "
                         f"got {out['metric']!r}")
    f = out["frames"]
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 2:
        raise ValueError(f"calibration frames must be an integer >= 2, got {f!r}")
    o = out["output"]
    if o is not None and (isinstance(o, bool) or not isinstance(o, (int, np.integer))
                          or o < 0):
        raise ValueError(f"calibration output must be None or an output index, got {o!r}")
    return out


class LayerThresholds:
    """One stream's per-node thresholds and the suppression around each recompute.

    ``spec``: see the module docstring. Built at ``stream()`` time: ValueError for a
    bad spec, an unknown node name, or a node the mode cannot hold back."""

    def __init__(self, model, plan, spec, calibration=None):
        self.plan = plan
        self.names = [s.node.name for s in plan]
        self.relative = None             # r of a relative spec, until scales are measured
        self.auto = None                 # the "auto" bounds, until calibrated
        self.scales = None
        self.t = {}                      # node name -> absolute threshold
        self._scratch = np.empty(0, np.float32)
        if calibration is not None and not (isinstance(spec, str) and spec == "auto"):
            raise ValueError('calibration= applies only to layer_thresholds="auto"')
        if isinstance(spec, str) and spec == "auto":
            self.auto = check_calibration(calibration)
            n_out = len(model.graph.outputs)
            if self.auto["output"] is not None and self.auto["output"] >= n_out:
                raise ValueError(f"calibration output {self.auto['output']}: the model has "
                                 f"{n_out} output(s)")
        elif isinstance(spec, (str, Path)):
            self.set_absolute(load_thresholds(spec))
        elif isinstance(spec, dict):
            self.set_absolute(_thresholds_of(spec, "layer_thresholds"))
        else:
            try:
                self.relative = _check_number(spec, "layer_thresholds")
            except ValueError:
                raise ValueError('layer_thresholds must be None, a number >= 0 (relative), '
                                 'a dict of node name -> threshold, a JSON path, or "auto"; '
                                 f"got {spec!r}") from None

    def supported(self, step, caches):
        return rows(caches[step.node.outputs[0]], step.mask_shape) is not None

    def set_absolute(self, thresholds):
        unknown = [k for k in thresholds if k not in self.names]
        if unknown:
            raise ValueError(f"layer_thresholds: no node named {unknown[0]!r} in the model")
        self.t = {k: _check_number(v, f"layer_thresholds[{k!r}]")
                  for k, v in thresholds.items()}

    def check_layouts(self, caches):
        for step in self.plan:
            if step.node.name in self.t and not self.supported(step, caches):
                raise ValueError(f"layer_thresholds: node {step.node.name!r} ({step.node.op}) "
                                 f"has an output layout the approximate mode cannot hold back")

    def measure(self, caches):
        """After the first (dense) step: the scales, and a relative spec's thresholds."""
        if self.scales is None:
            self.scales = {s.node.name: activation_scale(caches[s.node.outputs[0]])
                           for s in self.plan}
        if self.relative is not None:
            self.t = {s.node.name: self.relative * self.scales[s.node.name]
                      for s in self.plan
                      if s.node.op not in COPY_OPS and self.supported(s, caches)}
            self.relative = None

    @property
    def pending(self):
        """True until the thresholds are known (first frame, or "auto" calibration)."""
        return self.relative is not None or self.auto is not None

    def threshold(self, name):
        return self.t.get(name)

    @property
    def nbytes(self):
        """The scratch of the held-back rows (grows to the largest node recomputed)."""
        return self._scratch.nbytes

    def _buffer(self, shape):
        n = int(np.prod(shape))
        if self._scratch.size < n:
            self._scratch = np.empty(n, np.float32)
        return self._scratch[:n].reshape(shape)

    def run(self, step, inputs, out, n_threads, mask, dense):
        """Recompute ``step``'s dirty positions into ``out`` (its cache), then hold back
        those within the node's threshold. Returns (propagated mask or None, number of
        positions held back). ``mask`` is not modified (masks may be shared)."""
        t = self.t.get(step.node.name)
        if t is None:
            step.run(inputs, out, n_threads, None if dense else I.mask_indices(mask))
            return mask, 0
        r = rows(out, step.mask_shape)
        m = mask.reshape(-1).copy()
        n_dirty = int(np.count_nonzero(m))
        if dense:
            old = self._buffer(r.shape)
            np.copyto(old, r)
            step.run(inputs, out, n_threads, None)
            k = A.suppress_dense(r, old, m, t, n_threads)
        else:
            pix = I.mask_indices(mask)
            old = self._buffer((len(pix), r.shape[1]))
            A.gather_rows(r, pix, old, n_threads)
            step.run(inputs, out, n_threads, pix)
            k = A.suppress_rows(r, old, pix, t, m, n_threads)
        return (None if k == n_dirty else m.reshape(step.mask_shape)), k


# --- calibration -------------------------------------------------------------------


@dataclass
class Calibration:
    """What :func:`calibrate` found: absolute per-node ``thresholds`` (multiplier x each
    node's activation scale), the output error they gave on the calibration frames, and
    the speed they buy there (MAC ratio dense / incremental, ms per frame), against the
    exact mode's. ``tried``: every multiplier evaluated, with its error and MAC ratio."""
    thresholds: dict
    multiplier: float
    metric: str
    max_error: float
    error: float
    mac_ratio: float
    ms: float
    exact_mac_ratio: float
    exact_ms: float
    frames: int
    stream: dict
    tried: list = field(default_factory=list)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    def summary(self):
        if not self.thresholds:
            return (f"the exact mode: no thresholds within {self.metric} <= "
                    f"{self.max_error:g} save {MIN_MAC_GAIN:g}x the exact mode's MACs on "
                    f"{self.frames} frames (MAC bound {self.exact_mac_ratio:.2f}x, "
                    f"{self.exact_ms:.1f} ms/frame)")
        return (f"multiplier {self.multiplier:.4g}: {self.metric} error {self.error:.4g} "
                f"(bound {self.max_error:g}) on {self.frames} frames; MAC bound "
                f"{self.mac_ratio:.2f}x (exact mode {self.exact_mac_ratio:.2f}x), "
                f"{self.ms:.1f} ms/frame (exact mode {self.exact_ms:.1f})")


def clip_error(devs, metric):
    """One figure for a clip from per-frame :class:`checks.Deviation`: the worst frame's
    ``max_abs`` or ``rel_l2``; for ``labels``, 1 - the mean label agreement."""
    if not devs:
        return 0.0
    if metric == "labels":
        return 1.0 - float(np.mean([d.label_agreement for d in devs]))
    return float(max(getattr(d, metric) for d in devs))


def _select(y, output):
    if output is None:
        return y
    return (y if isinstance(y, tuple) else (y,))[output]


def _run_clip(model, frames, stream_kwargs, layer_thresholds):
    s = model.stream(layer_thresholds=layer_thresholds, **stream_kwargs)
    outs, macs, ms = [], [], []
    for f in frames:
        t0 = time.perf_counter()
        y = s.step(f)
        ms.append(1e3 * (time.perf_counter() - t0))
        outs.append(y)
        macs.append(s.last_stats.mac_ratio)
    return s, outs, float(np.mean(macs[1:])), float(np.median(ms[1:]))


def calibrate(model, frames, max_error, metric="rel_l2", output=None, threshold=8.0,
              detector="block", block=16, n_threads=None, iterations=8, lo=2.0 ** -12,
              hi=1.0):
    """Per-node thresholds for ``model`` whose output error vs the exact mode, on
    ``frames`` (the first is the dense one), stays within ``max_error``.

    One global multiplier m over relative thresholds (node n: m x mean |output| on the
    first frame): m = ``hi`` if it passes, else a bisection in log scale between ``lo``
    and ``hi`` over ``iterations`` steps, keeping the largest m that passed (0, the
    exact mode, when even ``lo`` fails). The error is measured, frame by frame, against
    the exact mode's output with the same detector (``metric``: see :func:`clip_error`;
    ``output``: the index of the output to measure, None for the worst of all).
    Thresholds whose MAC bound is less than ``MIN_MAC_GAIN`` times the exact mode's are
    dropped (``thresholds == {}``, multiplier 0: the exact mode): comparing and
    restoring positions then costs more than it saves.
    """
    max_error = _check_number(max_error, "max_error")
    if not (isinstance(iterations, (int, np.integer)) and not isinstance(iterations, bool)
            and iterations >= 0):
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not (_check_number(lo, "lo") > 0 and _check_number(hi, "hi") >= lo):
        raise ValueError(f"the multipliers must satisfy 0 < lo <= hi, got lo={lo!r}, "
                         f"hi={hi!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    frames = list(frames)
    if len(frames) < 2:
        raise ValueError("calibrate needs at least 2 frames (the first is computed densely)")
    n_out = len(model.graph.outputs)
    if output is not None and not 0 <= output < n_out:
        raise ValueError(f"output {output}: the model has {n_out} output(s)")
    kw = dict(threshold=threshold, detector=detector, block=block, n_threads=n_threads)
    exact_stream, exact, exact_mac, exact_ms = _run_clip(model, frames, kw, None)
    probe = model.stream(layer_thresholds=0.0, **kw)
    probe.step(frames[0])
    scales = probe._approx.scales
    supported = set(probe._approx.t)
    tried = {}

    def evaluate(m):
        ts = {n: m * scales[n] for n in supported}
        _, outs, mac, ms = _run_clip(model, frames, kw, ts)
        devs = [deviation(_select(y, output), _select(e, output))
                for y, e in zip(outs[1:], exact[1:])]
        tried[m] = (clip_error(devs, metric), mac, ms, ts)
        return tried[m][0] <= max_error

    if evaluate(hi):
        best = hi
    elif not evaluate(lo):
        best = 0.0
    else:
        best, a, b = lo, math.log(lo), math.log(hi)
        for _ in range(iterations):
            mid = math.exp((a + b) / 2)
            if evaluate(mid):
                best, a = mid, math.log(mid)
            else:
                b = math.log(mid)
    if best == 0.0:
        evaluate(0.0)
    err, mac, ms, ts = tried[best]
    if mac < MIN_MAC_GAIN * exact_mac:
        # thresholds that save less than this cost more in comparisons than they save:
        # PNet (12 px receptive field, already sparse) measured 12.52x against the exact
        # mode's 12.45x MAC bound, and 10.6 against 7.0 ms/frame. Decided on MACs, not
        # on the clock, so that the result does not depend on the machine's load.
        best, err, mac, ms, ts = 0.0, 0.0, exact_mac, exact_ms, {}
    return Calibration(
        thresholds=ts, multiplier=best, metric=metric, max_error=max_error, error=err,
        mac_ratio=mac, ms=ms, exact_mac_ratio=exact_mac, exact_ms=exact_ms,
        frames=len(frames), stream=dict(kw, output=output),
        tried=[{"multiplier": m, "error": e, "mac_ratio": r, "ms": t}
               for m, (e, r, t, _) in sorted(tried.items())])
