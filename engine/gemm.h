/* framedelta's sgemm microkernel: C = act(A . B + bias), single-threaded, on a tile of rows.
 *
 * Plain C with GCC/Clang vector extensions: 16-float vectors, which are one AVX-512
 * register under -march=native on x86-64 and pairs/quads of AVX2/SSE/NEON registers
 * elsewhere. Static inline, so each Cython module that includes it gets its own copy.
 *
 * Determinism (the contract the incremental path relies on): every output element
 * C[m, n] is computed as
 *     acc = 0;  for k = 0 .. K-1:  acc = fma(A[m, k], B[k, n], acc);
 *     C[m, n] = act(acc + bias[n])
 * with one fused multiply-add per k, in increasing k, whatever M, the tile or subset of
 * rows it is computed in, its row position inside the register block, and the column
 * panel it sits in. Edge rows use the same code with fewer rows; edge columns are
 * computed in zero-padded lanes of the same vectors and not stored. Blocking over K
 * spills the accumulators to C and reloads them, which is exact in float32. There is no
 * scalar path and no split of the K sum, so no other rounding can occur. (On targets
 * without FMA hardware the multiply and the add are separate, everywhere alike.)
 *
 * Layout of packed B (fd_pack_b): column panels of FD_NR = 32 columns, each K x 32
 * row-major (k-major, 32 contiguous floats per k); the last panel is 16 wide when at
 * most 16 columns remain, zero-padded to its width. Panel p starts at p * 32 * K.
 *
 * Loop order of fd_gemm_bias_act: K blocks (<= FD_KC, balanced) outermost, then column
 * panels (the K-block x 32 slice of B stays in L1), then register blocks of FD_MR = 12
 * rows (A streams from L2, 12 rows at a time; each A element is broadcast once per k
 * and used by two 16-wide FMAs). Register block: 12 x 32 = 24 vector accumulators.
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

#define FD_NR 32      /* columns per packed panel (two vectors) */
#define FD_MR 12      /* rows per register block */
#define FD_KC 320     /* longest K block */
#define FD_MAXP 16    /* panels per pass over the rows (512 columns) */

typedef float fd_v16 __attribute__((vector_size(64)));
typedef int fd_v16i __attribute__((vector_size(64)));
/* unaligned, aliasing access to float arrays */
typedef float fd_v16u __attribute__((vector_size(64), aligned(4), may_alias));

#if defined(__GNUC__)
#define FD_INLINE static inline __attribute__((always_inline))
#else
#define FD_INLINE static inline
#endif

FD_INLINE fd_v16 fd_load(const float *p) { return *(const fd_v16u *)p; }
FD_INLINE void fd_store(float *p, fd_v16 v) { *(fd_v16u *)p = v; }

