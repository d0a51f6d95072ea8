"""Measured deviation of a stream's output from the exact result.

The approximate modes (per-layer thresholds, region re-run with a margin smaller than
the receptive field) trade exactness for speed; ``check_every=N`` makes a stream run
the model densely on its reference input every N steps and report how far its output
is from that exact result, so the error is measured and shown rather than guessed.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class Deviation:
    """How far outputs are from the exact ones, the worst over the model's outputs.

    ``max_abs``: max |y - exact|; ``rel_l2``: ||y - exact|| / ||exact||;
    ``label_agreement``: for outputs with a channel axis of 2 or more (segmentation
    maps, class scores, detection heads), the fraction of positions whose argmax over
    channels is the exact one's (1.0 when no output has such an axis).
    """
    max_abs: float
    rel_l2: float
    label_agreement: float

    @property
    def exact(self):
        return self.max_abs == 0.0


def check_positive_or_none(value, name):
    """``value`` as an int, or None; ValueError unless None or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    return int(value)


def deviation(outputs, exact):
    """:class:`Deviation` of ``outputs`` from ``exact`` (arrays, or tuples of arrays in
    the same order, torch layout)."""
    ys = outputs if isinstance(outputs, tuple) else (outputs,)
    refs = exact if isinstance(exact, tuple) else (exact,)
    if len(ys) != len(refs):
        raise ValueError(f"{len(ys)} outputs against {len(refs)} exact ones")
    max_abs = rel_l2 = 0.0
    agree = 1.0
    for y, r in zip(ys, refs):
        y = np.asarray(y, np.float64)
        r = np.asarray(r, np.float64)
        if y.shape != r.shape:
            raise ValueError(f"output shape {y.shape} against exact {r.shape}")
        d = y - r
        max_abs = max(max_abs, float(np.abs(d).max(initial=0.0)))
        norm = float(np.linalg.norm(r))
        err = float(np.linalg.norm(d))
        rel_l2 = max(rel_l2, err / norm if norm > 0 else (0.0 if err == 0 else np.inf))
        if y.ndim >= 2 and y.shape[1] >= 2:
            agree = min(agree, float(np.mean(y.argmax(axis=1) == r.argmax(axis=1))))
    return Deviation(max_abs, rel_l2, agree)
