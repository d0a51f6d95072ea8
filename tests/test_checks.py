"""Deviation from the exact result (engine/checks.py) and a stream's check_every."""

import numpy as np
import pytest

from framedelta.engine.checks import deviation
from test_stream import _frames, _small_model


def test_deviation_figures():
    exact = np.zeros((1, 3, 2, 2), np.float32)
    exact[0, 0] = 1.0                        # class 0 everywhere
    y = exact.copy()
    y[0, 1, 0, 0] = 2.0                      # one position now says class 1
    d = deviation(y, exact)
    assert d.max_abs == 2.0
    assert d.rel_l2 == pytest.approx(2.0 / 2.0)
    assert d.label_agreement == 0.75
    assert not d.exact
    # the worst over several outputs; an output without a channel axis has no labels
    flat = np.ones((1, 1, 4), np.float32)
    d2 = deviation((exact, flat + 0.5), (exact, flat))
    assert d2.max_abs == 0.5 and d2.label_agreement == 1.0
    assert deviation(exact, exact).exact


def test_deviation_rejects_mismatched_outputs():
    a = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        deviation(a, a[:, :, :2])
    with pytest.raises(ValueError, match="outputs"):
        deviation((a, a), (a,))


def test_check_every_measures_on_its_steps_only():
    model = _small_model()
    s = model.stream(threshold=6, detector="block", block=8, check_every=3)
    checks = []
    for f in _frames(7, seed=2):
        s.step(f)
        checks.append(s.last_stats.check)
    assert [c is not None for c in checks] == [False, False, True, False, False, True, False]
    assert all(c.exact and c.label_agreement == 1.0 for c in checks if c is not None)
    assert s.last_check is checks[5]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="check_every"):
            model.stream(check_every=bad)


def test_a_nan_the_exact_result_lacks_is_the_worst_deviation():
    exact = np.ones((1, 3, 2, 2), np.float32)
    y = exact.copy()
    y[0, 1, 1, 1] = np.nan
    d = deviation(y, exact)
    assert d.max_abs == np.inf and d.rel_l2 == np.inf and not d.exact
    both = exact.copy()
    both[0, 0, 0, 0] = np.nan
    assert deviation(both.copy(), both).exact          # NaN where the exact one has it
    inf = exact.copy()
    inf[0, 2, 0, 1] = np.inf
    assert deviation(inf.copy(), inf).exact            # inf == inf has not moved
