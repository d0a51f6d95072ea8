# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compute kernels: one public ``def`` per op, each releasing the GIL.

Layout: one image at a time in NHWC, as a C-contiguous (H, W, C) float32 array,
vectors as (F,). Every kernel writes its whole output and reads only its inputs,
so results never depend on the number of threads: work is split into pieces whose
boundaries depend only on the shapes (and the tile size the caller passes), never
on ``n_threads``, and each output element is computed by exactly one piece.

Convolution and linear use our own sgemm microkernel (engine/gemm.h) on tiles of output
pixels, with bias and activation fused in the kernel's store; the rows of A come
straight from the input where all taps are inside it (1x1 convolutions, interior
pixels), through an im2col buffer elsewhere. Each output element is computed with the
same arithmetic in the same order whatever the tile or path, so a layer computed on a
subset of rows (the incremental path) is bit-identical to the dense result.
"""

cimport cython
import numpy as np
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY
from libc.string cimport memcpy, memset

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

include "_act.pxi"
include "_pool_api.pxi"


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(fd_openmp_enabled())


def max_threads():
    """OpenMP's default team size (all cores unless OMP_NUM_THREADS says otherwise)."""
    return fd_max_threads()


# --- convolution -----------------------------------------------------------------

cdef extern from "rows.h" nogil:
    void fd_max_row(const float *x, float *o, int n)

cdef extern from "gemm.h" nogil:
    enum: FD_NR
    size_t fd_packed_size(int K, int N)
    void fd_pack_b(const float *B, int K, int N, int ldb, float *packed)
    void fd_gemm_seg(int M, int N, int nseg, const float *const *seg, int seglen, int lda,
                     const float *Bp, int n0, int n1, const float *bias, float *C, int ldc,
                     int act, float lo, float hi)
    void fd_gemm_bias_act_cols(int M, int N, int K, const float *A, int lda,
                               const float *Bp, int n0, int n1, const float *bias,
                               float *C, int ldc, int act, float lo, float hi)
    void fd_gemm_bias_act(int M, int N, int K, const float *A, int lda, const float *Bp,
                          const float *bias, float *C, int ldc, int act, float lo, float hi)
    const char *fd_gemm_isa_name()
    const char *fd_gemm_force_isa(int level)

# Convolutions read the rows of A straight from the input ("implicit" im2col) for the
# output pixels whose taps are all inside the image, when a run of them in one output
# row is at least this long; the others go through an im2col buffer. Either way each
# element gets the same arithmetic (gemm.h), so this is a speed choice only.
DEF IMPLICIT_MAX_KH = 64
# positions per item of the per-position kernels (pooling, elementwise, resizing): the
# pool hands items to whichever thread is free; each position is computed alike in any
# item
DEF PIECE = 512
cdef int _implicit_min_run = 24


def set_implicit_min_run(int n):
    """Shortest run of interior output pixels read without im2col (a speed knob: results
    are the same bits either way); returns the previous value. For tests and tuning."""
    global _implicit_min_run
    old = _implicit_min_run
    _implicit_min_run = max(1, n)
    return old


def gemm_isa():
    """Instruction set of the gemm kernel in use: "avx512", "avx2", "neon" or "generic"
    (picked at run time on x86-64 builds with GCC)."""
    return fd_gemm_isa_name().decode()


def gemm_force_isa(int level):
    """Tests only: use at most ISA level ``level`` (0 the build's own target, 1 AVX2,
    2 AVX-512, -1 the best the CPU has); returns the kernel's name. Not while kernels run."""
    return fd_gemm_force_isa(level).decode()


def gemm_panel_width():
    """Columns per packed-B panel (FD_NR): column splits must fall on multiples of it."""
    return FD_NR


def gemm_packed_size(int K, int N):
    """Floats that fd_pack_b writes for a K x N matrix."""
    return fd_packed_size(K, N)


def gemm_pack(const float[:, ::1] b, float[::1] out):
    """Pack a row-major (K, N) matrix for fd_gemm_bias_act into ``out``
    (gemm_packed_size(K, N) floats; see engine/gemm.h for the layout)."""
    cdef int K = b.shape[0], N = b.shape[1]
    if K < 1 or N < 1 or <size_t>out.shape[0] != fd_packed_size(K, N):
        raise ValueError("gemm_pack: inconsistent shapes")
    with nogil:
        fd_pack_b(&b[0, 0], K, N, N, &out[0])


def gemm(const float[:, :] a, const float[::1] b_packed, int N, const float[::1] bias,
         float[:, :] c, int act=ACT_NONE, float lo=0, float hi=0, int n0=0, int n1=-1):
    """c[:, n0:n1] = act(a @ B + bias)[:, n0:n1] with fd_gemm_bias_act_cols, one thread.

    a in (M, K), rows contiguous (any row stride); b_packed: gemm_pack of B (K, N);
    bias in (N,); c out (M, N), rows contiguous; n0 a multiple of gemm_panel_width().
    The kernel as the incremental path calls it, for tests and tools.
    """
    cdef int M = a.shape[0], K = a.shape[1]
    if n1 < 0:
        n1 = N
    if (K < 1 or N < 1 or <size_t>b_packed.shape[0] != fd_packed_size(K, N)
            or bias.shape[0] != N or c.shape[0] != M or c.shape[1] != N
            or n0 < 0 or n0 % FD_NR or n1 > N or (M and (a.strides[1] != 4
                                                         or c.strides[1] != 4))):
        raise ValueError("gemm: inconsistent shapes")
    if M == 0:
        return
    cdef int lda = a.strides[0] // 4, ldc = c.strides[0] // 4
    with nogil:
        fd_gemm_bias_act_cols(M, N, K, &a[0, 0], lda, &b_packed[0], n0, n1, &bias[0],
                              &c[0, 0], ldc, act, lo, hi)


