/* framedelta's sgemm microkernel: C = act(A . B + bias), single-threaded, on a tile of rows.
 *
 * Plain C with GCC/Clang vector extensions: 16- and 8-float vectors, which are one
 * AVX-512 / AVX register under -march=native on x86-64 and pairs or quads of SSE/NEON
 * registers elsewhere. Static inline, so each Cython module that includes it gets its
 * own copy; nothing here depends on Python.
 *
 * Determinism (the contract the incremental path relies on): every output element
 * C[m, n] is computed as
 *     acc = 0;  for k = 0 .. K-1:  acc = fma(A[m, k], B[k, n], acc);
 *     C[m, n] = act(acc + bias[n])
 * with one fused multiply-add per k, in increasing k, whatever M, the tile or subset of
 * rows it is computed in, its row position inside the register block, and the column
 * block it sits in. Edge rows use the same code with fewer rows; edge columns are
 * computed in zero-padded lanes and not stored. Blocking over K spills the accumulators
 * to C and reloads them, which is exact in float32. A fused multiply-add is exactly
 * rounded, so it gives the same bits in a 16- or an 8-lane vector. There is no split
 * of the K sum, so no other rounding can occur. (On targets without FMA hardware the
 * multiply and the add are separate, everywhere alike.)
 *
 * Packed B (fd_pack_b): column panels of FD_NR = 32 columns, each K x 32 row-major
 * (k-major, 32 contiguous floats per k); the last panel is as wide as the remaining
 * columns rounded up to 8 (8, 16, 24 or 32), zero-padded. Panel p starts at p * 32 * K.
 *
 * A is given either as a row-major matrix (lda) or, for convolution without im2col, as
 * segments: row m is the concatenation over s of seg[s] + m * lda, [0, seglen) each
 * (the kh rows of taps of a run of output pixels read straight from the input image).
 *
 * Loop order: K blocks (<= FD_KC, balanced) outermost; then register blocks of
 * FD_MR = 12 rows (the 12 x K-block slice of A stays in L1); then the column panels
 * (each K-block x 32 slice of B streams from L1/L2); each C row is written as one run.
 * Register block: 12 rows x 32 columns = 24 vector accumulators; per k, two vector
 * loads of B and 12 broadcasts of A feeding 24 FMAs.
 */
#ifndef FD_GEMM_H
#define FD_GEMM_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__FMA__) || defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#define FD_NR 32      /* columns per packed panel */
#define FD_MR 12      /* rows per register block */
#define FD_KC 320     /* longest K block */
#define FD_MAXP 16    /* panels per pass over a register block (512 columns) */
#define FD_MAXSEG 16  /* segments per K block */

typedef float fd_v16 __attribute__((vector_size(64)));
typedef float fd_v8 __attribute__((vector_size(32)));
typedef int fd_v16i __attribute__((vector_size(64)));
typedef int fd_v8i __attribute__((vector_size(32)));
/* unaligned, aliasing access to float arrays */
typedef float fd_v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float fd_v8u __attribute__((vector_size(32), aligned(4), may_alias));

#if defined(__GNUC__)
#define FD_INLINE static inline __attribute__((always_inline))
#else
#define FD_INLINE static inline
#endif

FD_INLINE fd_v16 fd_load(const float *p) { return *(const fd_v16u *)p; }
FD_INLINE void fd_store(float *p, fd_v16 v) { *(fd_v16u *)p = v; }
FD_INLINE fd_v8 fd8_load(const float *p) { return *(const fd_v8u *)p; }
FD_INLINE void fd8_store(float *p, fd_v8 v) { *(fd_v8u *)p = v; }

FD_INLINE fd_v16 fd_splat(float x)
{
    fd_v16 v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
    return v;
}

FD_INLINE fd_v8 fd8_splat(float x)
{
    fd_v8 v = {x, x, x, x, x, x, x, x};
    return v;
}

/* a * b + c with one rounding where the target has FMA; explicit so that no
 * compiler's contraction choice can make two code paths round differently */
