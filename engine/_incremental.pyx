# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of the incremental path: change detection, mask propagation, masked ops.

A masked kernel computes only the output positions listed in ``pix`` (flat indices
oy * OW + ox of an (OH, OW, C) engine-layout output, ascending) and leaves every other
position of ``out`` as it was: ``out`` is the node's cache. Each position is computed
by the same arithmetic as in the dense kernels, so a cache updated piecewise equals a
dense recomputation. Work is split into pieces that depend only on ``pix`` and the
shapes, never on ``n_threads``.
"""

cimport cython
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, fabsf
from libc.string cimport memcpy, memset

import numpy as np

ctypedef unsigned char u8

DEF ACT_NONE = 0
DEF ACT_RELU = 1
DEF ACT_CLAMP = 2


cdef inline float _act(float v, int act, float lo, float hi) noexcept nogil:
    if act == ACT_RELU:
        return 0.0 if v < 0 else v
    if act == ACT_CLAMP:
        if v < lo:
            return lo
        if v > hi:
            return hi
    return v


# --- change detection ------------------------------------------------------------

def max_abs_diff_f32(const float[:, :, ::1] x, const float[:, :, ::1] ref,
                     float[:, ::1] out, int n_threads):
    """out[y, x] = max over channels |x - ref|; NaN anywhere gives NaN (= changed).

    x, ref  in   (H, W, C) float32
    out     out  (H, W)
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int y, i, c
    cdef float m, d
    for y in prange(H, nogil=True, num_threads=n_threads, schedule="static"):
        for i in range(W):
            m = 0.0
            for c in range(C):
                d = fabsf(x[y, i, c] - ref[y, i, c])
                if d > m or d != d:
                    m = d
                    if d != d:
                        break
            out[y, i] = m


def max_abs_diff_u8(const u8[:, :, ::1] x, const u8[:, :, ::1] ref, float[:, ::1] out,
                    int n_threads):
    """out[y, x] = max over channels |x - ref| for uint8 frames, in pixel units."""
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int y, i, c, d, m
    for y in prange(H, nogil=True, num_threads=n_threads, schedule="static"):
        for i in range(W):
            m = 0
            for c in range(C):
                d = <int>x[y, i, c] - <int>ref[y, i, c]
                if d < 0:
                    d = -d
                if d > m:
                    m = d
            out[y, i] = m


# --- mask propagation --------------------------------------------------------------

def dilate_mask(const u8[:, ::1] m, const int[::1] lo_y, const int[::1] hi_y,
                const int[::1] lo_x, const int[::1] hi_x, u8[:, ::1] out):
    """out[oy, ox] = any(m[lo_y[oy]:hi_y[oy]+1, lo_x[ox]:hi_x[ox]+1]).

    The ranges are the exact input windows of each output row and column (see
    receptive.py), clipped to the input; an empty range (lo > hi) reads nothing.
    Two passes of prefix sums: O(H*W + H*OW + OH*OW) whatever the window size.
    """
    cdef int H = m.shape[0], W = m.shape[1], OH = out.shape[0], OW = out.shape[1]
    if lo_y.shape[0] != OH or hi_y.shape[0] != OH or lo_x.shape[0] != OW or hi_x.shape[0] != OW:
        raise ValueError("dilate_mask: inconsistent shapes")
    cdef int[:, ::1] rows = np.zeros((H + 1, OW), np.int32)   # prefix over input rows
    cdef int[::1] pre = np.empty(W + 1, np.int32)
    cdef int r, c, o
    with nogil:
        for r in range(H):
            pre[0] = 0
            for c in range(W):
                pre[c + 1] = pre[c] + (m[r, c] != 0)
            for o in range(OW):
                rows[r + 1, o] = rows[r, o] + (lo_x[o] <= hi_x[o] and
                                               pre[hi_x[o] + 1] - pre[lo_x[o]] > 0)
        for o in range(OH):
            for c in range(OW):
                out[o, c] = lo_y[o] <= hi_y[o] and rows[hi_y[o] + 1, c] - rows[lo_y[o], c] > 0