FD_INLINE fd_v16 fd_splat(float x)
{
    fd_v16 v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
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

FD_INLINE fd_v16 fd_act(fd_v16 v, int act, fd_v16 lo, fd_v16 hi)
{
    if (act == 1)
        return fd_relu(v);
    if (act == 2)
        return fd_clamp(v, lo, hi);
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

/* floats in packed B */
static inline size_t fd_packed_size(int K, int N)
{
    int full = N / FD_NR, rem = N % FD_NR;
    size_t cols = (size_t)full * FD_NR + (rem == 0 ? 0 : rem <= 16 ? 16 : FD_NR);
    return (size_t)K * cols;
}

/* B row-major K x N with leading dimension ldb -> packed panels (see the top) */
static inline void fd_pack_b(const float *B, int K, int N, int ldb, float *packed)
{
    for (int n0 = 0; n0 < N; n0 += FD_NR) {
        int rem = N - n0;
        int w = rem >= FD_NR ? FD_NR : rem <= 16 ? 16 : FD_NR;
        float *dst = packed + (size_t)n0 * K;
        for (int k = 0; k < K; k++)
            for (int j = 0; j < w; j++)
                dst[(size_t)k * w + j] = j < rem ? B[(size_t)k * ldb + n0 + j] : 0.0f;
    }
}

/* one register block: mr rows x (16 * nv) columns, K block of length kc.
 * nc: columns of C to store (<= 16 * nv); load_c: start from C (later K blocks);
 * finish: add bias, apply act (last K block). mr and nv are constants at each call. */
FD_INLINE void fd_block(const int mr, const int nv, int kc, const float *A, ptrdiff_t lda,
                        const float *B, float *C, ptrdiff_t ldc, int nc, int load_c,
                        int finish, fd_v16 bias0, fd_v16 bias1, int act, fd_v16 lo,
                        fd_v16 hi)
{
    fd_v16 c0[FD_MR], c1[FD_MR];
    const int full = nc == 16 * nv;
    /* lanes valid in each vector: n0v in the first, n1v in the second (0: none) */
    const int n0v = nc < 16 ? nc : 16, n1v = nc > 16 ? nc - 16 : 0;
    if (load_c) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            const float *cr = C + r * ldc;
            if (full) {
                c0[r] = fd_load(cr);
                if (nv > 1) c1[r] = fd_load(cr + 16);
            } else {
                c0[r] = fd_load_part(cr, n0v);
                if (nv > 1) c1[r] = n1v ? fd_load_part(cr + 16, n1v) : fd_splat(0.0f);
            }
        }
    } else {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            c0[r] = fd_splat(0.0f);
            if (nv > 1) c1[r] = fd_splat(0.0f);
        }
    }
    const float *a = A;
    const float *b = B;
    for (int k = 0; k < kc; k++) {
        fd_v16 b0 = fd_load(b), b1;
        if (nv > 1) b1 = fd_load(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            fd_v16 av = fd_splat(a[r * lda]);
            c0[r] = fd_fma(av, b0, c0[r]);
            if (nv > 1) c1[r] = fd_fma(av, b1, c1[r]);
        }
        a += 1;
        b += 16 * nv;
    }
    if (finish) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            c0[r] = fd_act(c0[r] + bias0, act, lo, hi);
            if (nv > 1) c1[r] = fd_act(c1[r] + bias1, act, lo, hi);
        }
    }
    if (full) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            fd_store(C + r * ldc, c0[r]);
            if (nv > 1) fd_store(C + r * ldc + 16, c1[r]);
        }
    } else {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            fd_store_part(C + r * ldc, c0[r], n0v);
            if (nv > 1 && n1v) fd_store_part(C + r * ldc + 16, c1[r], n1v);
        }
    }
}

#define FD_BLOCK_CASE(MR_, NV_) \
    case MR_: fd_block(MR_, NV_, kc, A, lda, B, C, ldc, nc, load_c, finish, bias0, bias1, \
                       act, lo, hi); break;

static void fd_block_nv2(int mr, int kc, const float *A, ptrdiff_t lda, const float *B,
                         float *C, ptrdiff_t ldc, int nc, int load_c, int finish,
                         fd_v16 bias0, fd_v16 bias1, int act, fd_v16 lo, fd_v16 hi)
{
    switch (mr) {
        FD_BLOCK_CASE(12, 2) FD_BLOCK_CASE(11, 2) FD_BLOCK_CASE(10, 2) FD_BLOCK_CASE(9, 2)
        FD_BLOCK_CASE(8, 2) FD_BLOCK_CASE(7, 2) FD_BLOCK_CASE(6, 2) FD_BLOCK_CASE(5, 2)
        FD_BLOCK_CASE(4, 2) FD_BLOCK_CASE(3, 2) FD_BLOCK_CASE(2, 2) FD_BLOCK_CASE(1, 2)
        default: break;
    }
}