FD_INLINE fd_v16 fd_fma(fd_v16 a, fd_v16 b, fd_v16 c)
{
#if defined(__AVX512F__)
    return (fd_v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    union { fd_v16 v; __m256 h[2]; } x = {a}, y = {b}, z = {c}, r;
    r.h[0] = _mm256_fmadd_ps(x.h[0], y.h[0], z.h[0]);
    r.h[1] = _mm256_fmadd_ps(x.h[1], y.h[1], z.h[1]);
    return r.v;
#elif defined(__aarch64__)
    union { fd_v16 v; float32x4_t q[4]; } x = {a}, y = {b}, z = {c}, r;
    for (int i = 0; i < 4; i++) r.q[i] = vfmaq_f32(z.q[i], x.q[i], y.q[i]);
    return r.v;
#elif defined(__clang__) && defined(__has_builtin)
#if __has_builtin(__builtin_elementwise_fma)
    return __builtin_elementwise_fma(a, b, c);
#else
    return a * b + c;
#endif
#else
    return a * b + c;
#endif
}

FD_INLINE fd_v8 fd8_fma(fd_v8 a, fd_v8 b, fd_v8 c)
{
#if defined(__FMA__) || defined(__AVX512F__)
    return (fd_v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__aarch64__)
    union { fd_v8 v; float32x4_t q[2]; } x = {a}, y = {b}, z = {c}, r;
    for (int i = 0; i < 2; i++) r.q[i] = vfmaq_f32(z.q[i], x.q[i], y.q[i]);
    return r.v;
#elif defined(__clang__) && defined(__has_builtin)
#if __has_builtin(__builtin_elementwise_fma)
    return __builtin_elementwise_fma(a, b, c);
#else
    return a * b + c;
#endif
#else
    return a * b + c;
#endif
}

/* relu / clamp, NaN kept as in the scalar _act (comparisons, never fmaxf/fminf).
 * x86 max/min return their second operand when either is NaN or both are zeros, so
 * max(0, v) is exactly "v < 0 ? 0 : v" and min(hi, v) is "v > hi ? hi : v". */
#if defined(__AVX512F__)
FD_INLINE fd_v16 fd_relu(fd_v16 v)
{
    return (fd_v16)_mm512_max_ps(_mm512_setzero_ps(), (__m512)v);
}
FD_INLINE fd_v16 fd_clamp(fd_v16 v, fd_v16 lo, fd_v16 hi)
{
    return (fd_v16)_mm512_max_ps((__m512)lo, _mm512_min_ps((__m512)hi, (__m512)v));
}
#else
FD_INLINE fd_v16 fd_select(fd_v16i m, fd_v16 yes, fd_v16 no)
{
    return (fd_v16)(((fd_v16i)yes & m) | ((fd_v16i)no & ~m));
}
FD_INLINE fd_v16 fd_relu(fd_v16 v)
{
    fd_v16 z = fd_splat(0.0f);
    return fd_select(v < z, z, v);
}
FD_INLINE fd_v16 fd_clamp(fd_v16 v, fd_v16 lo, fd_v16 hi)
{
    return fd_select(v < lo, lo, fd_select(v > hi, hi, v));
}
#endif

#if defined(__AVX__)
FD_INLINE fd_v8 fd8_relu(fd_v8 v)
{
    return (fd_v8)_mm256_max_ps(_mm256_setzero_ps(), (__m256)v);
}
FD_INLINE fd_v8 fd8_clamp(fd_v8 v, fd_v8 lo, fd_v8 hi)
{
    return (fd_v8)_mm256_max_ps((__m256)lo, _mm256_min_ps((__m256)hi, (__m256)v));
}
#else
FD_INLINE fd_v8 fd8_select(fd_v8i m, fd_v8 yes, fd_v8 no)
{
    return (fd_v8)(((fd_v8i)yes & m) | ((fd_v8i)no & ~m));
}
FD_INLINE fd_v8 fd8_relu(fd_v8 v)
{
    fd_v8 z = fd8_splat(0.0f);
    return fd8_select(v < z, z, v);
}
FD_INLINE fd_v8 fd8_clamp(fd_v8 v, fd_v8 lo, fd_v8 hi)
{
    return fd8_select(v < lo, lo, fd8_select(v > hi, hi, v));
}
#endif

FD_INLINE fd_v16 fd_act(fd_v16 v, int act, float lo, float hi)
{
    if (act == 1)
        return fd_relu(v);
    if (act == 2)
        return fd_clamp(v, fd_splat(lo), fd_splat(hi));
    return v;
}

FD_INLINE fd_v8 fd8_act(fd_v8 v, int act, float lo, float hi)
{
    if (act == 1)
        return fd8_relu(v);
    if (act == 2)
        return fd8_clamp(v, fd8_splat(lo), fd8_splat(hi));
    return v;
}

/* the first n (0 < n <= 16) floats at p, zeros after */
FD_INLINE fd_v16 fd_load_part(const float *p, int n)
{
#if defined(__AVX512F__)
    return (fd_v16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#else
    float t[16] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return fd_load(t);
#endif
}

/* store the first n (0 < n <= 16) lanes of v at p */
FD_INLINE void fd_store_part(float *p, fd_v16 v, int n)
{
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
    float t[16];
    fd_store(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
#endif
}

FD_INLINE fd_v8 fd8_load_part(const float *p, int n)
{
#if defined(__AVX512F__) && defined(__AVX512VL__)
    return (fd_v8)_mm256_maskz_loadu_ps((__mmask8)((1u << n) - 1u), p);
#else
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return fd8_load(t);
#endif
}

FD_INLINE void fd8_store_part(float *p, fd_v8 v, int n)
{
#if defined(__AVX512F__) && defined(__AVX512VL__)
    _mm256_mask_storeu_ps(p, (__mmask8)((1u << n) - 1u), (__m256)v);
#else
    float t[8];
    fd8_store(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
#endif
}

/* width in packed B of the panel starting at column p0 (8, 16, 24 or 32) */
static inline int fd_panel_width(int N, int p0)
{
    int rem = N - p0;
    return rem >= FD_NR ? FD_NR : (rem + 7) / 8 * 8;
}

/* floats in packed B */
static inline size_t fd_packed_size(int K, int N)
{
    return (size_t)K * (size_t)((N + 7) / 8 * 8);
}

/* B row-major K x N with leading dimension ldb -> packed panels (see the top) */
static inline void fd_pack_b(const float *B, int K, int N, int ldb, float *packed)
{
    for (int n0 = 0; n0 < N; n0 += FD_NR) {
        int rem = N - n0;
        int w = fd_panel_width(N, n0);
        float *dst = packed + (size_t)n0 * K;
        for (int k = 0; k < K; k++)
            for (int j = 0; j < w; j++)
                dst[(size_t)k * w + j] = j < rem ? B[(size_t)k * ldb + n0 + j] : 0.0f;
    }
}

/* One register block: mr rows x W columns (W = 32, 24, 16 or 8), over one K block made
 * of nseg segments of sl floats: row r reads seg[s] + r * lda, [0, sl) for each s.
 * nc: columns of C to store (<= W); load_c: start from C (later K blocks); finish: add
 * bias, apply act (last K block). mr and W are constants at each call site.
 * Vectors: x0 = columns 0-15 (W >= 16), x1 = 16-31 (W == 32), y1 = 16-23 (W == 24),
 * y0 = 0-7 (W == 8). */
FD_INLINE void fd_block(const int mr, const int W, int nseg, const float *const *seg,
                        int sl, ptrdiff_t lda, const float *B, float *C, ptrdiff_t ldc,
                        int nc, int load_c, int finish, const float *bias, int act,
                        float lo, float hi)
{
    const int hx0 = W >= 16, hx1 = W == 32, hy1 = W == 24, hy0 = W == 8;
    fd_v16 x0[FD_MR], x1[FD_MR];
    fd_v8 y0[FD_MR], y1[FD_MR];
    const int full = nc == W;
    /* lanes to store of the first and the second vector */
    const int nlo = nc < 16 ? nc : 16, nhi = nc > 16 ? nc - 16 : 0;
    if (load_c) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            const float *cr = C + r * ldc;
            if (full) {
                if (hx0) x0[r] = fd_load(cr);
                if (hx1) x1[r] = fd_load(cr + 16);
                if (hy1) y1[r] = fd8_load(cr + 16);
                if (hy0) y0[r] = fd8_load(cr);
            } else {
                if (hx0) x0[r] = fd_load_part(cr, nlo);
                if (hx1) x1[r] = nhi ? fd_load_part(cr + 16, nhi) : fd_splat(0.0f);
                if (hy1) y1[r] = nhi ? fd8_load_part(cr + 16, nhi) : fd8_splat(0.0f);
                if (hy0) y0[r] = fd8_load_part(cr, nc);
            }
        }
    } else {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (hx0) x0[r] = fd_splat(0.0f);
            if (hx1) x1[r] = fd_splat(0.0f);
            if (hy1) y1[r] = fd8_splat(0.0f);
            if (hy0) y0[r] = fd8_splat(0.0f);
        }
    }
    const float *b = B;
    for (int s = 0; s < nseg; s++) {
        const float *a = seg[s];
        for (int k = 0; k < sl; k++) {
            fd_v16 bx0, bx1;
            fd_v8 by0, by1;
            if (hx0) bx0 = fd_load(b);
            if (hx1) bx1 = fd_load(b + 16);
            if (hy1) by1 = fd8_load(b + 16);
            if (hy0) by0 = fd8_load(b);
#pragma GCC unroll 12
            for (int r = 0; r < mr; r++) {
                float av = a[r * lda];
                if (hx0) x0[r] = fd_fma(fd_splat(av), bx0, x0[r]);
                if (hx1) x1[r] = fd_fma(fd_splat(av), bx1, x1[r]);
                if (hy1) y1[r] = fd8_fma(fd8_splat(av), by1, y1[r]);
                if (hy0) y0[r] = fd8_fma(fd8_splat(av), by0, y0[r]);
            }
            a += 1;
            b += W;
        }
    }
    if (finish) {
        fd_v16 bx0, bx1;
        fd_v8 by0, by1;
        if (hx0) bx0 = fd_load(bias);
        if (hx1) bx1 = fd_load(bias + 16);
        if (hy1) by1 = fd8_load(bias + 16);
        if (hy0) by0 = fd8_load(bias);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            if (hx0) x0[r] = fd_act(x0[r] + bx0, act, lo, hi);
            if (hx1) x1[r] = fd_act(x1[r] + bx1, act, lo, hi);
            if (hy1) y1[r] = fd8_act(y1[r] + by1, act, lo, hi);
            if (hy0) y0[r] = fd8_act(y0[r] + by0, act, lo, hi);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
        if (full) {
            if (hx0) fd_store(cr, x0[r]);
            if (hx1) fd_store(cr + 16, x1[r]);
            if (hy1) fd8_store(cr + 16, y1[r]);
            if (hy0) fd8_store(cr, y0[r]);
        } else {
            if (hx0) fd_store_part(cr, x0[r], nlo);
            if (hx1 && nhi) fd_store_part(cr + 16, x1[r], nhi);
            if (hy1 && nhi) fd8_store_part(cr + 16, y1[r], nhi);
            if (hy0) fd8_store_part(cr, y0[r], nc);
        }
    }
}

#define FD_BLOCK_ARGS int nseg, const float *const *seg, int sl, ptrdiff_t lda, \
    const float *B, float *C, ptrdiff_t ldc, int nc, int load_c, int finish, \
    const float *bias, int act, float lo, float hi
#define FD_BLOCK_CASE(MR_, W_) \
    case MR_: fd_block(MR_, W_, nseg, seg, sl, lda, B, C, ldc, nc, load_c, finish, bias, \
                       act, lo, hi); break;
#define FD_BLOCK_SWITCH(W_) \
    switch (mr) { \
        FD_BLOCK_CASE(12, W_) FD_BLOCK_CASE(11, W_) FD_BLOCK_CASE(10, W_) \
        FD_BLOCK_CASE(9, W_) FD_BLOCK_CASE(8, W_) FD_BLOCK_CASE(7, W_) \
        FD_BLOCK_CASE(6, W_) FD_BLOCK_CASE(5, W_) FD_BLOCK_CASE(4, W_) \
        FD_BLOCK_CASE(3, W_) FD_BLOCK_CASE(2, W_) FD_BLOCK_CASE(1, W_) \
        default: break; \
    }

static void fd_block_w32(int mr, FD_BLOCK_ARGS) { FD_BLOCK_SWITCH(32) }
static void fd_block_w24(int mr, FD_BLOCK_ARGS) { FD_BLOCK_SWITCH(24) }
static void fd_block_w16(int mr, FD_BLOCK_ARGS) { FD_BLOCK_SWITCH(16) }
static void fd_block_w8(int mr, FD_BLOCK_ARGS) { FD_BLOCK_SWITCH(8) }

/* Columns n0 <= n < n1 of C = act(A . B + bias), rows m < M, with A in segments: row m
 * is the concatenation over s < nseg of seg[s] + m * lda, [0, seglen) each; K = nseg *
 * seglen. n0 must be a multiple of FD_NR (a panel boundary); n1 <= N. C points at
 * C[0, 0] (not at column n0), likewise bias (NULL: no bias). Bp: fd_pack_b of the whole
 * K x N matrix. act: 0 none, 1 relu, 2 clamp(lo, hi). */
static inline void fd_gemm_seg(int M, int N, int nseg, const float *const *seg,
                               int seglen, int lda, const float *Bp, int n0, int n1,
                               const float *bias, float *C, int ldc, int act, float lo,
                               float hi)
{
    if (n1 > N) n1 = N;
    if (M <= 0 || n1 <= n0 || nseg <= 0 || seglen <= 0)
        return;
    const int K = nseg * seglen;
    /* K blocks: parts of one segment (long segments), or runs of whole segments */
    int parts = 1, per = 1;
    if (seglen >= FD_KC) {
        parts = (seglen + FD_KC - 1) / FD_KC;
    } else {
        int most = FD_KC / seglen;
        if (most > FD_MAXSEG) most = FD_MAXSEG;
        int nblk = (nseg + most - 1) / most;
        per = (nseg + nblk - 1) / nblk;
    }
    int plen = (seglen + parts - 1) / parts;
    const int np = (n1 - n0 + FD_NR - 1) / FD_NR;
    for (int s0 = 0; s0 < nseg; s0 += per) {
        int ns = nseg - s0 < per ? nseg - s0 : per;
        for (int o = 0; o < seglen; o += plen) {
            int sl = parts > 1 ? (seglen - o < plen ? seglen - o : plen) : seglen;
            int k0 = s0 * seglen + o;
            int load_c = k0 > 0, finish = k0 + ns * sl == K;
            for (int q0 = 0; q0 < np; q0 += FD_MAXP) {
                int q1 = np - q0 < FD_MAXP ? np : q0 + FD_MAXP;
                float bt[FD_MAXP][FD_NR];
                if (finish) {
                    for (int q = q0; q < q1; q++) {
                        int p0 = n0 + q * FD_NR;
                        int nc = n1 - p0 < FD_NR ? n1 - p0 : FD_NR;
                        memset(bt[q - q0], 0, sizeof(bt[0]));
                        if (bias) memcpy(bt[q - q0], bias + p0, (size_t)nc * sizeof(float));
                    }
                }
                for (int m0 = 0; m0 < M; m0 += FD_MR) {
                    int mr = M - m0 < FD_MR ? M - m0 : FD_MR;
                    const float *sp[FD_MAXSEG];
                    for (int s = 0; s < ns; s++)
                        sp[s] = seg[s0 + s] + (size_t)m0 * lda + o;
                    for (int q = q0; q < q1; q++) {
                        int p0 = n0 + q * FD_NR;
                        int w = fd_panel_width(N, p0);
                        int nc = n1 - p0 < FD_NR ? n1 - p0 : FD_NR;
                        const float *B = Bp + (size_t)p0 * K + (size_t)k0 * w;
                        float *Cm = C + (size_t)m0 * ldc + p0;
                        if (w == 32)
                            fd_block_w32(mr, ns, sp, sl, lda, B, Cm, ldc, nc, load_c,
                                         finish, bt[q - q0], act, lo, hi);
                        else if (w == 24)
                            fd_block_w24(mr, ns, sp, sl, lda, B, Cm, ldc, nc, load_c,
                                         finish, bt[q - q0], act, lo, hi);
                        else if (w == 16)
                            fd_block_w16(mr, ns, sp, sl, lda, B, Cm, ldc, nc, load_c,
                                         finish, bt[q - q0], act, lo, hi);
                        else
                            fd_block_w8(mr, ns, sp, sl, lda, B, Cm, ldc, nc, load_c,
                                        finish, bt[q - q0], act, lo, hi);
                    }
                }
            }
        }
    }
}

/* Columns n0 <= n < n1 of C = act(A . B + bias), A row-major M x K (leading dimension
 * lda); otherwise as fd_gemm_seg. */
static inline void fd_gemm_bias_act_cols(int M, int N, int K, const float *A, int lda,
                                         const float *Bp, int n0, int n1,
                                         const float *bias, float *C, int ldc, int act,
                                         float lo, float hi)
{
    fd_gemm_seg(M, N, 1, &A, K, lda, Bp, n0, n1, bias, C, ldc, act, lo, hi);
}

/* C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]) for m < M, n < N; single-threaded */
static inline void fd_gemm_bias_act(int M, int N, int K, const float *A, int lda,
                                    const float *Bp, const float *bias, float *C, int ldc,
                                    int act, float lo, float hi)
{
    fd_gemm_seg(M, N, 1, &A, K, lda, Bp, 0, N, bias, C, ldc, act, lo, hi);
}

#endif /* FD_GEMM_H */
