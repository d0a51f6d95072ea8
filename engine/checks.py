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
    ``label_agreement``: for outputs with an axis 1 of 2 or more, the fraction of
    positions whose argmax over that axis is the exact one's (1.0 when no output has
    such an axis). It means something for class scores and segmentation maps; for a
    box-regression head (PNet's first output, a YOLO head) it does not: compare the
    output that holds labels alone (``deviation(y[k], exact[k])``).
    NaN or inf where the exact result has none make ``max_abs`` and ``rel_l2`` inf.
    """
    max_abs: float
    rel_l2: float
    label_agreement: float

    @property
    def exact(self):
        return self.max_abs == 0.0


def moved(y, ref):
    """|y - ref| per element, float64: 0 where the two are equal (inf == inf) or both NaN,
    inf where only one is NaN, so that a NaN the exact result does not have is the
    largest deviation there is."""
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(y - ref)
    d[(y == ref) | (np.isnan(y) & np.isnan(ref))] = 0.0
    d[np.isnan(d)] = np.inf
    return d


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
        d = moved(y, r)
        # max(), not the builtin: a NaN must win (builtin max(0.0, nan) is 0.0)
        max_abs = float(np.max([max_abs, d.max(initial=0.0)]))
        norm = float(np.linalg.norm(np.where(np.isfinite(r), r, 0.0)))
        err = float(np.linalg.norm(d)) if np.isfinite(d).all() else np.inf
        rel_l2 = float(np.max([rel_l2, err / norm if norm > 0 else (0.0 if err == 0
                                                                     else np.inf)]))
        if y.ndim >= 2 and y.shape[1] >= 2:
            agree = min(agree, float(np.mean(y.argmax(axis=1) == r.argmax(axis=1))))
    return Deviation(max_abs, rel_l2, agree)
