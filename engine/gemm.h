/* framedelta's sgemm microkernel: C = act(A . B + bias), single-threaded, on a tile of rows.
 *
 * Plain C with GCC/Clang vector extensions: 16- and 8-float vectors, which are one
 * AVX-512 / AVX register on x86-64 and pairs or quads of SSE/NEON registers elsewhere.
 * Static inline, so each Cython module that includes it gets its own copy; nothing
 * here depends on Python.
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
 * rounded, so it gives the same bits in a 16- or an 8-lane vector, with AVX-512 or
 * AVX2. There is no split of the K sum, so no other rounding can occur. On targets
 * without FMA the multiply and the add are separate, everywhere alike (values then
 * agree bit for bit too; only which NaN payload survives may vary).
 *
 * x86-64 with GCC: unless the build already targets AVX-512, the register-block kernels
 * are compiled three times (AVX-512, AVX2+FMA, and the build's own target) and the best
 * one the CPU has is picked at run time, so a portable build is fast too.
 *
 * Packed B (fd_pack_b): column panels of FD_NR = 32 columns, each K x 32 row-major
 * (k-major, 32 contiguous floats per k); the last panel is as wide as the remaining
 * columns rounded up to 8 (8, 16, 24 or 32), zero-padded. Panel p starts at p * 32 * K.
 *
 * A is given either as a row-major matrix (lda) or, for convolution without im2col, as
 * segments: row m is the concatenation over s of seg[s] + m * lda, [0, seglen) each
 * (the kh rows of taps of a run of output pixels read straight from the input image).
 *
 * Loop order: K blocks (<= FD_KC, balanced) outermost; then register blocks of rows
 * (the rows x K-block slice of A stays in L1); then the column panels (each K-block x
 * 32 slice of B streams from L1/L2); each C row is written as one run. AVX-512 register
 * block: 12 rows x 32 columns = 24 vector accumulators; per k, two vector loads of B
 * and 12 broadcasts of A feeding 24 FMAs. AVX2: 6 rows x 16 columns (12 accumulators).
 */

/* ------------------------------------------------------------------------------------ */
#ifndef FD_GEMM_KERNEL_PASS
#ifndef FD_GEMM_H
#define FD_GEMM_H

#include <stddef.h>
#include <string.h>

#include "fused.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
/* 16-float vector helpers exist in every pass, and are always inlined: the ABI note GCC
 * gives for returning them by value where AVX-512 is off does not apply */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define FD_NR 32      /* columns per packed panel */
#define FD_MRMAX 12   /* most rows per register block (any ISA) */
#ifndef FD_KC
#define FD_KC 320     /* longest K block */
#endif
#define FD_MAXP 16    /* panels per pass over a register block (512 columns) */
#define FD_MAXSEG 16  /* segments per K block */

typedef float fd_v16 __attribute__((vector_size(64)));
typedef float fd_v8 __attribute__((vector_size(32)));
typedef float fd_v4 __attribute__((vector_size(16)));
typedef int fd_v16i __attribute__((vector_size(64)));
typedef int fd_v8i __attribute__((vector_size(32)));
typedef int fd_v4i __attribute__((vector_size(16)));
/* unaligned, aliasing access to float arrays */
typedef float fd_v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float fd_v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float fd_v4u __attribute__((vector_size(16), aligned(4), may_alias));

#if defined(__GNUC__)
#define FD_INLINE static inline __attribute__((always_inline))
#else
#define FD_INLINE static inline
#endif
#define FD_CAT2(a, b) a##b
#define FD_CAT(a, b) FD_CAT2(a, b)

/* one register-block kernel: rows mr (<= the ISA's MR), w columns computed (8, 16, 24
 * or 32, <= the ISA's widest), B rows ldb floats apart */
typedef void (*fd_block_fn)(int mr, int nseg, const float *const *seg, int sl,
                            ptrdiff_t lda, const float *B, int ldb, float *C, ptrdiff_t ldc,
                            int nc, int load_c, int finish, const float *bias, int act,
                            float lo, float hi);

