"""The gemm microkernel (engine/gemm.h) and the conv/linear kernels built on it.

The contract the incremental path relies on: each output element is computed with the
same arithmetic in the same order whatever M, the tile or subset of rows it is computed
in, its row position inside a register block, the column block, or the thread count.
So these tests compare bits, not values within a tolerance.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framedelta.engine import _kernels as K
from framedelta.engine import ops as O

NR = K.gemm_panel_width()
EDGE = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-39], np.float32)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def assert_same_bits(a, b):
    assert a.shape == b.shape
    diff = bits(a) != bits(b)
    assert not diff.any(), f"{int(diff.sum())} elements differ, first at {np.argwhere(diff)[0]}"


def problem(rng, m, k, n, edge=False):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    if edge:
        mask = rng.random(a.shape) < 0.02
        a[mask] = rng.choice(EDGE, int(mask.sum()))
    return a, b, bias


def gemm(a, bp, n, bias, act=0, lo=-0.5, hi=0.75, n0=0, n1=-1, out=None):
    c = np.full((a.shape[0], n), np.float32(12345.0)) if out is None else out
    K.gemm(a, bp, n, bias, c, act, lo, hi, n0, n1)
    return c


def reference(a, b, bias, act, lo=-0.5, hi=0.75):
    with np.errstate(invalid="ignore", over="ignore"):
        y = (a.astype(np.float64) @ b.astype(np.float64) + bias).astype(np.float32)
    if act == 1:
        y = np.where(y < 0, np.float32(0), y)
    elif act == 2:
        y = np.where(y < lo, np.float32(lo), np.where(y > hi, np.float32(hi), y))
    return y


# shapes that hit every edge: K over one K block (FD_KC), N at panel edges (16/32)
SIZES_K = [1, 3, 16, 27, 144, 321, 700]
SIZES_N = [1, 7, 16, 17, 24, 31, 32, 33, 48, 96, 100]


@pytest.mark.parametrize("k", SIZES_K)
@pytest.mark.parametrize("n", SIZES_N)
def test_gemm_matches_reference(k, n):
    rng = np.random.default_rng(k * 1000 + n)
    a, b, bias = problem(rng, 29, k, n)
    bp = O.gemm_pack(b)
    assert bp.shape == (K.gemm_packed_size(k, n),)
    for act in (0, 1, 2):
        y = gemm(a, bp, n, bias, act)
        np.testing.assert_allclose(y, reference(a, b, bias, act), rtol=1e-5,
                                   atol=1e-5 * (1 + np.sqrt(k)))


@pytest.mark.parametrize("k", [5, 321, 700])
@pytest.mark.parametrize("n", [16, 24, 33, 100])
def test_rows_bit_identical_in_any_tiling_or_subset(k, n):
    """The dense result, row by row, equals every tiling and every gathered subset."""
    rng = np.random.default_rng(k + 7 * n)
    m = 101
    a, b, bias = problem(rng, m, k, n, edge=True)
    bp = O.gemm_pack(b)
    for act in (0, 1, 2):
        full = gemm(a, bp, n, bias, act)
        # contiguous tiles of every size, so each row sits at every position of a block
        for t in (1, 2, 5, 11, 12, 13, 24, 25, 37, 100):
            tiled = np.concatenate([gemm(a[i:i + t], bp, n, bias, act)
                                    for i in range(0, m, t)])
            assert_same_bits(tiled, full)
        # gathered subsets in any order (the incremental path's dirty pixels)
        for size in (1, 3, 12, 17, 60):
            idx = rng.choice(m, size, replace=False)
            assert_same_bits(gemm(a[idx], bp, n, bias, act), full[idx])
        # strided rows (lda != K) read in place
        wide = np.zeros((m, k + 9), np.float32)
        wide[:, 3:3 + k] = a
        assert_same_bits(gemm(wide[:, 3:3 + k], bp, n, bias, act), full)


@pytest.mark.parametrize("n", [33, 64, 100, 160])
def test_column_blocks_bit_identical(n):
    rng = np.random.default_rng(n)
    a, b, bias = problem(rng, 40, 77, n)
    bp = O.gemm_pack(b)
    full = gemm(a, bp, n, bias, 1)
    for step in range(NR, n + NR, NR):
        out = np.full((40, n), np.float32(12345.0))
        for n0 in range(0, n, step):
            gemm(a, bp, n, bias, 1, n0=n0, n1=min(n, n0 + step), out=out)
        assert_same_bits(out, full)
    # a column block writes its columns only
    out = np.full((40, n), np.float32(7.0))
    gemm(a, bp, n, bias, 1, n0=NR, n1=n - 1, out=out)
    assert (out[:, :NR] == 7).all() and (out[:, n - 1] == 7).all()
    assert_same_bits(out[:, NR:n - 1], full[:, NR:n - 1])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 60), k=st.integers(1, 400), n=st.integers(1, 80),
       act=st.sampled_from([0, 1, 2]), seed=st.integers(0, 2**31 - 1))
def test_gemm_subsets_property(m, k, n, act, seed):
    rng = np.random.default_rng(seed)
    a, b, bias = problem(rng, m, k, n, edge=True)
    bp = O.gemm_pack(b)
    full = gemm(a, bp, n, bias, act)
    idx = rng.permutation(m)[:rng.integers(1, m + 1)]
    assert_same_bits(gemm(a[idx], bp, n, bias, act), full[idx])
    finite = np.isfinite(a).all(1)
    # a float32 sum of k products is within k * eps * sum |a_k b_k| of the exact sum
    # (|bias| once more); huge edge values make that, not the result, the scale
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(bias)
    bound = 1e-5 + (k + 2) * np.finfo(np.float32).eps * scale
    ref = reference(a, b, bias, act)
    with np.errstate(invalid="ignore"):
        err = np.abs(full.astype(np.float64) - ref.astype(np.float64))
        ok = ((full == ref) | (err <= bound))[finite]     # equal infs from overflow
    assert ok.all(), f"{int((~ok).sum())} elements outside the float32 summation bound"


def test_activation_keeps_nan_and_signed_zero():
    a = np.array([[np.nan], [-1.0], [2.0], [-0.0], [np.inf], [-np.inf]], np.float32)
    b = np.ones((1, 1), np.float32)
    bp = O.gemm_pack(b)
    zero = np.zeros(1, np.float32)
    relu = gemm(a, bp, 1, zero, 1)[:, 0]
    assert np.isnan(relu[0]) and relu[1] == 0 and not np.signbit(relu[1]) and relu[2] == 2
    assert relu[4] == np.inf and relu[5] == 0
    clamp = gemm(a, bp, 1, zero, 2, -0.5, 0.75)[:, 0]
    assert np.isnan(clamp[0])
    np.testing.assert_array_equal(clamp[1:], np.float32([-0.5, 0.75, 0.0, 0.75, -0.5]))
    none = gemm(a, bp, 1, zero, 0)[:, 0]
    assert np.isnan(none[0]) and none[4] == np.inf


def _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """numpy im2col of an (H, W, C) image: (OH*OW, KH*KW*C), rows (kh, kw, c)."""
    h, w, c = x.shape
    xp = np.zeros((h + pt + dh * kh + sh * oh, w + pl + dw * kw + sw * ow, c), np.float32)
    xp[pt:pt + h, pl:pl + w] = x
    cols = np.empty((oh, ow, kh, kw, c), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw]
    return cols.reshape(oh * ow, kh * kw * c)


CONVS = [  # cin, cout, k, stride, pad, dilation, groups, h, w
    (3, 32, 3, 2, 1, 1, 1, 37, 41),
    (3, 16, 3, 2, 1, 1, 1, 30, 75),       # stride 2 with interior runs read from x
    (8, 24, 5, 1, 2, 1, 1, 12, 60),
    (5, 40, 3, 1, 0, 2, 1, 14, 50),       # dilated: im2col (taps not contiguous)
    (13, 37, 3, 1, 1, 1, 1, 23, 29),
    (16, 24, 1, 1, 0, 1, 1, 19, 21),      # 1x1: rows read straight from the input
    (64, 128, 1, 2, 0, 1, 1, 20, 22),     # 1x1 stride 2: im2col
    (6, 9, 3, 1, 2, 2, 3, 17, 15),        # grouped, dilated
    (40, 600, 3, 1, 1, 1, 1, 9, 8),       # K over one K block, many panels
]


@pytest.mark.parametrize("cin,cout,k,s,p,d,g,h,w", CONVS)
def test_conv_equals_gemm_on_any_pixel_subset(cin, cout, k, s, p, d, g, h, w):
    """Dense conv2d, with any tile size and thread count, equals fd_gemm on the im2col
    rows of any subset of output pixels: what the incremental path computes."""
    rng = np.random.default_rng(cin * cout)
    x = rng.standard_normal((h, w, cin)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin // g, k, k)) / np.sqrt(cin * k * k / g)
          ).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    wp = O.pack_conv_weight_gemm(wt, g)
    outs = []
    for m_tile, n_split, threads, min_run in [
            (1000, 1, 1, 24), (7, 1, 2, 24), (12, 3, 2, 24), (13, 2, 3, 1), (1, 1, 1, 1),
            (100, 1, 2, 1), (100, 2, 2, 10**6), (64, 1, 1, 5)]:
        out = np.full((oh, ow, cout), np.float32(12345.0))
        old = K.set_implicit_min_run(min_run)
        try:
            K.conv2d(x, wp, bias, out, k, k, s, s, p, p, d, d, 1, 0.0, 0.0, m_tile,
                     n_split, threads)
        finally:
            K.set_implicit_min_run(old)
        outs.append(out)
    for out in outs[1:]:
        assert_same_bits(out, outs[0])
    dense = outs[0].reshape(oh * ow, cout)
    cg, ng = cin // g, cout // g
    wm = O.pack_conv_weight(wt, g)
    for grp in range(g):
        cols = _im2col(x[:, :, grp * cg:(grp + 1) * cg], k, k, s, s, p, p, d, d, oh, ow)
        bp = O.gemm_pack(wm[grp])
        for size in (1, 5, 12, oh * ow):
            idx = rng.choice(oh * ow, size, replace=False)
            got = gemm(cols[idx], bp, ng, bias[grp * ng:(grp + 1) * ng], 1)
            assert_same_bits(got, dense[idx, grp * ng:(grp + 1) * ng])
    ref = np.maximum(_im2col(x, k, k, s, s, p, p, d, d, oh, ow) @ wm[0] + bias[:ng], 0) \
        if g == 1 else None
    if ref is not None:
        np.testing.assert_allclose(dense, ref, rtol=1e-4, atol=1e-4)


def test_linear_matches_reference_and_gemm():
    rng = np.random.default_rng(5)
    for f, o in [(1, 1), (512, 1000), (1280, 1000), (7, 33)]:
        x = rng.standard_normal(f).astype(np.float32)
        wt = rng.standard_normal((o, f)).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        wp = O.pack_linear_weight(wt)
        outs = []
        for threads in (1, 2, 3):
            out = np.full(o, np.float32(12345.0))
            K.linear(x, wp, b, out, threads)
            outs.append(out)
        for out in outs[1:]:
            assert_same_bits(out, outs[0])
        assert_same_bits(outs[0], gemm(x[None], wp, o, b)[0])
        np.testing.assert_allclose(outs[0], wt.astype(np.float64) @ x + b, rtol=1e-4,
                                   atol=1e-4 * np.sqrt(f))


def test_packed_weights_are_cache_line_aligned():
    w = np.ones((70, 3, 3, 3), np.float32)
    wp = O.pack_conv_weight_gemm(w, 1)
    assert wp.ctypes.data % 64 == 0
    assert O.gemm_pack(np.ones((5, 40), np.float32)).ctypes.data % 64 == 0


def test_inconsistent_shapes_raise():
    a = np.ones((4, 5), np.float32)
    bp = O.gemm_pack(np.ones((5, 6), np.float32))
    with pytest.raises(ValueError):
        K.gemm(a, bp, 20, np.ones(20, np.float32), np.empty((4, 20), np.float32))
    with pytest.raises(ValueError):
        K.gemm(a, bp, 6, np.ones(6, np.float32), np.empty((4, 6), np.float32), n0=3)
    with pytest.raises(ValueError):
        K.gemm_pack(np.ones((5, 6), np.float32), np.empty(10, np.float32))


def _draw_one_group_conv(draw, max_w=40):
    """A random one-group convolution with dw == 1 (the paths that read interior runs
    straight from x): geometry (kh, kw, sh, sw, pt, pl, dh), input, weights (torch
    layout and packed), bias and output size; None when the output would be empty."""
    k_h, k_w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s_h, s_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    d_h = draw(st.integers(1, 2))
    p_t, p_l = draw(st.integers(0, k_h)), draw(st.integers(0, k_w))
    cin, cout = draw(st.integers(1, 9)), draw(st.integers(1, 40))
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, max_w))
    oh = (h + 2 * p_t - d_h * (k_h - 1) - 1) // s_h + 1
    ow = (w + 2 * p_l - (k_w - 1) - 1) // s_w + 1
    if oh < 1 or ow < 1:
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((h, w, cin)).astype(np.float32)
    wt = rng.standard_normal((cout, cin, k_h, k_w)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    return {"geometry": (k_h, k_w, s_h, s_w, p_t, p_l, d_h), "x": x, "wt": wt,
            "bias": bias, "wp": O.pack_conv_weight_gemm(wt, 1), "oh": oh, "ow": ow,
            "rng": rng}


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_conv_paths_match_reference(data):
    """Interior pixels read straight from x (any run length) and im2col rows give the
    same bits, and match torch-free float64 reference within tolerance."""
    c = _draw_one_group_conv(data.draw)
    if c is None:
        return
    k_h, k_w, s_h, s_w, p_t, p_l, d_h = c["geometry"]
    x, wt, bias, wp, oh, ow = c["x"], c["wt"], c["bias"], c["wp"], c["oh"], c["ow"]
    (h, w, cin), cout = x.shape, wt.shape[0]
    act = data.draw(st.sampled_from([0, 1, 2]))
    outs = []
    for min_run, m_tile in [(10**6, 50), (1, 50), (3, 7), (1, 1000)]:
        out = np.full((oh, ow, cout), np.float32(12345.0))
        old = K.set_implicit_min_run(min_run)
        try:
            # bottom/right padding equal to top/left (the kernel takes top/left only)
            K.conv2d(x, wp, bias, out, k_h, k_w, s_h, s_w, p_t, p_l, d_h, 1, act, -0.5, 0.75,
                     m_tile, 1, 2)
        finally:
            K.set_implicit_min_run(old)
        outs.append(out)
    for out in outs[1:]:
        assert_same_bits(out, outs[0])
    # float64 reference on the same padded image
    xp = np.zeros((h + 2 * p_t + d_h * k_h, w + 2 * p_l + k_w, cin))
    xp[p_t:p_t + h, p_l:p_l + w] = x
    ref = np.zeros((oh, ow, cout))
    for i in range(k_h):
        for j in range(k_w):
            patch = xp[i * d_h:i * d_h + s_h * (oh - 1) + 1:s_h, j:j + s_w * (ow - 1) + 1:s_w]
            ref += patch @ wt[:, :, i, j].T.astype(np.float64)
    ref = ref + bias
    if act == 1:
        ref = np.maximum(ref, 0)
    elif act == 2:
        ref = np.clip(ref, -0.5, 0.75)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))


def test_instruction_sets_agree():
    """Every kernel with FMA (AVX-512 12x32 blocks, AVX2 6x16) gives the same bits; the
    build's own target (0) may lack FMA and is then only close."""
    rng = np.random.default_rng(11)
    a, b, bias = problem(rng, 37, 300, 57, edge=True)
    bp = O.gemm_pack(b)
    best = K.gemm_isa()
    results = {}
    try:
        for level in (2, 1, 0):
            name = K.gemm_force_isa(level)
            results[name] = gemm(a, bp, 57, bias, 1)
    finally:
        assert K.gemm_force_isa(-1) == best
    fma = {n: r for n, r in results.items() if n in ("avx512", "avx2", "neon")}
    for r in fma.values():
        assert_same_bits(r, next(iter(fma.values())))
    finite = np.isfinite(a).all(1)
    for r in results.values():
        np.testing.assert_allclose(r[finite], reference(a, b, bias, 1)[finite], rtol=1e-5,
                                   atol=1e-4)