static void fd_block_nv1(int mr, int kc, const float *A, ptrdiff_t lda, const float *B,
                         float *C, ptrdiff_t ldc, int nc, int load_c, int finish,
                         fd_v16 bias0, fd_v16 bias1, int act, fd_v16 lo, fd_v16 hi)
{
    switch (mr) {
        FD_BLOCK_CASE(12, 1) FD_BLOCK_CASE(11, 1) FD_BLOCK_CASE(10, 1) FD_BLOCK_CASE(9, 1)
        FD_BLOCK_CASE(8, 1) FD_BLOCK_CASE(7, 1) FD_BLOCK_CASE(6, 1) FD_BLOCK_CASE(5, 1)
        FD_BLOCK_CASE(4, 1) FD_BLOCK_CASE(3, 1) FD_BLOCK_CASE(2, 1) FD_BLOCK_CASE(1, 1)
        default: break;
    }
}

/* Columns n0 <= n < n1 of C = act(A . B + bias), rows m < M. n0 must be a multiple of
 * FD_NR (a panel boundary); n1 <= N. C points at C[0, 0] (not at column n0), likewise
 * bias (NULL: no bias). A: M x K row-major, leading dimension lda. Bp: fd_pack_b of the
 * whole K x N matrix. act: 0 none, 1 relu, 2 clamp(lo, hi). */
static inline void fd_gemm_bias_act_cols(int M, int N, int K, const float *A, int lda,
                                         const float *Bp, int n0, int n1,
                                         const float *bias, float *C, int ldc, int act,
                                         float lo, float hi)
{
    if (M <= 0 || n1 <= n0 || K <= 0)
        return;
    if (n1 > N) n1 = N;
    fd_v16 lov = fd_splat(lo), hiv = fd_splat(hi);
    int nkb = (K + FD_KC - 1) / FD_KC;
    int kcb = (K + nkb - 1) / nkb;
    int np = (n1 - n0 + FD_NR - 1) / FD_NR;
    /* per panel: width in B, columns stored, bias vectors */
    fd_v16 bias0[FD_MAXP], bias1[FD_MAXP];
    for (int k0 = 0; k0 < K; k0 += kcb) {
        int kc = K - k0 < kcb ? K - k0 : kcb;
        int load_c = k0 > 0, finish = k0 + kc == K;
        for (int q0 = 0; q0 < np; q0 += FD_MAXP) {
            int q1 = np - q0 < FD_MAXP ? np : q0 + FD_MAXP;
            for (int q = q0; q < q1; q++) {
                int p0 = n0 + q * FD_NR;
                int nc = n1 - p0 < FD_NR ? n1 - p0 : FD_NR;
                float bt[32] = {0};
                if (bias) memcpy(bt, bias + p0, (size_t)nc * sizeof(float));
                bias0[q - q0] = fd_load(bt);
                bias1[q - q0] = fd_load(bt + 16);
            }
            for (int m0 = 0; m0 < M; m0 += FD_MR) {
                int mr = M - m0 < FD_MR ? M - m0 : FD_MR;
                const float *Am = A + (size_t)m0 * lda + k0;
                for (int q = q0; q < q1; q++) {
                    int p0 = n0 + q * FD_NR;
                    int rem = N - p0;
                    int w = rem >= FD_NR ? FD_NR : rem <= 16 ? 16 : FD_NR;
                    int nc = n1 - p0 < FD_NR ? n1 - p0 : FD_NR;
                    const float *B = Bp + (size_t)p0 * K + (size_t)k0 * w;
                    float *Cm = C + (size_t)m0 * ldc + p0;
                    if (w == 32)
                        fd_block_nv2(mr, kc, Am, lda, B, Cm, ldc, nc, load_c, finish,
                                     bias0[q - q0], bias1[q - q0], act, lov, hiv);
                    else
                        fd_block_nv1(mr, kc, Am, lda, B, Cm, ldc, nc, load_c, finish,
                                     bias0[q - q0], bias1[q - q0], act, lov, hiv);
                }
            }
        }
    }
}

/* C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]) for m < M, n < N; single-threaded */
static inline void fd_gemm_bias_act(int M, int N, int K, const float *A, int lda,
                                    const float *Bp, const float *bias, float *C, int ldc,
                                    int act, float lo, float hi)
{
    fd_gemm_bias_act_cols(M, N, K, A, lda, Bp, 0, N, bias, C, ldc, act, lo, hi);
}

#endif /* FD_GEMM_H */
