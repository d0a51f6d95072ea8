"""Run a model over a sequence of frames, dense and incremental side by side.

Shared by `framedelta run` and `framedelta demo`: per frame, the dense pass and the
stream's step run one after the other (interleaved, so outside load hits both alike),
the stream's output is checked against the dense pass of its reference input, and
the per-node active fractions are accumulated.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from .engine.checks import moved


@dataclass
class VideoReport:
    frames: int
    dense_ms: list = field(default_factory=list)
    incremental_ms: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    mac_ratio: list = field(default_factory=list)
    node_active: dict = field(default_factory=dict)    # node -> [active fraction]
    node_ops: dict = field(default_factory=dict)
    node_held: dict = field(default_factory=dict)      # node -> [suppressed fraction]
    max_deviation: float = 0.0                         # vs dense of the reference input
    extra_ms: dict = field(default_factory=dict)       # other engines, e.g. "PyTorch"
    cropped: list = field(default_factory=list)        # region mode: cropped area fraction
    n_regions: list = field(default_factory=list)      # region mode: crops run per frame
    checks: list = field(default_factory=list)         # check_every: checks.Deviation

    @staticmethod
    def _mean(values):
        # the first frame is dense by definition: leave it out of the means
        return float(np.mean(values[1:] if len(values) > 1 else values))

    def summary(self):
        d, i = self._mean(self.dense_ms), self._mean(self.incremental_ms)
        dense_macs_over_incr = self._mean(self.mac_ratio)
        return {"frames": self.frames, "dense_ms": d, "incremental_ms": i,
                "speedup": d / i if i > 0 else float("inf"),
                "changed_fraction": self._mean(self.changed),
                "mac_bound": dense_macs_over_incr, "max_deviation": self.max_deviation,
                **({"cropped_fraction": self._mean(self.cropped),
                    "regions_per_frame": self._mean(self.n_regions)} if self.cropped else {}),
                **({"check_max_abs": max(c.max_abs for c in self.checks),
                    "check_rel_l2": max(c.rel_l2 for c in self.checks),
                    "check_label_agreement": min(c.label_agreement for c in self.checks)}
                   if self.checks else {}),
                **{f"{k}_ms": self._mean(v) for k, v in self.extra_ms.items()}}

    def format(self):
        s = self.summary()
        lines = [f"frames                 : {s['frames']} (means leave out the first, dense, one)",
                 f"dense                  : {s['dense_ms']:8.2f} ms/frame",
                 f"incremental            : {s['incremental_ms']:8.2f} ms/frame"]
        for k in self.extra_ms:
            lines.append(f"{k:<23}: {s[f'{k}_ms']:8.2f} ms/frame")
        lines += [f"speed-up vs dense      : {s['speedup']:.2f}x   (MAC-count bound "
                  f"{s['mac_bound']:.2f}x)"]
        for k in self.extra_ms:
            lines.append(f"speed-up vs {k:<11}: {s[f'{k}_ms'] / s['incremental_ms']:.2f}x")
        lines += [f"changed input          : {100 * s['changed_fraction']:.2f}% of pixels",
                  f"max deviation          : {s['max_deviation']:.2e} (relative, vs a dense "
                  "pass on the reference input)"]
        if self.cropped:
            lines.append(f"regions (crops)        : {s['regions_per_frame']:.2f} per frame, "
                         f"cropped area {100 * s['cropped_fraction']:.1f}% of the frame")
        if self.checks:
            lines.append(f"check_every deviation  : max abs {s['check_max_abs']:.3g}, rel L2 "
                         f"{s['check_rel_l2']:.3g}, label agreement "
                         f"{100 * s['check_label_agreement']:.2f}% ({len(self.checks)} checks)")
        return "\n".join(lines)

    def node_table(self):
        held = any(any(v) for v in self.node_held.values())   # the approximate mode
        lines = [f"{'node':<28} {'op':<18} {'active %':>9}" + (f" {'held back %':>12}"
                                                                if held else ""),
                 "-" * (70 if held else 57)]
        for name, vals in self.node_active.items():
            lines.append(f"{name[:28]:<28} {self.node_ops[name]:<18} "
                         f"{100 * self._mean(vals):>8.1f}%" +
                         (f" {100 * self._mean(self.node_held[name]):>11.1f}%" if held
                          else ""))
        return "\n".join(lines)


def compare_on_frames(model, frames, threshold=8.0, detector="block", block=16,
                      extra=None, progress=True, on_step=None, **stream_kwargs):
    """Run ``model`` densely and as a stream over ``frames``; returns a VideoReport.

    ``extra``: {name: callable(frame)} other engines timed on the same frames.
    ``on_step(frame, stream)``: called after each step (e.g. to draw the masks).
    ``stream_kwargs``: more options of ``model.stream`` (mode, margin, check_every,
    layer_thresholds).
    """
    from tqdm import tqdm
    stream = model.stream(threshold=threshold, detector=detector, block=block,
                          **stream_kwargs)
    extra = extra or {}
    report = VideoReport(0, extra_ms={k: [] for k in extra})
    it = tqdm(frames, unit="frame", disable=not progress)
    for frame in it:
        t = time.perf_counter()
        model.run(frame)
        report.dense_ms.append(1e3 * (time.perf_counter() - t))
        for name, fn in extra.items():
            t = time.perf_counter()
            fn(frame)
            report.extra_ms[name].append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        y = stream.step(frame)
        report.incremental_ms.append(1e3 * (time.perf_counter() - t))
        st = stream.last_stats
        report.changed.append(st.input_changed_fraction)
        report.mac_ratio.append(st.mac_ratio)
        if hasattr(st, "cropped_fraction"):
            report.cropped.append(st.cropped_fraction)
            report.n_regions.append(len(st.regions))
        if st.check is not None:
            report.checks.append(st.check)
        for n in st.nodes:
            report.node_active.setdefault(n.name, []).append(n.active_fraction)
            report.node_ops[n.name] = n.op
            report.node_held.setdefault(n.name, []).append(n.suppressed_fraction)
        if report.frames % 10 == 0:
            ref = model.run(stream.reference_input)
            ys, refs = (y, ref) if isinstance(y, tuple) else ((y,), (ref,))
            for a, b in zip(ys, refs):
                scale = 1 + float(np.abs(b[np.isfinite(b)]).max(initial=0.0))
                dev = float(moved(a, b).max(initial=0.0)) / scale   # a NaN counts: inf
                report.max_deviation = float(np.max([report.max_deviation, dev]))
        if on_step is not None:
            on_step(frame, stream)
        report.frames += 1
        if progress:
            it.set_postfix(changed=f"{100 * st.input_changed_fraction:.1f}%",
                           macs=f"{st.mac_ratio:.1f}x")
    return report