typedef struct {
    int mr;            /* rows per register block */
    int subw;          /* widest column block */
    fd_block_fn w32, w24, w16, w8;
    const char *name;
} fd_isa_t;

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

/* the register-block kernels, once per instruction set: the build's own target
 * ("native"), and with GCC on x86-64 also AVX-512 (unless native already is) and AVX2
 * (unless native is exactly that), picked at run time */
#define FD_GEMM_KERNEL_PASS
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FD_MULTIVERSION 1
#if !defined(__AVX512F__)
#define FD_HAVE_AVX512_PASS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,tune=generic")
#define FD_SFX _avx512
#define FD_PASS_LEVEL 2
#include "gemm.h"
#undef FD_PASS_LEVEL
#undef FD_SFX
#pragma GCC pop_options
#endif
#if defined(__AVX512F__) || !defined(__AVX2__) || !defined(__FMA__)
#define FD_HAVE_AVX2_PASS 1
#pragma GCC push_options
#if !defined(__AVX512F__)
#pragma GCC target("avx2,fma,tune=generic")
#endif
#define FD_SFX _avx2
#define FD_PASS_LEVEL 1
#include "gemm.h"
#undef FD_PASS_LEVEL
#undef FD_SFX
#pragma GCC pop_options
#endif
#else
#define FD_MULTIVERSION 0
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* generic tuning: GCC 12's -march=native tuning on Zen 4 allocates the inner loop's
 * registers worse (spills a B vector; -10%) */
#pragma GCC push_options
#pragma GCC target("tune=generic")
#define FD_SFX _native
#include "gemm.h"
#undef FD_SFX
#pragma GCC pop_options
#else
#define FD_SFX _native
#include "gemm.h"
#undef FD_SFX
#endif
#undef FD_GEMM_KERNEL_PASS

/* ISA levels: 0 the build's own target, 1 AVX2+FMA, 2 AVX-512 */
static const fd_isa_t *fd_isa_table(int level)
{
#if defined(FD_HAVE_AVX512_PASS)
    if (level >= 2) return &fd_isa_avx512;
#endif
#if defined(FD_HAVE_AVX2_PASS)
    if (level == 1) return &fd_isa_avx2;
#endif
    (void)level;
    return &fd_isa_native;
}