@given(data=st.data())
def test_masked_conv_runs_equal_dense(data):
    """conv2d_masked reads runs of consecutive interior pixels straight from x (no
    im2col): whatever the run length threshold, tile size and threads, the pixels it
    computes have conv2d's bits and the others keep what the cache held."""
    c = _draw_one_group_conv(data.draw, max_w=48)
    if c is None:
        return
    k_h, k_w, s_h, s_w, p_t, p_l, d_h = c["geometry"]
    x, bias, wp, oh, ow, rng = c["x"], c["bias"], c["wp"], c["oh"], c["ow"], c["rng"]
    cout = c["wt"].shape[0]
    dense = np.empty((oh, ow, cout), np.float32)
    K.conv2d(x, wp, bias, dense, k_h, k_w, s_h, s_w, p_t, p_l, d_h, 1, 1, 0.0, 0.0, 64, 1,
             1)
    # runs of random lengths in random rows, plus scattered pixels
    mask = np.zeros((oh, ow), bool)
    for _ in range(data.draw(st.integers(1, 6))):
        y, x0 = rng.integers(0, oh), rng.integers(0, ow)
        mask[y, x0:x0 + rng.integers(1, ow + 1)] = True
    mask |= rng.random((oh, ow)) < 0.05
    pix = np.flatnonzero(mask).astype(np.int32)
    for min_run, m_tile, threads in [(1, 1000, 1), (3, 7, 2), (24, 50, 2), (10**6, 13, 1)]:
        out = np.full((oh, ow, cout), np.float32(12345.0))
        old = K.set_implicit_min_run(min_run)
        try:
            K.conv2d_masked(x, wp, bias, out, pix, k_h, k_w, s_h, s_w, p_t, p_l, d_h, 1, 1,
                            0.0, 0.0, m_tile, threads)
        finally:
            K.set_implicit_min_run(old)
        assert_same_bits(out[mask], dense[mask])
        assert (out[~mask] == 12345.0).all()
