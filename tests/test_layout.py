"""Engine layout to torch layout (engine/_layout.pyx) against numpy's transpose."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framedelta.engine._layout import hwc_to_chw


@given(h=st.integers(1, 20), w=st.integers(1, 150), c=st.integers(1, 24),
       n_threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_hwc_to_chw_whole_and_by_rows(h, w, c, n_threads, seed):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((h, w, c)).astype(np.float32)
    dst = np.empty((c, h, w), np.float32)
    hwc_to_chw(src, dst, n_threads)
    np.testing.assert_array_equal(dst, src.transpose(2, 0, 1))
    before = dst.copy()
    src2 = rng.standard_normal((h, w, c)).astype(np.float32)
    rows = np.flatnonzero(rng.random(h) < 0.5).astype(np.int32)
    hwc_to_chw(src2, dst, n_threads, rows)
    expect = before.copy()
    expect[:, rows] = src2.transpose(2, 0, 1)[:, rows]
    np.testing.assert_array_equal(dst, expect)


def test_hwc_to_chw_checks_shapes_and_rows():
    src = np.zeros((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        hwc_to_chw(src, np.zeros((3, 5, 4), np.float32), 1)
    with pytest.raises(ValueError, match="row"):
        hwc_to_chw(src, np.zeros((3, 4, 5), np.float32), 1, np.array([4], np.int32))
