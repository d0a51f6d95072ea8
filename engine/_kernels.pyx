# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compute kernels: one public ``def`` per op, each releasing the GIL.

Layout: one image at a time in NHWC, as a C-contiguous (H, W, C) float32 array,
vectors as (F,). Every kernel writes its whole output and reads only its inputs,
so results never depend on the number of threads: work is split into pieces whose
boundaries depend only on the shapes (and the tile size the caller passes), never
on ``n_threads``, and each output element is computed by exactly one piece.

Convolution is im2col + sgemm (scipy's cython_blas, i.e. the OpenBLAS scipy ships)
on tiles of output pixels, with bias and activation applied to each tile while it is
still in cache. OpenBLAS must be held to one thread while these run (the engine does
it with threadpoolctl): our OpenMP threads already use every core.
"""

cimport cython
import numpy as np
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fd_openmp_enabled(void) { return 1; }
    static int fd_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fd_openmp_enabled(void) { return 0; }
    static int fd_max_threads(void) { return 1; }
    #endif
    """
    int fd_openmp_enabled() nogil
    int fd_max_threads() nogil

# Activation codes shared with the engine (engine/plan.py: ACTIVATIONS).
DEF ACT_NONE = 0
DEF ACT_RELU = 1
DEF ACT_CLAMP = 2


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(fd_openmp_enabled())


def max_threads():
    """OpenMP's default team size (all cores unless OMP_NUM_THREADS says otherwise)."""
    return fd_max_threads()


cdef inline float _act(float v, int act, float lo, float hi) noexcept nogil:
    # Comparisons, not fmaxf/fminf: NaN must stay NaN, as in torch.
    if act == ACT_RELU:
        return 0.0 if v < 0 else v
    if act == ACT_CLAMP:
        if v < lo:
            return lo
        if v > hi:
            return hi
    return v


# --- convolution -----------------------------------------------------------------

cdef void _im2col(const float* x, int H, int W, int Cin, int cin0, int cin_g,
                  int OW, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                  int m0, int mr, float* buf) noexcept nogil:
    """Rows m0..m0+mr of the im2col matrix of one group: (kh, kw, cin_g) per row."""
    cdef int r, i, j, oy, ox, iy, ix
    cdef int K = kh * kw * cin_g
    cdef float* dst
    for r in range(mr):
        oy = (m0 + r) // OW
        ox = (m0 + r) % OW
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


cdef void _bias_act(float* c, int ldc, int mr, int nc, const float* bias,
                    int act, float lo, float hi) noexcept nogil:
    cdef int r, n
    cdef float* row
    for r in range(mr):
        row = c + <Py_ssize_t>r * ldc
        for n in range(nc):
            row[n] = _act(row[n] + bias[n], act, lo, hi)


def conv2d(const float[:, :, ::1] x, const float[:, :, ::1] w, const float[::1] bias,
           float[:, :, ::1] out, int kh, int kw, int sh, int sw, int pt, int pl,
           int dh, int dw, int act, float act_min, float act_max,
           int m_tile, int n_split, int n_threads):
    """Convolution of one image, im2col + sgemm per tile of output pixels.

    x        in   (H, W, Cin)
    w        in   (groups, KH*KW*Cin/groups, Cout/groups), from pack_conv_weight
    bias     in   (Cout,)
    out      out  (OH, OW, Cout), every element written
    m_tile   output pixels per sgemm call (the im2col buffer is m_tile x K floats)
    n_split  column blocks of Cout/groups per tile (parallelism when pixels are few)
    """
    cdef int H = x.shape[0], W = x.shape[1], Cin = x.shape[2]
    cdef int G = w.shape[0], K = w.shape[1], N = w.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], Cout = out.shape[2]
    cdef int cin_g = Cin // G
    if G * N != Cout or K != kh * kw * cin_g or bias.shape[0] != Cout or Cin % G:
        raise ValueError("conv2d: inconsistent shapes")
    cdef int M = OH * OW
    cdef int mt = max(1, min(m_tile, M))
    cdef int n_mt = (M + mt - 1) // mt
    cdef int ns = max(1, min(n_split, N))
    cdef int nb = (N + ns - 1) // ns
    cdef bint direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                        and pl == 0 and OH == H and OW == W)
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0, 0]
    cdef const float* bp = &bias[0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t item
    cdef int g, m0, mr, n0, nc, lda, split
    cdef float* a
    cdef float one = 1.0, zero = 0.0
    cdef char* tr = b"N"
    n_threads = max(1, n_threads)
    # one im2col buffer per thread, allocated here so that failure is a MemoryError
    cdef float[:, ::1] bufs = np.empty((n_threads, 1 if direct else <Py_ssize_t>mt * K),
                                       np.float32)
    with nogil, parallel(num_threads=n_threads):
        for item in prange(<Py_ssize_t>n_mt * ns, schedule="static"):
            m0 = <int>(item // ns) * mt
            split = <int>(item % ns)
            mr = min(mt, M - m0)
            n0 = split * nb
            nc = min(nb, N - n0)
            if nc <= 0:
                continue
            for g in range(G):
                if direct:
                    a = <float*>xp + <Py_ssize_t>m0 * Cin + g * cin_g
                    lda = Cin
                else:
                    a = &bufs[threadid(), 0]
                    _im2col(xp, H, W, Cin, g * cin_g, cin_g, OW, kh, kw, sh, sw, pt, pl,
                            dh, dw, m0, mr, a)
                    lda = K
                # row-major C = A.B is column-major C^T = B^T.A^T
                sgemm(tr, tr, &nc, &mr, &K, &one,
                      <float*>wp + <Py_ssize_t>g * K * N + n0, &N, a, &lda, &zero,
                      op + <Py_ssize_t>m0 * Cout + g * N + n0, &Cout)
                _bias_act(op + <Py_ssize_t>m0 * Cout + g * N + n0, Cout, mr, nc,
                          bp + g * N + n0, act, act_min, act_max)


def depthwise_conv2d(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                     float[:, :, ::1] out, int kh, int kw, int sh, int sw, int pt, int pl,
                     int dh, int dw, int act, float act_min, float act_max, int n_threads):
    """Depthwise convolution (groups == Cin == Cout), direct loops over channels.

    x    in   (H, W, C)
    w    in   (KH*KW, C), from pack_depthwise_weight
    out  out  (OH, OW, C)
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or w.shape[0] != kh * kw or w.shape[1] != C or bias.shape[0] != C:
        raise ValueError("depthwise_conv2d: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0]
    cdef const float* bp = &bias[0]
    cdef float* op = &out[0, 0, 0]
    cdef int oy, ox, i, j, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef const float* ws
    for oy in prange(OH, nogil=True, num_threads=n_threads, schedule="static"):
        for ox in range(OW):
            o = op + (<Py_ssize_t>oy * OW + ox) * C
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


# --- pooling ---------------------------------------------------------------------

def max_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw,
               int sh, int sw, int pt, int pl, int dh, int dw, int n_threads):
    """Max over each window; padding never wins; NaN propagates as in torch.

    x    in   (H, W, C)
    out  out  (OH, OW, C)
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C:
        raise ValueError("max_pool2d: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef int oy, ox, i, j, iy, ix, c
    cdef float* o
    cdef const float* xs
    cdef float v
    for oy in prange(OH, nogil=True, num_threads=n_threads, schedule="static"):
        for ox in range(OW):
            o = op + (<Py_ssize_t>oy * OW + ox) * C
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


def global_avg_pool(const float[:, :, ::1] x, float[::1] out, int n_threads):
    """Mean over H and W per channel, accumulated in double in pixel order.

    x    in   (H, W, C)
    out  out  (C,)
    """
    cdef int C = x.shape[2]
    cdef Py_ssize_t P = <Py_ssize_t>x.shape[0] * x.shape[1]
    if out.shape[0] != C:
        raise ValueError("global_avg_pool: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef int CB = 64
    cdef int nblk = (C + CB - 1) // CB
    cdef int blk, c, c0, c1
    cdef Py_ssize_t p
    cdef double* acc
    n_threads = max(1, n_threads)
    cdef double[:, ::1] accs = np.empty((n_threads, CB), np.float64)
    with nogil, parallel(num_threads=n_threads):
        for blk in prange(nblk, schedule="static"):
            acc = &accs[threadid(), 0]
            c0 = blk * CB
            c1 = min(C, c0 + CB)
            for c in range(c1 - c0):
                acc[c] = 0.0
            for p in range(P):
                for c in range(c1 - c0):
                    acc[c] = acc[c] + xp[p * C + c0 + c]
            for c in range(c1 - c0):
                out[c0 + c] = <float>(acc[c] / P)


# --- elementwise -----------------------------------------------------------------

DEF CHUNK = 16384


def add(const float[::1] a, const float[::1] b, float[::1] out, int n_threads):
    """out = a + b, flat arrays of equal length."""
    cdef Py_ssize_t n = out.shape[0]
    if a.shape[0] != n or b.shape[0] != n:
        raise ValueError("add: inconsistent shapes")
    cdef Py_ssize_t k, i, i1
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, num_threads=n_threads,
                    schedule="static"):
        i1 = min(n, (k + 1) * CHUNK)
        for i in range(k * CHUNK, i1):
            out[i] = a[i] + b[i]


def activation(const float[::1] x, float[::1] out, int act, float lo, float hi,
               int n_threads):
    """out = act(x): relu or clamp(lo, hi) (ACT_* codes), flat arrays."""
    cdef Py_ssize_t n = out.shape[0]
    if x.shape[0] != n:
        raise ValueError("activation: inconsistent shapes")
    cdef Py_ssize_t k, i, i1
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, num_threads=n_threads,
                    schedule="static"):
        i1 = min(n, (k + 1) * CHUNK)
        for i in range(k * CHUNK, i1):
            out[i] = _act(x[i], act, lo, hi)


def affine(const float[:, ::1] x, const float[::1] scale, const float[::1] shift,
           float[:, ::1] out, int n_threads):
    """out[p, c] = x[p, c] * scale[c] + shift[c]  (standalone batch norm).

    x    in   (P, C) positions by channels
    out  out  (P, C)
    """
    cdef Py_ssize_t P = x.shape[0]
    cdef int C = x.shape[1]
    if out.shape[0] != P or out.shape[1] != C or scale.shape[0] != C or shift.shape[0] != C:
        raise ValueError("affine: inconsistent shapes")
    cdef Py_ssize_t p
    cdef int c
    for p in prange(P, nogil=True, num_threads=n_threads, schedule="static"):
        for c in range(C):
            out[p, c] = x[p, c] * scale[c] + shift[c]


def concat_channels(list xs, float[:, ::1] out, int n_threads):
    """Concatenate (P, C_k) arrays along channels into out (P, sum C_k)."""
    cdef int n_in = len(xs)
    cdef Py_ssize_t P = out.shape[0]
    cdef int Ctot = out.shape[1]
    cdef const float[:, ::1] v
    cdef float** ptrs = <float**>malloc(n_in * sizeof(float*))
    cdef int* chans = <int*>malloc(n_in * sizeof(int))
    cdef int k, off
    cdef Py_ssize_t p
    try:
        off = 0
        for k in range(n_in):
            v = xs[k]
            if v.shape[0] != P:
                raise ValueError("concat_channels: inconsistent shapes")
            ptrs[k] = <float*>&v[0, 0]
            chans[k] = v.shape[1]
            off += chans[k]
        if off != Ctot:
            raise ValueError("concat_channels: channel counts do not add up")
        for p in prange(P, nogil=True, num_threads=n_threads, schedule="static"):
            off = 0
            for k in range(n_in):
                memcpy(&out[p, off], ptrs[k] + p * chans[k], chans[k] * sizeof(float))
                off = off + chans[k]
    finally:
        free(ptrs)
        free(chans)


# --- resizing --------------------------------------------------------------------

def gather_pixels(const float[:, :, ::1] x, const int[::1] iy, const int[::1] ix,
                  float[:, :, ::1] out, int n_threads):
    """out[oy, ox, :] = x[iy[oy], ix[ox], :]  (nearest upsampling).

    iy, ix in: source row and column per output row and column, inside x.
    """
    cdef int W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or iy.shape[0] != OH or ix.shape[0] != OW:
        raise ValueError("gather_pixels: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef int oy, ox
    for oy in prange(OH, nogil=True, num_threads=n_threads, schedule="static"):
        for ox in range(OW):
            memcpy(&out[oy, ox, 0], xp + (<Py_ssize_t>iy[oy] * W + ix[ox]) * C,
                   C * sizeof(float))


def bilinear(const float[:, :, ::1] x, const int[:, ::1] ys, const float[:, ::1] wy,
             const int[:, ::1] xs, const float[:, ::1] wx, float[:, :, ::1] out,
             int n_threads):
    """Bilinear resize with precomputed taps (see plan.bilinear_taps).

    ys, wy  in  (OH, 2): source rows and their weights per output row
    xs, wx  in  (OW, 2): source columns and their weights per output column
    out = wy0 * (wx0 * x00 + wx1 * x01) + wy1 * (wx0 * x10 + wx1 * x11), torch's order.
    """
    cdef int W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or ys.shape[0] != OH or xs.shape[0] != OW:
        raise ValueError("bilinear: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef int oy, ox, c
    cdef const float* r0
    cdef const float* r1
    cdef float h0, h1, w0, w1
    cdef float* o
    for oy in prange(OH, nogil=True, num_threads=n_threads, schedule="static"):
        r0 = xp + <Py_ssize_t>ys[oy, 0] * W * C
        r1 = xp + <Py_ssize_t>ys[oy, 1] * W * C
        h0 = wy[oy, 0]
        h1 = wy[oy, 1]
        for ox in range(OW):
            w0 = wx[ox, 0]
            w1 = wx[ox, 1]
            o = &out[oy, ox, 0]
            for c in range(C):
                o[c] = (h0 * (w0 * r0[xs[ox, 0] * C + c] + w1 * r0[xs[ox, 1] * C + c])
                        + h1 * (w0 * r1[xs[ox, 0] * C + c] + w1 * r1[xs[ox, 1] * C + c]))


# --- vectors ---------------------------------------------------------------------

def linear(const float[::1] x, const float[:, ::1] w, const float[::1] bias, float[::1] out):
    """out = w @ x + bias.

    x in (F,); w in (O, F) torch layout; out out (O,).
    """
    cdef int F = x.shape[0], O = w.shape[0]
    if w.shape[1] != F or bias.shape[0] != O or out.shape[0] != O:
        raise ValueError("linear: inconsistent shapes")
    cdef int one_i = 1, o
    cdef float one = 1.0, zero = 0.0
    cdef char* tt = b"T"
    cdef char* tn = b"N"
    with nogil:
        # (O, F) row-major is (F, O) column-major: y = op(A)^T x with trans 'T'
        sgemm(tt, tn, &O, &one_i, &F, &one, <float*>&w[0, 0], &F, <float*>&x[0], &F,
              &zero, &out[0], &O)
        for o in range(O):
            out[o] = out[o] + bias[o]