def mask_indices(const u8[:, ::1] m):
    """Flat indices (int32, ascending) of the set positions of a 2-D mask."""
    cdef Py_ssize_t n = m.shape[0] * m.shape[1], i, k = 0
    cdef const u8* p = &m[0, 0]
    for i in range(n):
        k += p[i] != 0
    cdef int[::1] out = np.empty(k, np.int32)
    k = 0
    for i in range(n):
        if p[i]:
            out[k] = <int>i
            k += 1
    return np.asarray(out)


# --- masked convolution ------------------------------------------------------------

cdef void _im2col_pix(const float* x, int H, int W, int Cin, int cin0, int cin_g,
                      int OW, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      const int* pix, int mr, float* buf) noexcept nogil:
    cdef int r, i, j, oy, ox, iy, ix
    cdef int K = kh * kw * cin_g
    cdef float* dst
    for r in range(mr):
        oy = pix[r] // OW
        ox = pix[r] % OW
        dst = buf + <Py_ssize_t>r * K
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            for j in range(kw):
                ix = ox * sw - pl + j * dw
                if iy < 0 or iy >= H or ix < 0 or ix >= W:
                    memset(dst, 0, cin_g * sizeof(float))
                else:
                    memcpy(dst, x + (<Py_ssize_t>iy * W + ix) * Cin + cin0,
                           cin_g * sizeof(float))
                dst += cin_g


cdef extern from "gemm.h" nogil:
    size_t fd_packed_size(int K, int N)
    void fd_gemm_bias_act_cols(int M, int N, int K, const float *A, int lda,
                               const float *Bp, int n0, int n1, const float *bias,
                               float *C, int ldc, int act, float lo, float hi)


def conv2d_masked(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                  float[:, :, ::1] out, const int[::1] pix, int kh, int kw, int sh, int sw,
                  int pt, int pl, int dh, int dw, int act, float act_min, float act_max,
                  int m_tile, int n_threads):
    """Convolution at the output pixels ``pix`` only: gather the im2col rows of a tile
    of them, one gemm (engine/gemm.h) per tile and group with bias and activation in
    its store, then scatter the rows into the cache.

    x in (H, W, Cin); w in (groups, gemm_packed_size(KH*KW*Cin/g, Cout/g)), the dense
    kernel's packed weights (ops.pack_conv_weight_gemm); out in/out (OH, OW, Cout).
    gemm.h computes every element with the same arithmetic whatever rows it is given,
    so these positions get the bits the dense kernel gives them.
    """
    cdef int H = x.shape[0], W = x.shape[1], Cin = x.shape[2]
    cdef int OW = out.shape[1], Cout = out.shape[2]
    cdef int G = w.shape[0]
    if G < 1 or Cin % G or Cout % G:
        raise ValueError("conv2d_masked: inconsistent shapes")
    cdef int cin_g = Cin // G
    cdef int K = kh * kw * cin_g, N = Cout // G
    if K < 1 or <size_t>w.shape[1] != fd_packed_size(K, N) or bias.shape[0] != Cout:
        raise ValueError("conv2d_masked: inconsistent shapes")
    cdef int P = pix.shape[0]
    if P == 0:
        return
    cdef int mt = max(1, min(m_tile, P))
    cdef int n_mt = (P + mt - 1) // mt
    n_threads = max(1, n_threads)
    cdef float[:, ::1] cols = np.empty((n_threads, <Py_ssize_t>mt * K), np.float32)
    cdef float[:, ::1] tile = np.empty((n_threads, <Py_ssize_t>mt * Cout), np.float32)
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0]
    cdef Py_ssize_t wstride = w.shape[1]
    cdef const float* bp = &bias[0]
    cdef float* op = &out[0, 0, 0]
    cdef const int* pp = &pix[0]
    cdef int t, g, m0, mr, r, tid
    cdef float* a
    cdef float* c
    with nogil, parallel(num_threads=n_threads):
        for t in prange(n_mt, schedule="dynamic"):
            tid = threadid()
            m0 = t * mt
            mr = min(mt, P - m0)
            a = &cols[tid, 0]
            c = &tile[tid, 0]
            for g in range(G):
                _im2col_pix(xp, H, W, Cin, g * cin_g, cin_g, OW, kh, kw, sh, sw, pt, pl,
                            dh, dw, pp + m0, mr, a)
                fd_gemm_bias_act_cols(mr, N, K, a, K, wp + g * wstride, 0, N, bp + g * N,
                                      c + g * N, Cout, act, act_min, act_max)
            for r in range(mr):
                memcpy(op + <Py_ssize_t>pp[m0 + r] * Cout, c + <Py_ssize_t>r * Cout,
                       Cout * sizeof(float))