cdef void _im2col(const float* x, int H, int W, int Cin, int cin0, int cin_g,
                  int OW, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                  int m0, int mr, const int* pix, float* buf) noexcept nogil:
    """im2col rows of one group, (kh, kw, cin_g) per row: of output pixels m0..m0+mr, or
    of pix[0..mr) when pix is not NULL."""
    cdef int r, i, j, c, m, oy, ox, iy, ix, ix0
    cdef int K = kh * kw * cin_g
    cdef int run = kw * cin_g
    cdef bint rows_contiguous = dw == 1 and cin_g == Cin
    cdef float* dst
    cdef const float* src
    for r in range(mr):
        m = pix[r] if pix != NULL else m0 + r
        oy = m // OW
        ox = m % OW
        dst = buf + <Py_ssize_t>r * K
        ix0 = ox * sw - pl
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= H:
                memset(dst, 0, run * sizeof(float))
                dst += run
                continue
            src = x + (<Py_ssize_t>iy * W) * Cin + cin0
            if rows_contiguous and ix0 >= 0 and ix0 + kw <= W:
                # the kw taps of this row are one run of kw * Cin floats
                memcpy(dst, src + <Py_ssize_t>ix0 * Cin, run * sizeof(float))
                dst += run
                continue
            for j in range(kw):
                ix = ix0 + j * dw
                if ix < 0 or ix >= W:
                    for c in range(cin_g):
                        dst[c] = 0
                elif cin_g <= 8:
                    for c in range(cin_g):
                        dst[c] = src[<Py_ssize_t>ix * Cin + c]
                else:
                    memcpy(dst, src + <Py_ssize_t>ix * Cin, cin_g * sizeof(float))
                dst += cin_g


