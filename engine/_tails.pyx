# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of the layout-breaking tail ops and the spatial ops torch spells with permute.

- ``pixel_shuffle`` / ``pixel_unshuffle``: copies between one image's (H, W, C) array
  and another's, at every output pixel or at the pixels ``pix`` (the incremental
  path). A copy is exact, so both paths give the same bits.
- ``layer_norm``: normalisation over the last axis of a (P, C) array (the channels at
  each position of an image), per position, at every position or at ``pix``; the
  per-position code is one function for both paths.
- ``bmm``: batched matrix product with our own gemm (engine/gemm.h), no BLAS thread
  pool. Work is split into (batch, row tile) pieces whose bounds depend only on the
  shapes; gemm.h computes every element with the same fma chain in increasing k in any
  piece, so results do not depend on ``n_threads``.

permute, expand and reshape are copies done in numpy (engine/ops.py): they run whole,
at the end of a network.
"""

cimport cython
from cython.parallel cimport prange

include "_pool_api.pxi"
from libc.math cimport sqrt

cdef extern from "gemm.h" nogil:
    size_t fd_packed_size(int K, int N)
    void fd_pack_b(const float *B, int K, int N, int ldb, float *packed)
    void fd_gemm_bias_act(int M, int N, int K, const float *A, int lda, const float *Bp,
                          const float *bias, float *C, int ldc, int act, float lo, float hi)

# Rows of one bmm piece: a speed choice only (each element is computed alike in any).
DEF BMM_ROWS = 48


# --- pixel shuffle ------------------------------------------------------------------

cdef inline void _shuffle_pixel(const float* x, int W, int C, float* out, int OW, int OC,
                                int r, int oy, int ox) noexcept nogil:
    # out[oy, ox, c] = x[oy // r, ox // r, c * r * r + (oy % r) * r + ox % r]
    cdef const float* src = x + (<Py_ssize_t>(oy // r) * W + ox // r) * C \
        + (oy % r) * r + ox % r
    cdef float* dst = out + (<Py_ssize_t>oy * OW + ox) * OC
    cdef int c, step = r * r
    for c in range(OC):
        dst[c] = src[c * step]


def pixel_shuffle(const float[:, :, ::1] x, float[:, :, ::1] out, int r, int n_threads,
                  const int[::1] pix=None):
    """Depth to space: x in (H, W, C * r * r), out out (H * r, W * r, C).

    Computes every output pixel, or only the flat positions ``pix`` (oy * OW + ox,
    int32); the others keep their values.
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], OC = out.shape[2]
    if r < 1 or OH != H * r or OW != W * r or OC * r * r != C:
        raise ValueError("pixel_shuffle: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef int oy, ox, k, p, P
    if pix is None:
        for oy in prange(OH, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
            for ox in range(OW):
                _shuffle_pixel(xp, W, C, op, OW, OC, r, oy, ox)
        return
    P = pix.shape[0]
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p = pix[k]
        _shuffle_pixel(xp, W, C, op, OW, OC, r, p // OW, p % OW)


cdef inline void _unshuffle_pixel(const float* x, int W, int C, float* out, int OW, int OC,
                                  int r, int oy, int ox) noexcept nogil:
    # out[oy, ox, c * r * r + i * r + j] = x[oy * r + i, ox * r + j, c]
    cdef float* dst = out + (<Py_ssize_t>oy * OW + ox) * OC
    cdef const float* src
    cdef int c, i, j, step = r * r
    for i in range(r):
        for j in range(r):
            src = x + (<Py_ssize_t>(oy * r + i) * W + ox * r + j) * C
            for c in range(C):
                dst[c * step + i * r + j] = src[c]


def pixel_unshuffle(const float[:, :, ::1] x, float[:, :, ::1] out, int r, int n_threads,
                    const int[::1] pix=None):
    """Space to depth: x in (H * r, W * r, C), out out (H, W, C * r * r); ``pix`` as
    for pixel_shuffle."""
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], OC = out.shape[2]
    if r < 1 or H != OH * r or W != OW * r or OC != C * r * r:
        raise ValueError("pixel_unshuffle: inconsistent shapes")
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef int oy, ox, k, p, P
    if pix is None:
        for oy in prange(OH, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
            for ox in range(OW):
                _unshuffle_pixel(xp, W, C, op, OW, OC, r, oy, ox)
        return
    P = pix.shape[0]
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p = pix[k]
        _unshuffle_pixel(xp, W, C, op, OW, OC, r, p // OW, p % OW)


# --- layer norm ---------------------------------------------------------------------

cdef inline void _norm_row(const float* x, const float* w, const float* b, float* y, int C,
                           double eps) noexcept nogil:
    # mean and biased variance in float64, two passes; NaN and inf propagate as in torch
    cdef double s = 0, v = 0, d, mean, rstd
    cdef int c
    for c in range(C):
        s = s + x[c]
    mean = s / C
    for c in range(C):
        d = x[c] - mean
        v = v + d * d
    rstd = 1.0 / sqrt(v / C + eps)
    for c in range(C):
        y[c] = <float>((x[c] - mean) * rstd * w[c] + b[c])


def layer_norm(const float[:, ::1] x, const float[::1] weight, const float[::1] bias,
               float[:, ::1] out, double eps, int n_threads, const int[::1] pix=None):
    """out[p] = (x[p] - mean(x[p])) / sqrt(var(x[p]) + eps) * weight + bias.

    x in (P, C) (for an image: its (H * W, C) positions), weight and bias in (C,), out
    out (P, C); rows ``pix`` only when given (the others keep their values).
    """
    cdef int P = x.shape[0], C = x.shape[1]
    if out.shape[0] != P or out.shape[1] != C or weight.shape[0] != C \
            or bias.shape[0] != C or C < 1:
        raise ValueError("layer_norm: inconsistent shapes")
    cdef Py_ssize_t n = P if pix is None else pix.shape[0]
    cdef const int* pp = NULL if pix is None or n == 0 else &pix[0]
    cdef Py_ssize_t k, p
    for k in prange(n, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p = pp[k] if pp != NULL else k
        _norm_row(&x[p, 0], &weight[0], &bias[0], &out[p, 0], C, eps)


# --- batched matrix product ---------------------------------------------------------

def bmm_packed_size(int K, int N):
    """Floats one batch's packed (K, N) matrix takes (gemm.h fd_packed_size)."""
    return fd_packed_size(K, N)


def bmm(const float[:, :, ::1] a, const float[:, :, ::1] b, float[:, ::1] packed,
        const float[::1] zeros, float[:, :, ::1] out, int n_threads):
    """out[i] = a[i] @ b[i] for every batch i, with the gemm kernel.

    a in (B, M, K), b in (B, K, N); packed scratch (B, >= bmm_packed_size(K, N)),
    each row starting on a 64-byte boundary; zeros in (N,), all 0 (the gemm's bias);
    out out (B, M, N).
    """
    cdef int B = a.shape[0], M = a.shape[1], K = a.shape[2], N = b.shape[2]
    if b.shape[0] != B or b.shape[1] != K or out.shape[0] != B or out.shape[1] != M \
            or out.shape[2] != N or packed.shape[0] != B or zeros.shape[0] != N \
            or <size_t>packed.shape[1] < fd_packed_size(K, N) or K < 1:
        raise ValueError("bmm: inconsistent shapes")
    cdef int i, t, m0
    cdef int n_rt = (M + BMM_ROWS - 1) // BMM_ROWS
    for i in prange(B, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        fd_pack_b(&b[i, 0, 0], K, N, N, &packed[i, 0])
    for t in prange(B * n_rt, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        i = t // n_rt
        m0 = (t % n_rt) * BMM_ROWS
        fd_gemm_bias_act(min(BMM_ROWS, M - m0), N, K, &a[i, m0, 0], K, &packed[i, 0],
                         &zeros[0], &out[i, m0, 0], N, 0, 0, 0)