def depthwise_masked(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                     float[:, :, ::1] out, const int[::1] pix, int kh, int kw, int sh, int sw,
                     int pt, int pl, int dh, int dw, int act, float act_min, float act_max,
                     int n_threads):
    """Depthwise convolution at ``pix`` only (same per-position code as the dense one)."""
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OW = out.shape[1]
    if out.shape[2] != C or w.shape[0] != kh * kw or w.shape[1] != C:
        raise ValueError("depthwise_masked: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0]
    cdef const float* bp = &bias[0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k
    cdef int oy, ox, i, j, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef const float* ws
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        oy = pix[k] // OW
        ox = pix[k] % OW
        o = op + <Py_ssize_t>pix[k] * C
        for c in range(C):
            o[c] = bp[c]
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= H:
                continue
            for j in range(kw):
                ix = ox * sw - pl + j * dw
                if ix < 0 or ix >= W:
                    continue
                xs = xp + (<Py_ssize_t>iy * W + ix) * C
                ws = wp + (i * kw + j) * C
                for c in range(C):
                    o[c] = o[c] + xs[c] * ws[c]
        for c in range(C):
            o[c] = _act(o[c], act, act_min, act_max)


# --- masked pooling and resizing -------------------------------------------------

def max_pool2d_masked(const float[:, :, ::1] x, float[:, :, ::1] out, const int[::1] pix,
                      int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      int n_threads):
    """Max pooling at ``pix`` only."""
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OW = out.shape[1]
    if out.shape[2] != C:
        raise ValueError("max_pool2d_masked: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k
    cdef int oy, ox, i, j, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef float v
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        oy = pix[k] // OW
        ox = pix[k] % OW
        o = op + <Py_ssize_t>pix[k] * C
        for c in range(C):
            o[c] = -INFINITY
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= H:
                continue
            for j in range(kw):
                ix = ox * sw - pl + j * dw
                if ix < 0 or ix >= W:
                    continue
                xs = xp + (<Py_ssize_t>iy * W + ix) * C
                for c in range(C):
                    v = xs[c]
                    if v > o[c] or v != v:
                        o[c] = v


def gather_pixels_masked(const float[:, :, ::1] x, const int[::1] iy, const int[::1] ix,
                         float[:, :, ::1] out, const int[::1] pix, int n_threads):
    """Nearest upsampling at ``pix`` only: out[oy, ox] = x[iy[oy], ix[ox]]."""
    cdef int W = x.shape[1], C = x.shape[2], OW = out.shape[1]
    if out.shape[2] != C:
        raise ValueError("gather_pixels_masked: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k
    cdef int oy, ox
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        oy = pix[k] // OW
        ox = pix[k] % OW
        memcpy(op + <Py_ssize_t>pix[k] * C, xp + (<Py_ssize_t>iy[oy] * W + ix[ox]) * C,
               C * sizeof(float))


def bilinear_masked(const float[:, :, ::1] x, const int[:, ::1] ys, const float[:, ::1] wy,
                    const int[:, ::1] xs, const float[:, ::1] wx, float[:, :, ::1] out,
                    const int[::1] pix, int n_threads):
    """Bilinear resize at ``pix`` only, torch's order of operations."""
    cdef int W = x.shape[1], C = x.shape[2], OW = out.shape[1]
    if out.shape[2] != C:
        raise ValueError("bilinear_masked: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k
    cdef int oy, ox, c
    cdef const float* r0
    cdef const float* r1
    cdef float h0, h1, w0, w1
    cdef float* o
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        oy = pix[k] // OW
        ox = pix[k] % OW
        r0 = xp + <Py_ssize_t>ys[oy, 0] * W * C
        r1 = xp + <Py_ssize_t>ys[oy, 1] * W * C
        h0 = wy[oy, 0]
        h1 = wy[oy, 1]
        w0 = wx[ox, 0]
        w1 = wx[ox, 1]
        o = op + <Py_ssize_t>pix[k] * C
        for c in range(C):
            o[c] = (h0 * (w0 * r0[xs[ox, 0] * C + c] + w1 * r0[xs[ox, 1] * C + c])
                    + h1 * (w0 * r1[xs[ox, 0] * C + c] + w1 * r1[xs[ox, 1] * C + c]))


# --- masked elementwise ----------------------------------------------------------

def activation_masked(const float[:, ::1] x, float[:, ::1] out, const int[::1] pix,
                      int act, float lo, float hi, int n_threads):
    """out[p] = act(x[p]) for p in pix; x, out (P, C). ACT_NONE copies (identity)."""
    cdef int C = x.shape[1]
    cdef Py_ssize_t k
    cdef int c, p
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        p = pix[k]
        for c in range(C):
            out[p, c] = _act(x[p, c], act, lo, hi)


def affine_masked(const float[:, ::1] x, const float[::1] scale, const float[::1] shift,
                  float[:, ::1] out, const int[::1] pix, int n_threads):
    """out[p, c] = x[p, c] * scale[c] + shift[c] for p in pix."""
    cdef int C = x.shape[1]
    cdef Py_ssize_t k
    cdef int c, p
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        p = pix[k]
        for c in range(C):
            out[p, c] = x[p, c] * scale[c] + shift[c]


def add_masked(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out,
               const int[::1] pix, int n_threads):
    """out[p] = a[p] + b[p] for p in pix; (P, C) arrays."""
    cdef int C = a.shape[1]
    cdef Py_ssize_t k
    cdef int c, p
    for k in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        p = pix[k]
        for c in range(C):
            out[p, c] = a[p, c] + b[p, c]


def concat_masked(list xs, float[:, ::1] out, const int[::1] pix, int n_threads):
    """Channel concatenation at ``pix`` only; xs are (P, C_k) arrays."""
    cdef int n_in = len(xs), k, off
    cdef const float[:, ::1] v
    cdef Py_ssize_t[::1] ptrs = np.empty(n_in, np.intp)
    cdef int[::1] chans = np.empty(n_in, np.int32)
    for k in range(n_in):
        v = xs[k]
        ptrs[k] = <Py_ssize_t>&v[0, 0]
        chans[k] = v.shape[1]
    cdef Py_ssize_t i
    cdef int p
    for i in prange(pix.shape[0], nogil=True, num_threads=n_threads, schedule="static"):
        p = pix[i]
        off = 0
        for k in range(n_in):
            memcpy(&out[p, off], (<float*>ptrs[k]) + <Py_ssize_t>p * chans[k],
                   chans[k] * sizeof(float))
            off = off + chans[k]


# --- change masks from per-pixel differences ---------------------------------------

def pixel_change_mask(const float[:, ::1] d, float t, u8[:, ::1] out):
    """out = d > t (NaN counts as changed); returns the number of changed pixels."""
    cdef int H = d.shape[0], W = d.shape[1], y, x
    cdef Py_ssize_t n = 0
    with nogil:
        for y in range(H):
            for x in range(W):
                out[y, x] = not (d[y, x] <= t)
                n += out[y, x]
    return n


def block_change_mask(const float[:, ::1] d, float t, int b, u8[:, ::1] out):
    """Per b x b tile: changed, whole, when the tile's mean of d exceeds t (NaN: changed).

    Tiles at the right and bottom edges may be partial: their mean is over the pixels
    they have. Returns the number of changed pixels.
    """
    cdef int H = d.shape[0], W = d.shape[1]
    cdef int iy, ix, ty, tx, y, x, y1, x1
    cdef double s
    cdef bint ch
    cdef Py_ssize_t n = 0
    if b < 1:
        raise ValueError("block_change_mask: block must be positive")
    with nogil:
        for iy in range((H + b - 1) // b):
            ty = iy * b
            y1 = min(H, ty + b)
            for ix in range((W + b - 1) // b):
                tx = ix * b
                x1 = min(W, tx + b)
                s = 0.0
                for y in range(ty, y1):
                    for x in range(tx, x1):
                        s = s + d[y, x]
                ch = not (s / ((y1 - ty) * (x1 - tx)) <= t)
                for y in range(ty, y1):
                    for x in range(tx, x1):
                        out[y, x] = ch
                if ch:
                    n += (y1 - ty) * (x1 - tx)
    return n