static int fd_isa_supported(void)
{
#if FD_MULTIVERSION
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

static int fd_isa_level = -1;   /* chosen once, on first use */

static inline const fd_isa_t *fd_isa_get(void)
{
    if (fd_isa_level < 0)
        fd_isa_level = fd_isa_supported();
    return fd_isa_table(fd_isa_level);
}

/* Name of the kernel in use ("avx512", "avx2", "native"). */
static inline const char *fd_gemm_isa_name(void) { return fd_isa_get()->name; }

/* For tests: use at most ISA level `level` (0 the build's own target, 1 AVX2, 2
 * AVX-512; -1 the best again) from now on, never more than the CPU has; returns the
 * name of the kernel now in use. Not thread-safe: call it only while no gemm runs. */
static inline const char *fd_gemm_force_isa(int level)
{
    int best = fd_isa_supported();
    fd_isa_level = level < 0 || level > best ? best : level;
    return fd_isa_get()->name;
}

/* Columns n0 <= n < n1 of C = act(A . B + bias), rows m < M, with A in segments: row m
 * is the concatenation over s < nseg of seg[s] + m * lda, [0, seglen) each; K = nseg *
 * seglen. n0 must be a multiple of FD_NR (a panel boundary); n1 <= N. C points at
 * C[0, 0] (not at column n0), likewise bias (NULL: no bias). Bp: fd_pack_b of the whole
 * K x N matrix. act: 0 none, 1 relu, 2 clamp(lo, hi), 3 silu, 4 hardswish, 5 sigmoid
 * (fused.h). */
static inline void fd_gemm_seg(int M, int N, int nseg, const float *const *seg,
                               int seglen, int lda, const float *Bp, int n0, int n1,
                               const float *bias, float *C, int ldc, int act, float lo,
                               float hi)
{
    if (n1 > N) n1 = N;
    if (M <= 0 || n1 <= n0 || nseg <= 0 || seglen <= 0)
        return;
    const fd_isa_t *isa = fd_isa_get();
    const int MR = isa->mr, SW = isa->subw;
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
                for (int m0 = 0; m0 < M; m0 += MR) {
                    int mr = M - m0 < MR ? M - m0 : MR;
                    const float *sp[FD_MAXSEG];
                    for (int s = 0; s < ns; s++)
                        sp[s] = seg[s0 + s] + (size_t)m0 * lda + o;
                    for (int q = q0; q < q1; q++) {
                        int p0 = n0 + q * FD_NR;
                        int w = fd_panel_width(N, p0);
                        int nc = n1 - p0 < FD_NR ? n1 - p0 : FD_NR;
                        const float *B = Bp + (size_t)p0 * K + (size_t)k0 * w;
                        float *Cm = C + (size_t)m0 * ldc + p0;
                        /* column blocks of at most SW inside the panel */
                        for (int j0 = 0; j0 < w && j0 < nc; j0 += SW) {
                            int wj = w - j0 < SW ? w - j0 : SW;
                            int ncj = nc - j0 < wj ? nc - j0 : wj;
                            fd_block_fn f = wj == 32 ? isa->w32 : wj == 24 ? isa->w24
                                          : wj == 16 ? isa->w16 : isa->w8;
                            f(mr, ns, sp, sl, lda, B + j0, w, Cm + j0, ldc, ncj, load_c,
                              finish, bt[q - q0] + j0, act, lo, hi);
                        }
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif /* FD_GEMM_H */

/* ------------------------------------------------------------------------------------ */
#else  /* FD_GEMM_KERNEL_PASS: one instruction set's kernels, names suffixed FD_SFX */

#define FD_(name) FD_CAT(name, FD_SFX)

/* Register blocking of this pass. Accumulators are "big" vectors (LB lanes; up to NBMAX
 * of them per row) and at most one "small" one (LS lanes, AVX-512 only: 24 = 16 + 8,
 * 8 = 8). */
#if !defined(FD_PASS_LEVEL)
#if defined(__AVX512F__)
#define FD_PASS_LEVEL 2
#elif defined(__AVX2__) && defined(__FMA__)
#define FD_PASS_LEVEL 1
#else
#define FD_PASS_LEVEL 0
#endif
#define FD_PASS_LEVEL_AUTO
#endif
#if FD_PASS_LEVEL == 2
#define FD_P_MR 12
#define FD_P_SUBW 32
#define FD_P_LB 16
#define FD_P_LS 8
#define fd_vb fd_v16
#define fd_vs fd_v8
#elif FD_PASS_LEVEL == 1 || defined(__AVX__)
#define FD_P_MR 6
#define FD_P_SUBW 16
#define FD_P_LB 8
#define FD_P_LS 8
#define fd_vb fd_v8
#define fd_vs fd_v8
#elif defined(__aarch64__)
#define FD_P_MR 6
#define FD_P_SUBW 16
#define FD_P_LB 4
#define FD_P_LS 4
#define fd_vb fd_v4
#define fd_vs fd_v4
#else
#define FD_P_MR 6
#define FD_P_SUBW 8
#define FD_P_LB 4
#define FD_P_LS 4
#define fd_vb fd_v4
#define fd_vs fd_v4
#endif
#define FD_P_NBMAX (FD_P_SUBW / FD_P_LB)

/* -- vector kits: load, store, splat, fma, relu, clamp, partial load/store ---------- */

/* a * b + c with one rounding where the target has FMA; explicit intrinsics so that no
 * compiler's contraction choice can make two code paths round differently. relu and
 * clamp keep NaN as the scalar _act does: x86 max/min return their second operand when
 * either is NaN or both are zeros, so max(0, v) is exactly "v < 0 ? 0 : v" and
 * min(hi, v) is "v > hi ? hi : v"; elsewhere comparisons and selects. */
#define FD_KIT_COMMON(P, T, TI, TU, L)                                                    \
    FD_INLINE T FD_(P##_load)(const float *p) { return *(const TU *)p; }                 \
    FD_INLINE void FD_(P##_store)(float *p, T v) { *(TU *)p = v; }                       \
    FD_INLINE T FD_(P##_select)(TI m, T yes, T no)                                       \
    {                                                                                    \
        return (T)(((TI)yes & m) | ((TI)no & ~m));                                       \
    }                                                                                    \
    FD_INLINE T FD_(P##_load_part_mem)(const float *p, int n)                            \
    {                                                                                    \
        float t[L] = {0};                                                                \
        memcpy(t, p, (size_t)n * sizeof(float));                                         \
        return FD_(P##_load)(t);                                                         \
    }                                                                                    \
    FD_INLINE void FD_(P##_store_part_mem)(float *p, T v, int n)                         \
    {                                                                                    \
        float t[L];                                                                      \
        FD_(P##_store)(t, v);                                                            \
        memcpy(p, t, (size_t)n * sizeof(float));                                         \
    }

FD_INLINE fd_v16 FD_(fd16_splat)(float x)
{
    fd_v16 v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
    return v;
}
FD_INLINE fd_v8 FD_(fd8_splat)(float x)
{
    fd_v8 v = {x, x, x, x, x, x, x, x};
    return v;
}
FD_INLINE fd_v4 FD_(fd4_splat)(float x)
{
    fd_v4 v = {x, x, x, x};
    return v;
}

FD_KIT_COMMON(fd16, fd_v16, fd_v16i, fd_v16u, 16)
FD_KIT_COMMON(fd8, fd_v8, fd_v8i, fd_v8u, 8)
FD_KIT_COMMON(fd4, fd_v4, fd_v4i, fd_v4u, 4)

FD_INLINE fd_v16 FD_(fd16_fma)(fd_v16 a, fd_v16 b, fd_v16 c)
{
#if defined(__AVX512F__)
    return (fd_v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    return a * b + c;   /* not used outside AVX-512 passes */
#endif
}

FD_INLINE fd_v8 FD_(fd8_fma)(fd_v8 a, fd_v8 b, fd_v8 c)
{
#if defined(__FMA__) || defined(__AVX512F__)
    return (fd_v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
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

FD_INLINE fd_v4 FD_(fd4_fma)(fd_v4 a, fd_v4 b, fd_v4 c)
{
#if defined(__FMA__) || defined(__AVX512F__)
    return (fd_v4)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#elif defined(__aarch64__)
    return (fd_v4)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
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

FD_INLINE fd_v16 FD_(fd16_relu)(fd_v16 v)
{
#if defined(__AVX512F__)
    return (fd_v16)_mm512_max_ps(_mm512_setzero_ps(), (__m512)v);
#else
    fd_v16 z = FD_(fd16_splat)(0.0f);
    return FD_(fd16_select)(v < z, z, v);
#endif
}

FD_INLINE fd_v16 FD_(fd16_clamp)(fd_v16 v, float lo, float hi)
{
    fd_v16 l = FD_(fd16_splat)(lo), h = FD_(fd16_splat)(hi);
#if defined(__AVX512F__)
    return (fd_v16)_mm512_max_ps((__m512)l, _mm512_min_ps((__m512)h, (__m512)v));
#else
    return FD_(fd16_select)(v < l, l, FD_(fd16_select)(v > h, h, v));
#endif
}

FD_INLINE fd_v8 FD_(fd8_relu)(fd_v8 v)
{
#if defined(__AVX__)
    return (fd_v8)_mm256_max_ps(_mm256_setzero_ps(), (__m256)v);
#else
    fd_v8 z = FD_(fd8_splat)(0.0f);
    return FD_(fd8_select)(v < z, z, v);
#endif
}

FD_INLINE fd_v8 FD_(fd8_clamp)(fd_v8 v, float lo, float hi)
{
    fd_v8 l = FD_(fd8_splat)(lo), h = FD_(fd8_splat)(hi);
#if defined(__AVX__)
    return (fd_v8)_mm256_max_ps((__m256)l, _mm256_min_ps((__m256)h, (__m256)v));
#else
    return FD_(fd8_select)(v < l, l, FD_(fd8_select)(v > h, h, v));
#endif
}

FD_INLINE fd_v4 FD_(fd4_relu)(fd_v4 v)
{
#if defined(__SSE__)
    return (fd_v4)_mm_max_ps(_mm_setzero_ps(), (__m128)v);
#else
    fd_v4 z = FD_(fd4_splat)(0.0f);
    return FD_(fd4_select)(v < z, z, v);
#endif
}

FD_INLINE fd_v4 FD_(fd4_clamp)(fd_v4 v, float lo, float hi)
{
    fd_v4 l = FD_(fd4_splat)(lo), h = FD_(fd4_splat)(hi);
#if defined(__SSE__)
    return (fd_v4)_mm_max_ps((__m128)l, _mm_min_ps((__m128)h, (__m128)v));
#else
    return FD_(fd4_select)(v < l, l, FD_(fd4_select)(v > h, h, v));
#endif
}

FD_INLINE fd_v16 FD_(fd16_load_part)(const float *p, int n)
{
#if defined(__AVX512F__)
    return (fd_v16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#else
    return FD_(fd16_load_part_mem)(p, n);
#endif
}

FD_INLINE void FD_(fd16_store_part)(float *p, fd_v16 v, int n)
{
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
    FD_(fd16_store_part_mem)(p, v, n);
#endif
}

FD_INLINE fd_v8 FD_(fd8_load_part)(const float *p, int n)
{
#if defined(__AVX512F__) && defined(__AVX512VL__)
    return (fd_v8)_mm256_maskz_loadu_ps((__mmask8)((1u << n) - 1u), p);
#else
    return FD_(fd8_load_part_mem)(p, n);
#endif
}

FD_INLINE void FD_(fd8_store_part)(float *p, fd_v8 v, int n)
{
#if defined(__AVX512F__) && defined(__AVX512VL__)
    _mm256_mask_storeu_ps(p, (__mmask8)((1u << n) - 1u), (__m256)v);
#else
    FD_(fd8_store_part_mem)(p, v, n);
#endif
}

FD_INLINE fd_v4 FD_(fd4_load_part)(const float *p, int n)
{
    return FD_(fd4_load_part_mem)(p, n);
}

FD_INLINE void FD_(fd4_store_part)(float *p, fd_v4 v, int n)
{
    FD_(fd4_store_part_mem)(p, v, n);
}

/* the big and the small vector of this pass */
#if FD_P_LB == 16
#define FD_VB(op) FD_(FD_CAT(fd16_, op))
#elif FD_P_LB == 8
#define FD_VB(op) FD_(FD_CAT(fd8_, op))
#else
#define FD_VB(op) FD_(FD_CAT(fd4_, op))
#endif
#if FD_P_LS == 8
#define FD_VS(op) FD_(FD_CAT(fd8_, op))
#else
#define FD_VS(op) FD_(FD_CAT(fd4_, op))
#endif

FD_INLINE fd_vb FD_(fd_actb)(fd_vb v, int act, float lo, float hi)
{
    if (act == 1)
        return FD_VB(relu)(v);
    if (act == 2)
        return FD_VB(clamp)(v, lo, hi);
    return v;
}

FD_INLINE fd_vs FD_(fd_acts)(fd_vs v, int act, float lo, float hi)
{
    if (act == 1)
        return FD_VS(relu)(v);
    if (act == 2)
        return FD_VS(clamp)(v, lo, hi);
    return v;
}

/* One register block: mr rows x W columns (W <= FD_P_SUBW, a multiple of 8), over one
 * K block made of nseg segments of sl floats: row r reads seg[s] + r * lda, [0, sl) for
 * each s; B rows are ldb floats apart. nc: columns of C to store (<= W); load_c: start
 * from C (later K blocks); finish: add bias, apply act (last K block). mr and W are
 * constants at each call site. Columns: nb big vectors, then at most one small one. */
FD_INLINE void FD_(fd_block)(const int mr, const int W, int nseg, const float *const *seg,
                             int sl, ptrdiff_t lda, const float *B, int ldb, float *C,
                             ptrdiff_t ldc, int nc, int load_c, int finish,
                             const float *bias, int act, float lo, float hi)
{
    const int nb = W / FD_P_LB, hs = W % FD_P_LB != 0;
    const int so = nb * FD_P_LB;           /* first column of the small vector */
    fd_vb xb[FD_P_NBMAX][FD_P_MR];
    fd_vs xs[FD_P_MR];
    const int full = nc == W;
    if (load_c) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            const float *cr = C + r * ldc;
#pragma GCC unroll 4
            for (int v = 0; v < nb; v++) {
                int o = v * FD_P_LB, n = nc - o;
                xb[v][r] = full || n >= FD_P_LB ? FD_VB(load)(cr + o)
                         : n > 0 ? FD_VB(load_part)(cr + o, n) : FD_VB(splat)(0.0f);
            }
            if (hs) {
                int n = nc - so;
                xs[r] = full || n >= FD_P_LS ? FD_VS(load)(cr + so)
                      : n > 0 ? FD_VS(load_part)(cr + so, n) : FD_VS(splat)(0.0f);
            }
        }
    } else {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
#pragma GCC unroll 4
            for (int v = 0; v < nb; v++)
                xb[v][r] = FD_VB(splat)(0.0f);
            if (hs) xs[r] = FD_VS(splat)(0.0f);
        }
    }
    const float *b = B;
    for (int s = 0; s < nseg; s++) {
        /* rows r = 3i + j at base[i] + j * lda: four base pointers and lda, 2 * lda as
         * index registers instead of one register per row */
        const float *base[4];
        for (int i = 0; i < 4; i++)
            base[i] = seg[s] + 3 * i * lda;
        /* pointer increments, no int index: -fwrapv (Python's CFLAGS) would otherwise
         * keep the index arithmetic out of the addressing modes and spill registers */
        for (int k = 0; k < sl; k++) {
            fd_vb bb[FD_P_NBMAX];
            fd_vs bs;
#pragma GCC unroll 4
            for (int v = 0; v < nb; v++)
                bb[v] = FD_VB(load)(b + v * FD_P_LB);
            if (hs) bs = FD_VS(load)(b + so);
#pragma GCC unroll 12
            for (int r = 0; r < mr; r++) {
                float av = base[r / 3][(r % 3) * lda];
#pragma GCC unroll 4
                for (int v = 0; v < nb; v++)
                    xb[v][r] = FD_VB(fma)(FD_VB(splat)(av), bb[v], xb[v][r]);
                if (hs) xs[r] = FD_VS(fma)(FD_VS(splat)(av), bs, xs[r]);
            }
            for (int i = 0; i < 4; i++)
                base[i] += 1;
            b += ldb;
        }
    }
    /* relu and clamp in registers; the activations with an exp or a division
     * (fused.h) on the stored rows, still in L1 */
    const int act_reg = act <= FD_ACT_CLAMP ? act : FD_ACT_NONE;
    if (finish) {
        fd_vb bb[FD_P_NBMAX];
        fd_vs bs;
#pragma GCC unroll 4
        for (int v = 0; v < nb; v++)
            bb[v] = FD_VB(load)(bias + v * FD_P_LB);
        if (hs) bs = FD_VS(load)(bias + so);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
#pragma GCC unroll 4
            for (int v = 0; v < nb; v++)
                xb[v][r] = FD_(fd_actb)(xb[v][r] + bb[v], act_reg, lo, hi);
            if (hs) xs[r] = FD_(fd_acts)(xs[r] + bs, act_reg, lo, hi);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < nb; v++) {
            int o = v * FD_P_LB, n = nc - o;
            if (full || n >= FD_P_LB) FD_VB(store)(cr + o, xb[v][r]);
            else if (n > 0) FD_VB(store_part)(cr + o, xb[v][r], n);
        }
        if (hs) {
            int n = nc - so;
            if (full || n >= FD_P_LS) FD_VS(store)(cr + so, xs[r]);
            else if (n > 0) FD_VS(store_part)(cr + so, xs[r], n);
        }
    }
    if (finish && act != act_reg)
        for (int r = 0; r < mr; r++)
            fd_act_row(C + r * ldc, nc, act, lo, hi);
}

#define FD_BLOCK_CASE(MR_, W_) \
    case MR_: \
        if (MR_ <= FD_P_MR && W_ <= FD_P_SUBW) { \
            FD_(fd_block)(MR_ <= FD_P_MR ? MR_ : 1, W_ <= FD_P_SUBW ? W_ : 8, nseg, seg, \
                          sl, lda, B, ldb, C, ldc, nc, load_c, finish, bias, act, lo, hi); \
        } \
        break;
#define FD_BLOCK_FN(W_) \
    static void FD_CAT(FD_CAT(fd_block_w, W_), FD_SFX)( \
        int mr, int nseg, const float *const *seg, int sl, ptrdiff_t lda, \
        const float *B, int ldb, float *C, ptrdiff_t ldc, int nc, int load_c, \
        int finish, const float *bias, int act, float lo, float hi) \
    { \
        switch (mr) { \
            FD_BLOCK_CASE(12, W_) FD_BLOCK_CASE(11, W_) FD_BLOCK_CASE(10, W_) \
            FD_BLOCK_CASE(9, W_) FD_BLOCK_CASE(8, W_) FD_BLOCK_CASE(7, W_) \
            FD_BLOCK_CASE(6, W_) FD_BLOCK_CASE(5, W_) FD_BLOCK_CASE(4, W_) \
            FD_BLOCK_CASE(3, W_) FD_BLOCK_CASE(2, W_) FD_BLOCK_CASE(1, W_) \
            default: break; \
        } \
    }

FD_BLOCK_FN(32)
FD_BLOCK_FN(24)
FD_BLOCK_FN(16)
FD_BLOCK_FN(8)

static const fd_isa_t FD_(fd_isa) = {
    FD_P_MR, FD_P_SUBW, FD_(fd_block_w32), FD_(fd_block_w24), FD_(fd_block_w16),
    FD_(fd_block_w8),
#if FD_PASS_LEVEL == 2
    "avx512"
#elif FD_PASS_LEVEL == 1
    "avx2"
#elif defined(__aarch64__)
    "neon"
#else
    "generic"
#endif
};

#undef FD_BLOCK_FN
#undef FD_BLOCK_CASE
#undef FD_VB
#undef FD_VS
#undef fd_vb
#undef fd_vs
#undef FD_P_MR
#undef FD_P_SUBW
#undef FD_P_LB
#undef FD_P_LS
#undef FD_P_NBMAX
#undef FD_
#if defined(FD_PASS_LEVEL_AUTO)
#undef FD_PASS_LEVEL
#undef FD_PASS_LEVEL_AUTO
#endif

#endif /* FD_GEMM_KERNEL_PASS */