cdef inline void _interior(int n, int on, int k, int s, int p, int d, int* lo,
                           int* hi) noexcept nogil:
    """The output indices [lo, hi) along one axis whose k taps all fall inside the input
    (a run of them reads its rows straight from the input)."""
    lo[0] = (p + s - 1) // s
    hi[0] = min(on, (n - 1 - (k - 1) * d + p) // s + 1) if n - 1 - (k - 1) * d + p >= 0 else 0


cdef void _conv_tile_implicit(const float* x, int H, int W, int Cin, int OH, int OW,
                              int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                              int oyi_lo, int oyi_hi, int oxi_lo, int oxi_hi,
                              const float* wp, const float* bp, int N, int n0, int n1,
                              float* out, int m0, int mr, int act, float lo, float hi,
                              float* buf, float* tmp, int* pix,
                              int min_run) noexcept nogil:
    """Output pixels m0..m0+mr of a conv with one group and dw == 1: runs of interior
    pixels (all taps inside x) read their rows straight from x, kh segments of kw * Cin
    floats (row stride sw * Cin); the others are gathered through im2col into buf,
    computed into tmp and copied to out."""
    cdef const float* segs[IMPLICIT_MAX_KH]
    cdef int K = kh * kw * Cin
    cdef int nb = 0, p = m0, end = m0 + mr
    cdef int oy, rs, re, a, b, q, i, r
    while p < end:
        oy = p // OW
        rs = oy * OW
        re = min(end, rs + OW)
        a = re
        b = re
        if oyi_lo <= oy < oyi_hi:
            a = max(p, rs + oxi_lo)
            b = min(re, rs + oxi_hi)
            if b - a < min_run:
                a = re
                b = re
        for q in range(p, a):
            pix[nb] = q
            nb = nb + 1
        if b > a:
            for i in range(kh):
                segs[i] = x + ((<Py_ssize_t>(oy * sh - pt + i * dh) * W)
                               + (a - rs) * sw - pl) * Cin
            fd_gemm_seg(b - a, N, kh, segs, kw * Cin, sw * Cin, wp, n0, n1, bp,
                        out + <Py_ssize_t>a * N, N, act, lo, hi)
            for q in range(b, re):
                pix[nb] = q
                nb = nb + 1
        p = re
    if nb == 0:
        return
    _im2col(x, H, W, Cin, 0, Cin, OW, kh, kw, sh, sw, pt, pl, dh, 1, 0, nb, pix, buf)
    fd_gemm_bias_act_cols(nb, N, K, buf, K, wp, n0, n1, bp, tmp, N, act, lo, hi)
    for r in range(nb):
        memcpy(out + <Py_ssize_t>pix[r] * N + n0, tmp + <Py_ssize_t>r * N + n0,
               (n1 - n0) * sizeof(float))


def conv2d(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
           float[:, :, ::1] out, int kh, int kw, int sh, int sw, int pt, int pl,
           int dh, int dw, int act, float act_min, float act_max,
           int m_tile, int n_split, int n_threads):
    """Convolution of one image: fd_gemm per tile of output pixels.

    x        in   (H, W, Cin)
    w        in   (groups, gemm_packed_size(KH*KW*Cin/groups, Cout/groups)), from
                  pack_conv_weight_gemm: each group's (KH*KW*Cin/g, Cout/g) matrix packed
    bias     in   (Cout,)
    out      out  (OH, OW, Cout), every element written
    m_tile   output pixels per tile (the im2col buffer is m_tile x K floats)
    n_split  column blocks of Cout/groups per tile (parallelism when pixels are few);
             blocks are whole packed panels
    The rows of A come straight from x for a 1x1 stride-1 unpadded convolution
    (lda = Cin), and for runs of interior output pixels of a one-group convolution
    (kh segments of kw * Cin floats); through an im2col buffer otherwise. Bias and
    activation are applied in the kernel's store. Each output element is computed by
    the same arithmetic whatever the path and the tiling (see gemm.h).
    """
    cdef int H = x.shape[0], W = x.shape[1], Cin = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], Cout = out.shape[2]
    cdef int G = w.shape[0]
    if G < 1 or Cin % G or Cout % G:
        raise ValueError("conv2d: inconsistent shapes")
    cdef int cin_g = Cin // G
    cdef int K = kh * kw * cin_g, N = Cout // G
    if (K < 1 or N < 1 or <size_t>w.shape[1] != fd_packed_size(K, N)
            or bias.shape[0] != Cout):
        raise ValueError("conv2d: inconsistent shapes")
    cdef int M = OH * OW
    if M == 0:
        return
    cdef int mt = max(1, min(m_tile, M))
    cdef int n_mt = (M + mt - 1) // mt
    cdef int n_panels = (N + FD_NR - 1) // FD_NR
    cdef int ns = max(1, min(n_split, n_panels))
    cdef int nb = ((n_panels + ns - 1) // ns) * FD_NR
    ns = (N + nb - 1) // nb
    cdef bint direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0
                        and pl == 0 and OH == H and OW == W)
    # interior output pixels: every tap inside x (ranges [lo, hi) per axis)
    cdef int oyi_lo, oyi_hi, oxi_lo, oxi_hi
    _interior(H, OH, kh, sh, pt, dh, &oyi_lo, &oyi_hi)
    _interior(W, OW, kw, sw, pl, dw, &oxi_lo, &oxi_hi)
    cdef bint implicit = (not direct and G == 1 and dw == 1 and kh <= IMPLICIT_MAX_KH
                          and oyi_hi > oyi_lo and oxi_hi - oxi_lo >= _implicit_min_run)
    cdef int min_run = _implicit_min_run
    n_threads = max(1, n_threads)
    # per-thread buffers, allocated here so that failure is a MemoryError
    cdef float[:, ::1] bufs = np.empty((n_threads, 1 if direct else <Py_ssize_t>mt * K),
                                       np.float32)
    cdef float[:, ::1] tmps = np.empty((n_threads, <Py_ssize_t>mt * N if implicit else 1),
                                       np.float32)
    cdef int[:, ::1] pixs = np.empty((n_threads, mt if implicit else 1), np.intc)
    cdef ConvJob j
    j.x = &x[0, 0, 0]
    j.H, j.W, j.Cin, j.OH, j.OW, j.G, j.cin_g, j.K, j.N, j.Cout = H, W, Cin, OH, OW, G, cin_g, K, N, Cout
    j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw = kh, kw, sh, sw, pt, pl, dh, dw
    j.oyi_lo, j.oyi_hi, j.oxi_lo, j.oxi_hi = oyi_lo, oyi_hi, oxi_lo, oxi_hi
    j.w, j.wstride, j.bias, j.out = &w[0, 0], w.shape[1], &bias[0], &out[0, 0, 0]
    j.act, j.lo, j.hi = act, act_min, act_max
    j.M, j.mt, j.ns, j.nb, j.direct, j.implicit, j.min_run = M, mt, ns, nb, direct, implicit, min_run
    j.bufs, j.buf_stride = &bufs[0, 0], bufs.shape[1]
    j.tmps, j.tmp_stride = &tmps[0, 0], tmps.shape[1]
    j.pixs, j.pix_stride = &pixs[0, 0], pixs.shape[1]
    with nogil:
        pool_run(n_threads, <Py_ssize_t>n_mt * ns, _conv_item, &j)


ctypedef struct ConvJob:
    const float* x
    int H, W, Cin, OH, OW, G, cin_g, K, N, Cout
    int kh, kw, sh, sw, pt, pl, dh, dw
    int oyi_lo, oyi_hi, oxi_lo, oxi_hi
    const float* w
    Py_ssize_t wstride
    const float* bias
    float* out
    int act
    float lo, hi
    int M, mt, ns, nb, direct, implicit, min_run
    float* bufs
    Py_ssize_t buf_stride
    float* tmps
    Py_ssize_t tmp_stride
    int* pixs
    Py_ssize_t pix_stride
    const int* pix          # conv2d_masked: the dirty pixels
    int P


