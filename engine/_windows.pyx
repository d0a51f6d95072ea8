# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Window kernels: transposed convolution, average and adaptive pooling.

Layout as in _kernels.pyx: one image at a time as a C-contiguous (H, W, C) float32
array. Every kernel takes ``pix`` (int32 flat output positions oy * OW + ox, or None for
all of them) and computes each position with the same code either way, so the masked
(incremental) call gives the bits of the dense one. Work is split into pieces whose
boundaries depend only on the shapes and the tile size, never on ``n_threads``.

Transposed convolution by stride phases: output row oy reads the taps i with
(oy + top - i * dh) divisible by sh, input row (oy + top) // sh - (i * dh) // sh. The
taps of one phase r = (oy + top) % sh are fixed, so each phase (ry, rx) is a plain
convolution over the input with its own sub-kernel: an im2col of only the taps that
exist (no rows of inserted zeros), times that phase's packed weights, through the same
gemm as conv2d (engine/gemm.h, bias and activation fused in its store). Taps that fall
outside the input give zero rows, as conv2d's padding does.
"""

cimport cython
import numpy as np
from cython.parallel cimport parallel, prange, threadid

include "_pool_api.pxi"
from libc.math cimport INFINITY
from libc.string cimport memcpy, memset

cdef extern from "gemm.h" nogil:
    size_t fd_packed_size(int K, int N)
    void fd_gemm_bias_act_cols(int M, int N, int K, const float *A, int lda,
                               const float *Bp, int n0, int n1, const float *bias,
                               float *C, int ldc, int act, float lo, float hi)

include "_act.pxi"

# Pooling modes (engine/ops.py: POOL_MODES).
cdef enum:
    POOL_MAX = 0        # max; NaN propagates
    POOL_AVG = 1        # sum / (divisor, or ny * nx)          (torch's avg_pool2d)
    POOL_AVG_AXES = 2   # sum / ny / nx                         (torch's adaptive_avg_pool2d)


# --- transposed convolution --------------------------------------------------------

def phase_tables(int k, int s, int d):
    """The taps of each stride phase along one axis.

    Returns (start, offset): int32 (s + 1,) and (k,). The taps of phase r are
    i = taps[start[r]:start[r + 1]] in increasing order, where taps lists 0..k-1 sorted
    by (i * d) % s; offset[t] = (i * d) // s for the t-th of them, so that output index
    o (phase (o + pad) % s) reads input index (o + pad) // s - offset[t].
    Also returns taps (int32 (k,)).
    """
    i = np.arange(k, dtype=np.int64)
    taps = np.argsort((i * d) % s, kind="stable").astype(np.int32)
    counts = np.bincount((i * d) % s, minlength=s)
    start = np.zeros(s + 1, np.int32)
    start[1:] = np.cumsum(counts)
    offset = ((taps.astype(np.int64) * d) // s).astype(np.int32)
    return start, offset, taps


cdef void _ct_im2col(const float* x, int H, int W, int Cin, int cin0, int cg,
                     int qy, int qx, int ny, int nx, const int* offy, const int* offx,
                     float* dst) noexcept nogil:
    """One im2col row (ny, nx, cg) of a phase: taps (a, b) read input
    (qy - offy[a], qx - offx[b]); taps outside the input are zeros."""
    cdef int a, b, c, iy, ix
    cdef const float* src
    for a in range(ny):
        iy = qy - offy[a]
        if iy < 0 or iy >= H:
            memset(dst, 0, <size_t>nx * cg * sizeof(float))
            dst += nx * cg
            continue
        for b in range(nx):
            ix = qx - offx[b]
            if ix < 0 or ix >= W:
                for c in range(cg):
                    dst[c] = 0
            else:
                src = x + (<Py_ssize_t>iy * W + ix) * Cin + cin0
                if cg <= 8:
                    for c in range(cg):
                        dst[c] = src[c]
                else:
                    memcpy(dst, src, cg * sizeof(float))
            dst += cg


cdef void _ct_tile(const float* x, int H, int W, int Cin, int G, int OW, int kw,
                   int sh, int sw, int pt, int pl,
                   const int* ystart, const int* yoff, const int* xstart, const int* xoff,
                   const float* wp, const float* bias, int og,
                   const int* pix, Py_ssize_t m0, int mr, int* order, int* key,
                   float* cols, float* tile, float* out, int act, float lo,
                   float hi) noexcept nogil:
    """Output positions m0..m0+mr (or pix[m0..m0+mr)): grouped by stride phase, then per
    phase and group one im2col and one gemm into ``tile``, whose rows are scattered."""
    cdef int r, p, q, k0, cnt, ry, rx, ny, nx, K, g, co, t, oy, ox, cg = Cin // G
    cdef int Cout = G * og, n8 = (og + 7) // 8 * 8
    cdef Py_ssize_t m, base
    for r in range(mr):
        m = pix[m0 + r] if pix != NULL else m0 + r
        oy = <int>(m // OW)
        ox = <int>(m % OW)
        order[r] = <int>m
        key[r] = ((oy + pt) % sh) * sw + (ox + pl) % sw
    p = 0
    while p < mr:
        # gather the positions of p's phase at p..q
        k0 = key[p]
        q = p + 1
        for r in range(p + 1, mr):
            if key[r] == k0:
                t = key[q]
                key[q] = key[r]
                key[r] = t
                t = order[q]
                order[q] = order[r]
                order[r] = t
                q = q + 1
        cnt = q - p
        ry = k0 // sw
        rx = k0 % sw
        ny = ystart[ry + 1] - ystart[ry]
        nx = xstart[rx + 1] - xstart[rx]
        K = ny * nx * cg
        if K == 0:
            # no tap reaches this phase: the bias, as the gemm would store it
            for r in range(cnt):
                for co in range(Cout):
                    tile[<Py_ssize_t>r * Cout + co] = _act(0.0 + bias[co], act, lo, hi)
        else:
            # packed weights of this phase: after those of the phases before it
            base = (<Py_ssize_t>G * cg * n8) * (<Py_ssize_t>ystart[ry] * kw
                                                 + <Py_ssize_t>ny * xstart[rx])
            for g in range(G):
                for r in range(cnt):
                    m = order[p + r]
                    oy = <int>(m // OW)
                    ox = <int>(m % OW)
                    _ct_im2col(x, H, W, Cin, g * cg, cg, (oy + pt) // sh, (ox + pl) // sw,
                               ny, nx, yoff + ystart[ry], xoff + xstart[rx],
                               cols + <Py_ssize_t>r * K)
                fd_gemm_bias_act_cols(cnt, og, K, cols, K,
                                      wp + base + <Py_ssize_t>g * K * n8, 0, og,
                                      bias + g * og, tile + g * og, Cout, act, lo, hi)
        for r in range(cnt):
            memcpy(out + <Py_ssize_t>order[p + r] * Cout, tile + <Py_ssize_t>r * Cout,
                   Cout * sizeof(float))
        p = q


def conv_transpose2d(const float[:, :, ::1] x, const float[::1] w, const float[::1] bias,
                     float[:, :, ::1] out, int kh, int kw, int sh, int sw, int pt, int pl,
                     const int[::1] ystart, const int[::1] yoff, const int[::1] xstart,
                     const int[::1] xoff, int groups, int act, float act_min, float act_max,
                     int m_tile, int n_threads, const int[::1] pix=None):
    """Transposed convolution of one image, at the positions pix (all when None).

    x        in   (H, W, Cin)
    w        in   packed weights from engine.ops.pack_conv_transpose_weight: per stride
                  phase (ry, rx) (row-major) and group, the (ny * nx * Cin/G, Cout/G)
                  matrix of the phase's taps, gemm-packed
    bias     in   (Cout,)
    out      out  (OH, OW, Cout): the positions in pix (all when None) are written
    ystart, yoff, xstart, xoff  in  phase_tables of each axis (kernel, stride, dilation)
    pt, pl   in   the leading crop (pads top and left)
    m_tile   output positions per tile (the im2col buffer is m_tile x K floats)
    """
    cdef int H = x.shape[0], W = x.shape[1], Cin = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], Cout = out.shape[2]
    cdef int G = groups
    if G < 1 or Cin % G or Cout % G or bias.shape[0] != Cout:
        raise ValueError("conv_transpose2d: inconsistent shapes")
    if (ystart.shape[0] != sh + 1 or xstart.shape[0] != sw + 1 or yoff.shape[0] != kh
            or xoff.shape[0] != kw or ystart[sh] != kh or xstart[sw] != kw):
        raise ValueError("conv_transpose2d: inconsistent phase tables")
    cdef int cg = Cin // G, og = Cout // G
    if <size_t>w.shape[0] != <size_t>kh * kw * G * fd_packed_size(cg, og):
        raise ValueError("conv_transpose2d: inconsistent packed weights")
    cdef int ny_max = 0, nx_max = 0, r
    for r in range(sh):
        ny_max = max(ny_max, ystart[r + 1] - ystart[r])
    for r in range(sw):
        nx_max = max(nx_max, xstart[r + 1] - xstart[r])
    cdef Py_ssize_t P = (<Py_ssize_t>OH * OW) if pix is None else pix.shape[0]
    if P == 0:
        return
    cdef int mt = <int>max(1, min(m_tile, P))
    cdef Py_ssize_t n_mt = (P + mt - 1) // mt
    n_threads = max(1, n_threads)
    cdef Py_ssize_t kmax = max(1, ny_max * nx_max * cg)
    # per-thread buffers, allocated here so that failure is a MemoryError
    cdef float[:, ::1] cols = np.empty((n_threads, mt * kmax), np.float32)
    cdef float[:, ::1] tiles = np.empty((n_threads, <Py_ssize_t>mt * Cout), np.float32)
    cdef int[:, ::1] orders = np.empty((n_threads, mt), np.intc)
    cdef int[:, ::1] keys = np.empty((n_threads, mt), np.intc)
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef Py_ssize_t t
    cdef int tid
    with nogil, parallel(num_threads=pool_threads(n_threads)):
        for t in prange(n_mt, schedule="static"):
            tid = threadid()
            _ct_tile(xp, H, W, Cin, G, OW, kw, sh, sw, pt, pl, &ystart[0], &yoff[0],
                     &xstart[0], &xoff[0], &w[0], &bias[0], og, pp, t * mt,
                     <int>min(<Py_ssize_t>mt, P - t * mt), &orders[tid, 0], &keys[tid, 0],
                     &cols[tid, 0], &tiles[tid, 0], &out[0, 0, 0], act, act_min, act_max)


def conv_transpose2d_depthwise(const float[:, :, ::1] x, const float[:, ::1] w,
                               const float[::1] bias, float[:, :, ::1] out, int sh, int sw,
                               int pt, int pl, const int[::1] ystart, const int[::1] yoff,
                               const int[::1] ytaps, const int[::1] xstart,
                               const int[::1] xoff, const int[::1] xtaps, int act,
                               float act_min, float act_max, int n_threads,
                               const int[::1] pix=None):
    """Depthwise transposed convolution (groups == Cin == Cout), direct loops over
    channels: per position the bias, then its phase's taps in increasing (i, j).

    x     in   (H, W, C)
    w     in   (KH*KW, C), from engine.ops.pack_depthwise_weight (tap i * KW + j)
    bias  in   (C,)
    out   out  (OH, OW, C): the positions in pix (all when None) are written
    ystart, yoff, ytaps, xstart, xoff, xtaps  in  phase_tables of each axis
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OW = out.shape[1]
    cdef int kh = ytaps.shape[0], kw = xtaps.shape[0]
    if (out.shape[2] != C or w.shape[0] != kh * kw or w.shape[1] != C
            or bias.shape[0] != C or ystart.shape[0] != sh + 1 or xstart.shape[0] != sw + 1
            or yoff.shape[0] != kh or xoff.shape[0] != kw or ystart[sh] != kh
            or xstart[sw] != kw):
        raise ValueError("conv_transpose2d_depthwise: inconsistent shapes")
    cdef Py_ssize_t P = (<Py_ssize_t>out.shape[0] * OW) if pix is None else pix.shape[0]
    if P == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k, m
    cdef int oy, ox, ry, rx, qy, qx, a, b, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef const float* ws
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        m = pp[k] if pp != NULL else k
        oy = <int>(m // OW)
        ox = <int>(m % OW)
        ry = (oy + pt) % sh
        rx = (ox + pl) % sw
        qy = (oy + pt) // sh
        qx = (ox + pl) // sw
        o = op + m * C
        for c in range(C):
            o[c] = bias[c]
        for a in range(ystart[ry], ystart[ry + 1]):
            iy = qy - yoff[a]
            if iy < 0 or iy >= H:
                continue
            for b in range(xstart[rx], xstart[rx + 1]):
                ix = qx - xoff[b]
                if ix < 0 or ix >= W:
                    continue
                xs = xp + (<Py_ssize_t>iy * W + ix) * C
                ws = wp + (ytaps[a] * kw + xtaps[b]) * C
                for c in range(C):
                    o[c] = o[c] + xs[c] * ws[c]
        for c in range(C):
            o[c] = _act(o[c], act, act_min, act_max)


# --- pooling over per-axis windows -------------------------------------------------

def window_pool(const float[:, :, ::1] x, float[:, :, ::1] out,
                const int[::1] y0, const int[::1] y1, const int[::1] ny,
                const int[::1] x0, const int[::1] x1, const int[::1] nx,
                long long divisor, int mode, int n_threads, const int[::1] pix=None):
    """Max or mean over the window rows y0[oy]..y1[oy]-1 by columns x0[ox]..x1[ox]-1.

    x     in   (H, W, C)
    out   out  (OH, OW, C): the positions in pix (all when None) are written
    y0, y1, x0, x1  in  window bounds per output row and column, inside x
    ny, nx          in  per output row and column, the factors of the divisor
    mode  POOL_MAX (0): max, NaN propagates; an empty window gives -inf
          POOL_AVG (1): float32 sum in row-major order / float(divisor if divisor != 0
                        else ny[oy] * nx[ox]); an empty window gives 0 (torch's avg_pool2d)
          POOL_AVG_AXES (2): float32 sum / float(ny[oy]) / float(nx[ox]) (torch's
                        adaptive_avg_pool2d)
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if (out.shape[2] != C or y0.shape[0] != OH or y1.shape[0] != OH or ny.shape[0] != OH
            or x0.shape[0] != OW or x1.shape[0] != OW or nx.shape[0] != OW
            or mode < POOL_MAX or mode > POOL_AVG_AXES):
        raise ValueError("window_pool: inconsistent shapes")
    cdef int i
    for i in range(OH):
        if y0[i] < 0 or y1[i] > H:
            raise ValueError("window_pool: row window outside the input")
    for i in range(OW):
        if x0[i] < 0 or x1[i] > W:
            raise ValueError("window_pool: column window outside the input")
    cdef Py_ssize_t P = (<Py_ssize_t>OH * OW) if pix is None else pix.shape[0]
    if P == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k, m
    cdef int oy, ox, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef float v, d, dy, dx
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        m = pp[k] if pp != NULL else k
        oy = <int>(m // OW)
        ox = <int>(m % OW)
        o = op + m * C
        for c in range(C):
            o[c] = -INFINITY if mode == POOL_MAX else 0.0
        if y0[oy] >= y1[oy] or x0[ox] >= x1[ox]:
            continue
        for iy in range(y0[oy], y1[oy]):
            for ix in range(x0[ox], x1[ox]):
                xs = xp + (<Py_ssize_t>iy * W + ix) * C
                if mode == POOL_MAX:
                    for c in range(C):
                        v = xs[c]
                        if v > o[c] or v != v:
                            o[c] = v
                else:
                    for c in range(C):
                        o[c] = o[c] + xs[c]
        if mode == POOL_AVG:
            d = <float>(divisor if divisor != 0 else <long long>ny[oy] * nx[ox])
            for c in range(C):
                o[c] = o[c] / d
        elif mode == POOL_AVG_AXES:
            dy = <float>ny[oy]
            dx = <float>nx[ox]
            for c in range(C):
                o[c] = o[c] / dy / dx
