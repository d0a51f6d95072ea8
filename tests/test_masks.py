"""The mask kernels (engine/_masks.pyx) against numpy references: change detection
(the integer uint8 path, its thread count), the tabulated preprocessing, mask dilation
and indices; and scene cuts."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framedelta.engine import _masks as I
from test_stream import _frames, _small_model, assert_identical


def ref_maxdiff(a, b):
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2)


def ref_block(d, t, b):
    h, w = d.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(0, h, b):
        for x in range(0, w, b):
            tile = d[y:y + b, x:x + b].astype(np.float64)
            out[y:y + b, x:x + b] = not (tile.mean() <= t)
    return out


@given(h=st.integers(1, 40), w=st.integers(1, 45), c=st.sampled_from([1, 3, 4]),
       t=st.floats(0, 260), b=st.integers(1, 20), seed=st.integers(0, 2**31 - 1),
       n_threads=st.sampled_from([1, 2]))
def test_uint8_detectors_match_numpy(h, w, c, t, b, seed, n_threads):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    ref = a.copy()
    flip = rng.random((h, w)) < rng.random()
    ref[flip] = rng.integers(0, 256, (int(flip.sum()), c), dtype=np.uint8)
    d = np.empty((h, w), np.uint8)
    I.max_abs_diff_u8(a, ref, d, n_threads)
    np.testing.assert_array_equal(d, ref_maxdiff(a, ref))
    out = np.empty((h, w), np.uint8)
    n = I.pixel_change_mask_u8(d, t, out)
    expect = (d > np.float32(t)).astype(np.uint8)
    np.testing.assert_array_equal(out, expect)
    assert n == expect.sum()
    n = I.block_change_mask_u8(d, t, b, out, n_threads)
    expect = ref_block(d, np.float32(t), b)
    np.testing.assert_array_equal(out, expect)
    assert n == expect.sum()
    # the float detector on the same map decides the same
    out_f = np.empty((h, w), np.uint8)
    I.block_change_mask(d.astype(np.float32), t, b, out_f)
    np.testing.assert_array_equal(out_f, out)


def test_tabulated_preprocessing_has_the_formula_bits():
    model = _small_model()
    p = model.graph.input.preprocess
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    x = frame[..., ::-1].astype(np.float32) * np.float32(p.scale)
    x -= np.asarray(p.mean, np.float32)
    x /= np.asarray(p.std, np.float32)
    np.testing.assert_array_equal(model.frame_to_internal(frame), x)
    np.testing.assert_array_equal(model.frame_to_internal(frame[:, ::-1])[:, ::-1], x)


def test_scene_cut_recomputes_every_node_whole_and_exactly():
    from framedelta.engine.stream import SCENE_CUT
    model = _small_model()
    s = model.stream(threshold=4, detector="pixel")
    f = _frames(3, seed=7)
    s.step(f[0])
    cut = (255 - f[0]).astype(np.uint8)
    y = s.step(cut)
    st_ = s.last_stats
    assert st_.input_changed_fraction > SCENE_CUT
    assert all(n.dense and n.active_fraction == 1.0 for n in st_.nodes)
    assert st_.macs == st_.dense_macs
    assert_identical(y, model.run(s.reference_input), "scene cut")
    assert s.dirty_mask(model.graph.nodes[0].name).all()
    assert s.last_change_mask.mean() > SCENE_CUT
    # and the next small change is incremental again
    small = cut.copy()
    small[2:6, 3:9] = 0
    y = s.step(small)
    assert 0 < s.last_stats.macs < s.last_stats.dense_macs
    assert_identical(y, model.run(s.reference_input), "after the cut")


def test_detection_is_the_same_with_one_and_two_threads():
    outs = []
    for nt in (1, 2):
        model = _small_model(n_threads=nt)
        s = model.stream(threshold=6, detector="block", block=5)
        outs.append([(s.step(f), s.last_change_mask) for f in _frames(12, seed=3)])
    for (y1, m1), (y2, m2) in zip(*outs):
        np.testing.assert_array_equal(y1, y2)
        if m1 is None:
            assert m2 is None
        else:
            np.testing.assert_array_equal(m1, m2)


@pytest.mark.parametrize("t", [0.0, 7.5, 254.9, 255.0, 1e9])
def test_pixel_threshold_edges(t):
    d = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = np.empty_like(d)
    n = I.pixel_change_mask_u8(d, t, out)
    assert n == int((d > np.float32(t)).sum())


@given(h=st.integers(1, 30), w=st.integers(1, 30), oh=st.integers(1, 20),
       ow=st.integers(1, 20), density=st.sampled_from([0.0, 0.02, 0.2, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_dilate_mask_and_indices_match_numpy(h, w, oh, ow, density, seed):
    rng = np.random.default_rng(seed)
    m = (rng.random((h, w)) < density).astype(np.uint8)
    if density and rng.random() < 0.5:         # sparse rows: whole empty bands
        m[rng.random(h) < 0.7] = 0

    monotone = rng.random() < 0.7       # every receptive.py rule; else a general gather

    def ranges(o, n):
        lo = rng.integers(0, n, o)
        if monotone:
            lo = np.sort(lo)
            hi = np.maximum.accumulate(lo + rng.integers(0, 4, o))
            empty = rng.random(o) < 0.2          # windows wholly in the padding
            hi[empty] = lo[empty] - 1
        else:
            hi = lo + rng.integers(-1, 4, o)
        return lo.astype(np.int32), hi.clip(-1, n - 1).astype(np.int32)
    (ly, hy), (lx, hx) = ranges(oh, h), ranges(ow, w)
    out = np.empty((oh, ow), np.uint8)
    I.dilate_mask(m, ly, hy, lx, hx, out)
    expect = np.array([[m[ly[a]:hy[a] + 1, lx[b]:hx[b] + 1].any() for b in range(ow)]
                       for a in range(oh)], np.uint8)
    np.testing.assert_array_equal(out, expect)
    idx = I.mask_indices(m)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx, np.flatnonzero(m))


def test_frame_tables_refuse_frames_that_do_not_fit():
    model = _small_model()
    with pytest.raises(ValueError, match="expected"):
        model.frame_to_internal(np.zeros((24, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.frame_to_internal(np.zeros((24, 32, 3), np.float32))
    lut, src = model.frame_lut
    out = np.empty((24, 32, 3), np.float32)
    with pytest.raises(ValueError, match="source channel"):
        I.frame_to_input(np.zeros((24, 32, 2), np.uint8), lut, src, out, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        I.frame_to_input(np.zeros((24, 31, 3), np.uint8), lut, src, out, 1)


@given(h=st.integers(1, 30), w=st.integers(1, 37), c=st.sampled_from([1, 3, 4, 17]),
       seed=st.integers(0, 2**31 - 1), n_threads=st.sampled_from([1, 2]))
def test_float_detector_reads_torch_layout(h, w, c, seed, n_threads):
    """max_abs_diff_f32_planes on (C, H, W) gives numpy's max over channels of |x - ref|
    on the transposed input, NaN and infinities included, and take_changed_f32_planes
    copies exactly the masked positions."""
    rng = np.random.default_rng(seed)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e38], np.float32)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    ref = rng.standard_normal((h, w, c)).astype(np.float32)
    for a in (x.reshape(-1), ref.reshape(-1)):
        hit = rng.random(a.size) < 0.05
        a[hit] = rng.choice(specials, int(hit.sum()))
    ref[rng.random((h, w)) < 0.3] = np.ascontiguousarray(x.transpose(1, 2, 0))[0, 0]
    with np.errstate(invalid="ignore"):          # inf - inf: NaN, as in the kernel
        expect = np.abs(x.transpose(1, 2, 0) - ref).max(axis=2)
    got = np.empty((h, w), np.float32)
    I.max_abs_diff_f32_planes(x, ref, got, n_threads)
    np.testing.assert_array_equal(got, expect)
    mask = (rng.random((h, w)) < 0.4).astype(np.uint8)
    taken = ref.copy()
    I.take_changed_f32_planes(x, taken, mask, n_threads)
    want = ref.copy()
    want[mask.astype(bool)] = x.transpose(1, 2, 0)[mask.astype(bool)]
    np.testing.assert_array_equal(taken.view(np.uint32), want.view(np.uint32))