cdef void _conv_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """Tile item // ns of output pixels, column block item % ns, of conv2d."""
    cdef ConvJob* j = <ConvJob*>ctx
    cdef int m0 = <int>(item // j.ns) * j.mt
    cdef int split = <int>(item % j.ns)
    cdef int mr = min(j.mt, j.M - m0)
    cdef int n0 = split * j.nb
    cdef int n1 = min(j.N, n0 + j.nb)
    cdef int g, lda
    cdef const float* a
    cdef float* buf = j.bufs + slot * j.buf_stride
    if j.implicit:
        _conv_tile_implicit(j.x, j.H, j.W, j.Cin, j.OH, j.OW, j.kh, j.kw, j.sh, j.sw, j.pt,
                            j.pl, j.dh, j.oyi_lo, j.oyi_hi, j.oxi_lo, j.oxi_hi, j.w, j.bias,
                            j.N, n0, n1, j.out, m0, mr, j.act, j.lo, j.hi, buf,
                            j.tmps + slot * j.tmp_stride, j.pixs + slot * j.pix_stride,
                            j.min_run)
        return
    for g in range(j.G):
        if j.direct:
            a = j.x + <Py_ssize_t>m0 * j.Cin + g * j.cin_g
            lda = j.Cin
        else:
            _im2col(j.x, j.H, j.W, j.Cin, g * j.cin_g, j.cin_g, j.OW, j.kh, j.kw, j.sh, j.sw,
                    j.pt, j.pl, j.dh, j.dw, m0, mr, NULL, buf)
            a = buf
            lda = j.K
        fd_gemm_bias_act_cols(mr, j.N, j.K, a, lda, j.w + g * j.wstride, n0, n1,
                              j.bias + g * j.N, j.out + <Py_ssize_t>m0 * j.Cout + g * j.N,
                              j.Cout, j.act, j.lo, j.hi)


# --- one kernel per op for both paths ------------------------------------------------
#
# Each kernel below computes the output positions listed in ``pix`` (flat indices
# oy * OW + ox, ascending; the incremental path's dirty positions) and leaves the
# others alone, or every position when ``pix`` is None (the dense path). The code per
# position is the same either way, so the two paths give the same bits.

cdef void _conv_tile_gathered(const float* x, int H, int W, int Cin, int G, int OW,
                              int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                              int dw, const float* w, Py_ssize_t wstride, const float* bias,
                              int K, int N, const int* pix, int mr, float* cols,
                              float* tile, float* out, int act, float lo,
                              float hi) noexcept nogil:
    """Output pixels pix[0..mr): gathered im2col rows, gemm into ``tile``, rows scattered."""
    cdef int g, r
    cdef int cin_g = Cin // G, Cout = G * N
    for g in range(G):
        _im2col(x, H, W, Cin, g * cin_g, cin_g, OW, kh, kw, sh, sw, pt, pl, dh, dw, 0, mr,
                pix, cols)
        fd_gemm_bias_act_cols(mr, N, K, cols, K, w + g * wstride, 0, N, bias + g * N,
                              tile + g * N, Cout, act, lo, hi)
    for r in range(mr):
        memcpy(out + <Py_ssize_t>pix[r] * Cout, tile + <Py_ssize_t>r * Cout,
               Cout * sizeof(float))


cdef void _conv_tile_runs(const float* x, int H, int W, int Cin, int OW,
                          int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                          int oyi_lo, int oyi_hi, int oxi_lo, int oxi_hi,
                          const float* wp, const float* bp, int N, float* out,
                          const int* pix, int mr, int act, float lo, float hi,
                          float* buf, float* tmp, int* rest, int min_run) noexcept nogil:
    """Output pixels pix[0..mr) (ascending) of a conv with one group and dw == 1: runs of
    consecutive interior pixels of one output row read their rows straight from x and
    write straight to out, as conv2d's dense runs do; the others are gathered."""
    cdef const float* segs[IMPLICIT_MAX_KH]
    cdef int K = kh * kw * Cin
    cdef int nb = 0, r = 0, e, q, oy, ox, ox_end, a, b, i, j
    while r < mr:
        q = pix[r]
        oy = q // OW
        ox = q - oy * OW
        e = r + 1
        while e < mr and pix[e] == pix[e - 1] + 1 and pix[e] - oy * OW < OW:
            e += 1
        ox_end = ox + (e - r)
        a = ox_end
        b = ox_end
        if oyi_lo <= oy < oyi_hi:
            a = max(ox, oxi_lo)
            b = min(ox_end, oxi_hi)
            if b - a < min_run:
                a = ox_end
                b = ox_end
        for j in range(ox, a):
            rest[nb] = oy * OW + j
            nb += 1
        if b > a:
            for i in range(kh):
                segs[i] = x + ((<Py_ssize_t>(oy * sh - pt + i * dh) * W) + a * sw - pl) * Cin
            fd_gemm_seg(b - a, N, kh, segs, kw * Cin, sw * Cin, wp, 0, N, bp,
                        out + (<Py_ssize_t>oy * OW + a) * N, N, act, lo, hi)
            for j in range(b, ox_end):
                rest[nb] = oy * OW + j
                nb += 1
        r = e
    if nb == 0:
        return
    _im2col(x, H, W, Cin, 0, Cin, OW, kh, kw, sh, sw, pt, pl, dh, 1, 0, nb, rest, buf)
    fd_gemm_bias_act_cols(nb, N, K, buf, K, wp, 0, N, bp, tmp, N, act, lo, hi)
    for r in range(nb):
        memcpy(out + <Py_ssize_t>rest[r] * N, tmp + <Py_ssize_t>r * N, N * sizeof(float))


def conv2d_masked(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                  float[:, :, ::1] out, const int[::1] pix, int kh, int kw, int sh, int sw,
                  int pt, int pl, int dh, int dw, int act, float act_min, float act_max,
                  int m_tile, int n_threads):
    """Convolution at the output pixels ``pix`` only (the incremental path).

    Same inputs as conv2d; ``out`` is the node's cache, updated at ``pix``. Tiles of
    m_tile dirty pixels: runs of consecutive interior pixels in an output row (a block
    detector's changes come as such runs) read their rows from x and write to out
    directly, as conv2d does; the other pixels gather their im2col rows, one gemm per
    tile and group with bias and activation in its store, and scatter the rows. gemm.h
    gives every element the same bits whatever rows it is computed with, so this equals
    conv2d there.
    """
    cdef int H = x.shape[0], W = x.shape[1], Cin = x.shape[2]
    cdef int OW = out.shape[1], Cout = out.shape[2]
    cdef int G = w.shape[0]
    if G < 1 or Cin % G or Cout % G:
        raise ValueError("conv2d_masked: inconsistent shapes")
    cdef int K = kh * kw * (Cin // G), N = Cout // G
    if K < 1 or <size_t>w.shape[1] != fd_packed_size(K, N) or bias.shape[0] != Cout:
        raise ValueError("conv2d_masked: inconsistent shapes")
    cdef int P = pix.shape[0]
    if P == 0:
        return
    cdef int mt = max(1, min(m_tile, P))
    cdef int n_mt = (P + mt - 1) // mt
    n_threads = max(1, n_threads)
    cdef int OH = out.shape[0]
    cdef int oyi_lo, oyi_hi, oxi_lo, oxi_hi
    _interior(H, OH, kh, sh, pt, dh, &oyi_lo, &oyi_hi)
    _interior(W, OW, kw, sw, pl, dw, &oxi_lo, &oxi_hi)
    cdef bint runs = (G == 1 and dw == 1 and kh <= IMPLICIT_MAX_KH and oyi_hi > oyi_lo
                      and oxi_hi - oxi_lo >= _implicit_min_run)
    cdef int min_run = _implicit_min_run
    cdef float[:, ::1] cols = np.empty((n_threads, <Py_ssize_t>mt * K), np.float32)
    cdef float[:, ::1] tiles = np.empty((n_threads, <Py_ssize_t>mt * Cout), np.float32)
    cdef int[:, ::1] rests = np.empty((n_threads, mt if runs else 1), np.intc)
    cdef ConvJob j
    j.x = &x[0, 0, 0]
    j.H, j.W, j.Cin, j.OW, j.G, j.K, j.N, j.Cout = H, W, Cin, OW, G, K, N, Cout
    j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw = kh, kw, sh, sw, pt, pl, dh, dw
    j.oyi_lo, j.oyi_hi, j.oxi_lo, j.oxi_hi = oyi_lo, oyi_hi, oxi_lo, oxi_hi
    j.w, j.wstride, j.bias, j.out = &w[0, 0], w.shape[1], &bias[0], &out[0, 0, 0]
    j.act, j.lo, j.hi = act, act_min, act_max
    j.mt, j.implicit, j.min_run = mt, runs, min_run
    j.bufs, j.buf_stride = &cols[0, 0], cols.shape[1]
    j.tmps, j.tmp_stride = &tiles[0, 0], tiles.shape[1]
    j.pixs, j.pix_stride = &rests[0, 0], rests.shape[1]
    j.pix, j.P = &pix[0], P
    with nogil:
        pool_run(n_threads, n_mt, _conv_masked_item, &j)


cdef void _conv_masked_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """Tile ``item`` of conv2d_masked's dirty pixels."""
    cdef ConvJob* j = <ConvJob*>ctx
    cdef int m0 = <int>item * j.mt
    cdef int mr = min(j.mt, j.P - m0)
    if j.implicit:
        _conv_tile_runs(j.x, j.H, j.W, j.Cin, j.OW, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh,
                        j.oyi_lo, j.oyi_hi, j.oxi_lo, j.oxi_hi, j.w, j.bias, j.N, j.out,
                        j.pix + m0, mr, j.act, j.lo, j.hi, j.bufs + slot * j.buf_stride,
                        j.tmps + slot * j.tmp_stride, j.pixs + slot * j.pix_stride,
                        j.min_run)
        return
    _conv_tile_gathered(j.x, j.H, j.W, j.Cin, j.G, j.OW, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl,
                        j.dh, j.dw, j.w, j.wstride, j.bias, j.K, j.N, j.pix + m0, mr,
                        j.bufs + slot * j.buf_stride, j.tmps + slot * j.tmp_stride, j.out,
                        j.act, j.lo, j.hi)


cdef extern from "depthwise.h" nogil:
    void fd_dw_span(const float *x, int H, int W, int C, const float *w, const float *bias,
                    float *out, int OW, int oy, int ox0, int ox1, int kh, int kw, int sh,
                    int sw, int pt, int pl, int dh, int dw, int xi_lo, int xi_hi, int act,
                    float lo, float hi)
    void fd_dw_interior(int n, int on, int k, int s, int p, int d, int *lo, int *hi)

# masked depthwise: positions per piece of work (runs of one row are cut at its edges;
# each position is computed alike wherever the cut falls)
DEF DW_PIECE = 256


def depthwise_conv2d(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                     float[:, :, ::1] out, int kh, int kw, int sh, int sw, int pt, int pl,
                     int dh, int dw, int act, float act_min, float act_max, int n_threads,
                     const int[::1] pix=None):
    """Depthwise convolution (groups == Cin == Cout) on spans of output rows (depthwise.h).

    x    in   (H, W, C)
    w    in   (KH*KW, C), from pack_depthwise_weight
    out  out  (OH, OW, C): the positions in pix (ascending; all when None) are written
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or w.shape[0] != kh * kw or w.shape[1] != C or bias.shape[0] != C:
        raise ValueError("depthwise_conv2d: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    if P == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef const float* wp = &w[0, 0]
    cdef const float* bp = &bias[0]
    cdef float* op = &out[0, 0, 0]
    cdef DwJob j
    j.x, j.H, j.W, j.C, j.w, j.b, j.out, j.OW = xp, H, W, C, wp, bp, op, OW
    j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw = kh, kw, sh, sw, pt, pl, dh, dw
    j.act, j.lo, j.hi = act, act_min, act_max
    fd_dw_interior(W, OW, kw, sw, pl, dw, &j.xi_lo, &j.xi_hi)
    j.pix, j.P = pp, P
    with nogil:
        if pp == NULL:
            pool_run(n_threads, OH, _dw_row_item, &j)
        else:
            pool_run(n_threads, (P + DW_PIECE - 1) // DW_PIECE, _dw_piece_item, &j)


ctypedef struct DwJob:
    const float* x
    int H, W, C
    const float* w
    const float* b
    float* out
    int OW, kh, kw, sh, sw, pt, pl, dh, dw, xi_lo, xi_hi, act
    float lo, hi
    const int* pix
    Py_ssize_t P


cdef void _dw_row_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """Output row ``item`` of depthwise_conv2d."""
    cdef DwJob* j = <DwJob*>ctx
    fd_dw_span(j.x, j.H, j.W, j.C, j.w, j.b, j.out, j.OW, <int>item, 0, j.OW, j.kh, j.kw,
               j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, j.xi_lo, j.xi_hi, j.act, j.lo, j.hi)


cdef void _dw_piece_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """Dirty positions [item * DW_PIECE, ...) of depthwise_conv2d, by runs of one row."""
    cdef DwJob* j = <DwJob*>ctx
    cdef Py_ssize_t k = item * DW_PIECE
    cdef Py_ssize_t k1 = min(j.P, k + DW_PIECE)
    cdef int m, oy, e, row_end
    while k < k1:
        m = j.pix[k]
        oy = m // j.OW
        row_end = (oy + 1) * j.OW
        e = m + 1
        k += 1
        while k < k1 and j.pix[k] == e and e < row_end:
            e += 1
            k += 1
        fd_dw_span(j.x, j.H, j.W, j.C, j.w, j.b, j.out, j.OW, oy, m - oy * j.OW,
                   e - oy * j.OW, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, j.xi_lo,
                   j.xi_hi, j.act, j.lo, j.hi)


# --- pooling ---------------------------------------------------------------------

cdef inline void _max_window(const float* xp, int H, int W, int C, float* o, int oy, int ox,
                             int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                             int dw) noexcept nogil:
    cdef int i, j, iy, ix, c
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
            fd_max_row(xp + (<Py_ssize_t>iy * W + ix) * C, o, C)


def max_pool2d(const float[:, :, ::1] x, float[:, :, ::1] out, int kh, int kw,
               int sh, int sw, int pt, int pl, int dh, int dw, int n_threads,
               const int[::1] pix=None):
    """Max over each window; padding never wins; NaN propagates as in torch.

    x    in   (H, W, C)
    out  out  (OH, OW, C): the positions in pix (all when None) are written
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C:
        raise ValueError("max_pool2d: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    if P == 0:
        return
    cdef PosJob j
    j.x, j.out, j.H, j.W, j.C, j.OW = &x[0, 0, 0], &out[0, 0, 0], H, W, C, OW
    j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw = kh, kw, sh, sw, pt, pl, dh, dw
    j.pix, j.P = (<const int*>NULL if pix is None else &pix[0]), P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _max_pool_item, &j)


cdef void _max_pool_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t k, m
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        m = j.pix[k] if j.pix != NULL else k
        _max_window(j.x, j.H, j.W, j.C, j.out + m * j.C, <int>(m // j.OW), <int>(m % j.OW),
                    j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw)


ctypedef struct PosJob:
    # what the per-position kernels need (each uses its own fields)
    const float* x
    float* out
    const float* a          # affine: scale; bilinear: wy
    const float* b          # affine: shift; bilinear: wx
    const int* ia           # gather_pixels: iy; bilinear: ys
    const int* ib           # gather_pixels: ix; bilinear: xs
    const int* pix
    Py_ssize_t P, ldx, ldo
    int H, W, C, OW, kh, kw, sh, sw, pt, pl, dh, dw, act
    float lo, hi
    const Py_ssize_t* ptrs  # concat: inputs
    const int* chans
    int n_in


# global average pool: pieces of the pixels (at least GAP_MIN_PIXELS each)
DEF GAP_PIECES = 16
DEF GAP_MIN_PIXELS = 256


def global_avg_pool(const float[:, :, ::1] x, float[::1] out, int n_threads):
    """Mean over H and W per channel, accumulated in double.

    x    in   (H, W, C)
    out  out  (C,)
    The pixels are cut into GAP_PIECES pieces whose bounds depend on H * W only; each
    piece sums its pixels in order, reading its rows once, front to back; the pieces'
    sums are added in piece order. So the result does not depend on the threads.
    """
    cdef int C = x.shape[2]
    cdef Py_ssize_t P = <Py_ssize_t>x.shape[0] * x.shape[1]
    if out.shape[0] != C:
        raise ValueError("global_avg_pool: inconsistent shapes")
    if C == 0:
        return
    cdef Py_ssize_t per = max(GAP_MIN_PIXELS, (P + GAP_PIECES - 1) // GAP_PIECES)
    cdef Py_ssize_t n = max(1, (P + per - 1) // per)
    cdef double[:, ::1] sums = np.zeros((n, C), np.float64)
    cdef GapJob j
    j.x, j.sums, j.P, j.per, j.C = &x[0, 0, 0], &sums[0, 0], P, per, C
    cdef Py_ssize_t i
    cdef int c
    cdef double t
    with nogil:
        pool_run(n_threads, n, _gap_item, &j)
        for c in range(C):
            t = 0.0
            for i in range(n):
                t = t + sums[i, c]
            out[c] = <float>(t / P)


ctypedef struct GapJob:
    const float* x
    double* sums
    Py_ssize_t P, per
    int C


cdef void _gap_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """sums[item, c] = the sum of x over pixels [item * per, ...) per channel."""
    cdef GapJob* j = <GapJob*>ctx
    cdef double* acc = j.sums + item * j.C
    cdef const float* xp
    cdef Py_ssize_t p
    cdef int c, C = j.C
    for p in range(item * j.per, min(j.P, (item + 1) * j.per)):
        xp = j.x + p * C
        for c in range(C):
            acc[c] = acc[c] + xp[c]


# --- elementwise: (P, C) arrays, positions by channels -----------------------------

def add(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out, int n_threads,
        const int[::1] pix=None):
    """out[p] = a[p] + b[p] for the positions p in pix (all when None)."""
    cdef int C = out.shape[1]
    if a.shape[0] != out.shape[0] or b.shape[0] != out.shape[0] or a.shape[1] != C \
            or b.shape[1] != C:
        raise ValueError("add: inconsistent shapes")
    cdef Py_ssize_t P = ((out.shape[0]) if pix is None else pix.shape[0])
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    cdef Py_ssize_t k, p
    cdef int c
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p = pp[k] if pp != NULL else k
        for c in range(C):
            out[p, c] = a[p, c] + b[p, c]


def activation(const float[:, ::1] x, float[:, ::1] out, int act, float lo, float hi,
               int n_threads, const int[::1] pix=None):
    """out[p] = act(x[p]) (ACT_* codes; ACT_NONE copies) for p in pix (all when None)."""
    cdef int C = out.shape[1]
    if x.shape[0] != out.shape[0] or x.shape[1] != C:
        raise ValueError("activation: inconsistent shapes")
    cdef Py_ssize_t P = ((out.shape[0]) if pix is None else pix.shape[0])
    if P == 0 or C == 0:
        return
    cdef PosJob j
    j.x, j.out, j.C, j.act, j.lo, j.hi = &x[0, 0], &out[0, 0], C, act, lo, hi
    j.ldx, j.ldo = x.strides[0] // 4, out.strides[0] // 4
    j.pix, j.P = (<const int*>NULL if pix is None else &pix[0]), P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _activation_item, &j)


cdef void _activation_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t k, p
    cdef int c
    cdef const float* xr
    cdef float* o
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        p = j.pix[k] if j.pix != NULL else k
        xr = j.x + p * j.ldx
        o = j.out + p * j.ldo
        for c in range(j.C):
            o[c] = _act(xr[c], j.act, j.lo, j.hi)


def affine(const float[:, ::1] x, const float[::1] scale, const float[::1] shift,
           float[:, ::1] out, int n_threads, const int[::1] pix=None):
    """out[p, c] = x[p, c] * scale[c] + shift[c] (standalone batch norm), p in pix."""
    cdef int C = x.shape[1]
    if out.shape[0] != x.shape[0] or out.shape[1] != C or scale.shape[0] != C \
            or shift.shape[0] != C:
        raise ValueError("affine: inconsistent shapes")
    cdef Py_ssize_t P = ((out.shape[0]) if pix is None else pix.shape[0])
    if P == 0 or C == 0:
        return
    cdef PosJob j
    j.x, j.out, j.a, j.b, j.C = &x[0, 0], &out[0, 0], &scale[0], &shift[0], C
    j.ldx, j.ldo = x.strides[0] // 4, out.strides[0] // 4
    j.pix, j.P = (<const int*>NULL if pix is None else &pix[0]), P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _affine_item, &j)


cdef void _affine_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t k, p
    cdef int c
    cdef const float* xr
    cdef float* o
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        p = j.pix[k] if j.pix != NULL else k
        xr = j.x + p * j.ldx
        o = j.out + p * j.ldo
        for c in range(j.C):
            o[c] = xr[c] * j.a[c] + j.b[c]


def concat_channels(list xs, float[:, ::1] out, int n_threads, const int[::1] pix=None):
    """Concatenate (P, C_k) arrays along channels into out (P, sum C_k), at pix."""
    cdef int n_in = len(xs), k, off
    cdef Py_ssize_t[::1] ptrs = np.empty(max(1, n_in), np.intp)
    cdef int[::1] chans = np.empty(max(1, n_in), np.intc)
    cdef const float[:, ::1] v
    off = 0
    for k in range(n_in):
        v = xs[k]
        if v.shape[0] != out.shape[0]:
            raise ValueError("concat_channels: inconsistent shapes")
        ptrs[k] = <Py_ssize_t>&v[0, 0]
        chans[k] = v.shape[1]
        off += chans[k]
    if off != out.shape[1]:
        raise ValueError("concat_channels: channel counts do not add up")
    cdef Py_ssize_t P = ((out.shape[0]) if pix is None else pix.shape[0])
    if P == 0 or n_in == 0:
        return
    cdef PosJob j
    j.out, j.ldo, j.ptrs, j.chans, j.n_in = &out[0, 0], out.strides[0] // 4, &ptrs[0], \
        &chans[0], n_in
    j.pix, j.P = (<const int*>NULL if pix is None else &pix[0]), P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _concat_item, &j)


cdef void _concat_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t i, p
    cdef int k, off
    for i in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        p = j.pix[i] if j.pix != NULL else i
        off = 0
        for k in range(j.n_in):
            memcpy(j.out + p * j.ldo + off, (<float*>j.ptrs[k]) + p * j.chans[k],
                   j.chans[k] * sizeof(float))
            off = off + j.chans[k]


# --- resizing --------------------------------------------------------------------

def gather_pixels(const float[:, :, ::1] x, const int[::1] iy, const int[::1] ix,
                  float[:, :, ::1] out, int n_threads, const int[::1] pix=None):
    """out[oy, ox, :] = x[iy[oy], ix[ox], :] (nearest upsampling), at pix.

    iy, ix in: source row and column per output row and column, inside x.
    """
    cdef int W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or iy.shape[0] != OH or ix.shape[0] != OW:
        raise ValueError("gather_pixels: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    if P == 0 or C == 0:
        return
    cdef PosJob j
    j.x, j.out, j.W, j.C, j.OW, j.ia, j.ib = &x[0, 0, 0], &out[0, 0, 0], W, C, OW, \
        &iy[0], &ix[0]
    j.pix, j.P = pp, P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _gather_item, &j)


cdef void _gather_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t k, m
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        m = j.pix[k] if j.pix != NULL else k
        memcpy(j.out + m * j.C,
               j.x + (<Py_ssize_t>j.ia[m // j.OW] * j.W + j.ib[m % j.OW]) * j.C,
               j.C * sizeof(float))


def bilinear(const float[:, :, ::1] x, const int[:, ::1] ys, const float[:, ::1] wy,
             const int[:, ::1] xs, const float[:, ::1] wx, float[:, :, ::1] out,
             int n_threads, const int[::1] pix=None):
    """Bilinear resize with precomputed taps (ops.bilinear_taps), at pix.

    ys, wy  in  (OH, 2): source rows and their weights per output row
    xs, wx  in  (OW, 2): source columns and their weights per output column
    out = wy0 * (wx0 * x00 + wx1 * x01) + wy1 * (wx0 * x10 + wx1 * x11), torch's order.
    """
    cdef int W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or ys.shape[0] != OH or xs.shape[0] != OW:
        raise ValueError("bilinear: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    if P == 0 or C == 0:
        return
    cdef PosJob j
    j.x, j.out, j.W, j.C, j.OW = &x[0, 0, 0], &out[0, 0, 0], W, C, OW
    j.ia, j.a, j.ib, j.b = &ys[0, 0], &wy[0, 0], &xs[0, 0], &wx[0, 0]
    j.pix, j.P = pp, P
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _bilinear_item, &j)


cdef void _bilinear_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef PosJob* j = <PosJob*>ctx
    cdef Py_ssize_t k, m
    cdef int oy, ox, c, C = j.C, x0, x1
    cdef const float* r0
    cdef const float* r1
    cdef float h0, h1, w0, w1
    cdef float* o
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        m = j.pix[k] if j.pix != NULL else k
        oy = <int>(m // j.OW)
        ox = <int>(m % j.OW)
        r0 = j.x + <Py_ssize_t>j.ia[2 * oy] * j.W * C
        r1 = j.x + <Py_ssize_t>j.ia[2 * oy + 1] * j.W * C
        h0 = j.a[2 * oy]
        h1 = j.a[2 * oy + 1]
        w0 = j.b[2 * ox]
        w1 = j.b[2 * ox + 1]
        x0 = j.ib[2 * ox] * C
        x1 = j.ib[2 * ox + 1] * C
        o = j.out + m * C
        for c in range(C):
            o[c] = (h0 * (w0 * r0[x0 + c] + w1 * r0[x1 + c])
                    + h1 * (w0 * r1[x0 + c] + w1 * r1[x1 + c]))


# --- vectors ---------------------------------------------------------------------

def linear(const float[::1] x, const float[::1] w, const float[::1] bias,
           float[::1] out, int n_threads):
    """out = w @ x + bias, with the gemm kernel (one row).

    x in (F,); w in (gemm_packed_size(F, O),): the (F, O) matrix w.T packed
    (pack_linear_weight); out out (O,). Column blocks of 128 run in parallel.
    """
    cdef int F = x.shape[0], O = out.shape[0]
    if (<size_t>w.shape[0] != fd_packed_size(F, O) or bias.shape[0] != O):
        raise ValueError("linear: inconsistent shapes")
    cdef int nb = 4 * FD_NR
    cdef int nblk = (O + nb - 1) // nb
    cdef int blk
    n_threads = max(1, min(n_threads, nblk))
    for blk in prange(nblk, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        fd_gemm_bias_act_cols(1, O, F, &x[0], F, &w[0], blk * nb, min(O, blk * nb + nb),
                              &bias[0], &out[0], O, ACT_NONE, 0, 0)
