/* Depthwise convolution (groups == Cin == Cout) in NHWC, on spans of output pixels.
 *
 * Determinism (what the incremental path relies on): every output element is
 *     acc = bias[c];  for each tap (i, j) in row-major order whose input position is
 *     inside x:  acc = fma(x[iy, ix, c], w[i, j, c], acc);  out = act(acc)
 * one fused multiply-add per tap, whatever span, register block or thread computes it,
 * so a dense pass and any set of masked positions give the same bits. Taps that fall in
 * the padding are skipped (not added as 0 * w), in the dense and the masked path alike.
 *
 * Speed: channels go 16 at a time in a vector (AVX-512 zmm, or two AVX ymm), and a run
 * of PX output pixels of one row shares each tap's weight vector with PX accumulators in
 * registers; pixels whose taps are all inside x (the interior of a row) take no bounds
 * checks. The old loop (one channel row per tap, accumulated in memory) ran at 3-8
 * GMAC/s on one core; onnxruntime's NCHWc kernel at 15-20.
 *
 * act: 0 none, 1 relu, 2 clamp(lo, hi), 3 silu, 4 hardswish, 5 sigmoid (fused.h).
 */
#ifndef FD_DEPTHWISE_H
#define FD_DEPTHWISE_H

#include <stddef.h>
#include <string.h>

#include "fused.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef float fd_dwv __attribute__((vector_size(64)));
typedef float fd_dwv_u __attribute__((vector_size(64), aligned(4), may_alias));

#define FD_DW_L 16   /* channels per vector */
#define FD_DW_PX 4   /* output pixels per register block */

static inline __attribute__((always_inline)) fd_dwv fd_dw_load(const float *p)
{
    return *(const fd_dwv_u *)p;
}

static inline __attribute__((always_inline)) void fd_dw_store(float *p, fd_dwv v)
{
    *(fd_dwv_u *)p = v;
}

/* the first n (< FD_DW_L) lanes; the others 0 on load, untouched on store */
static inline __attribute__((always_inline)) fd_dwv fd_dw_load_n(const float *p, int n)
{
#if defined(__AVX512F__)
    return (fd_dwv)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#else
    float t[FD_DW_L] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return fd_dw_load(t);
#endif
}

static inline __attribute__((always_inline)) void fd_dw_store_n(float *p, fd_dwv v, int n)
{
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
    float t[FD_DW_L];
    fd_dw_store(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
#endif
}

/* n == FD_DW_L: a whole vector; fewer: the first n lanes */
#define FD_DW_LD(p, n) ((n) == FD_DW_L ? fd_dw_load(p) : fd_dw_load_n((p), (n)))
#define FD_DW_ST(p, v, n) \
    do { if ((n) == FD_DW_L) fd_dw_store((p), (v)); else fd_dw_store_n((p), (v), (n)); } while (0)

typedef int fd_dwvi __attribute__((vector_size(64)));

/* relu and clamp in registers, as fused.h does them (NaN stays NaN); the others
 * (silu, hardswish, sigmoid) once per register block of pixels, on the stored values */
static inline __attribute__((always_inline)) fd_dwv fd_dw_act(fd_dwv v, int act, float lo,
                                                              float hi)
{
    if (act == FD_ACT_RELU) {
        fd_dwv z = {0};
        fd_dwvi m = v < z;
        return (fd_dwv)(((fd_dwvi)z & m) | ((fd_dwvi)v & ~m));
    }
    if (act == FD_ACT_CLAMP) {
        fd_dwv l = lo - (fd_dwv){0}, h = hi - (fd_dwv){0};
        fd_dwvi m = v < l;
        v = (fd_dwv)(((fd_dwvi)l & m) | ((fd_dwvi)v & ~m));
        m = v > h;
        return (fd_dwv)(((fd_dwvi)h & m) | ((fd_dwvi)v & ~m));
    }
    return v;
}

/* a * b + c, one rounding: explicit so that no contraction choice differs between code
 * paths (all element code below goes through this) */
static inline __attribute__((always_inline)) fd_dwv fd_dw_fma(fd_dwv a, fd_dwv b, fd_dwv c)
{
#if defined(__AVX512F__)
    return (fd_dwv)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    fd_dwv r;
    for (int l = 0; l < FD_DW_L; l++)
        r[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return r;
#endif
}

/* PX interior output pixels ox .. ox + PX - 1 of one output row (orow: out[oy, 0, 0]),
 * channels [c0, c0 + FD_DW_L): every tap inside the row, PX accumulators */
static inline __attribute__((always_inline)) void fd_dw_block(
    const float *x, int H, int W, int C, const float *w, const float *bias, float *orow,
    int oy, int ox, int c0, int nc, int kh, int kw, int sh, int sw, int pt, int pl, int dh,
    int dw, int act, float lo, float hi)
{
    fd_dwv acc[FD_DW_PX];
    const fd_dwv b = FD_DW_LD(bias + c0, nc);
    for (int p = 0; p < FD_DW_PX; p++)
        acc[p] = b;
    for (int i = 0; i < kh; i++) {
        int iy = oy * sh - pt + i * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *xr = x + ((size_t)iy * W + (size_t)(ox * sw - pl)) * C + c0;
        const float *wr = w + (size_t)i * kw * C + c0;
        for (int j = 0; j < kw; j++) {
            fd_dwv wv = FD_DW_LD(wr + (size_t)j * C, nc);
            const float *xj = xr + (size_t)j * dw * C;
#pragma GCC unroll 4
            for (int p = 0; p < FD_DW_PX; p++)
                acc[p] = fd_dw_fma(FD_DW_LD(xj + (size_t)p * sw * C, nc), wv, acc[p]);
        }
    }
    for (int p = 0; p < FD_DW_PX; p++) {
        float *o = orow + (size_t)(ox + p) * C + c0;
        FD_DW_ST(o, fd_dw_act(acc[p], act, lo, hi), nc);
    }
}

/* One output pixel (oy, ox), channels [c0, c0 + FD_DW_L), taps checked */
static inline __attribute__((always_inline)) void fd_dw_pixel(
    const float *x, int H, int W, int C, const float *w, const float *bias, float *orow,
    int oy, int ox, int c0, int nc, int kh, int kw, int sh, int sw, int pt, int pl, int dh,
    int dw, int act, float lo, float hi)
{
    fd_dwv acc = FD_DW_LD(bias + c0, nc);
    for (int i = 0; i < kh; i++) {
        int iy = oy * sh - pt + i * dh;
        if (iy < 0 || iy >= H)
            continue;
        for (int j = 0; j < kw; j++) {
            int ix = ox * sw - pl + j * dw;
            if (ix < 0 || ix >= W)
                continue;
            acc = fd_dw_fma(FD_DW_LD(x + ((size_t)iy * W + ix) * C + c0, nc),
                            FD_DW_LD(w + (size_t)(i * kw + j) * C + c0, nc), acc);
        }
    }
    float *o = orow + (size_t)ox * C + c0;
    FD_DW_ST(o, fd_dw_act(acc, act, lo, hi), nc);
}

/* Output pixels ox0 <= ox < ox1 of output row oy, every channel. x: (H, W, C); w: (kh *
 * kw, C) taps, channels contiguous; out: (OH, OW, C). xi_lo, xi_hi: the output columns
 * whose kw taps are all inside x (fd_dw_interior). */
static inline void fd_dw_span(const float *x, int H, int W, int C, const float *w,
                              const float *bias, float *out, int OW, int oy, int ox0,
                              int ox1, int kh, int kw, int sh, int sw, int pt, int pl,
                              int dh, int dw, int xi_lo, int xi_hi, int act, float lo,
                              float hi)
{
    float *orow = out + (size_t)oy * OW * C;
    const int cv = C - C % FD_DW_L;   /* channels in whole vectors */
    int ox = ox0;
    /* pixels outermost, channels inside: x and out are read and written in order */
    while (ox < ox1) {
        /* a register block of PX interior pixels, or one pixel with its taps checked;
         * whole channel vectors (nc a constant: the specialised code), then the rest */
        const int block = ox >= xi_lo && ox + FD_DW_PX <= xi_hi && ox + FD_DW_PX <= ox1;
        const int n = block ? FD_DW_PX : 1;
#define FD_DW_CHANNELS(c0, nc)                                                           \
    do {                                                                                 \
        if (block)                                                                       \
            fd_dw_block(x, H, W, C, w, bias, orow, oy, ox, c0, nc, kh, kw, sh, sw, pt,  \
                        pl, dh, dw, act, lo, hi);                                       \
        else                                                                             \
            fd_dw_pixel(x, H, W, C, w, bias, orow, oy, ox, c0, nc, kh, kw, sh, sw, pt,  \
                        pl, dh, dw, act, lo, hi);                                       \
    } while (0)
        for (int c0 = 0; c0 < cv; c0 += FD_DW_L)
            FD_DW_CHANNELS(c0, FD_DW_L);
        if (cv < C)
            FD_DW_CHANNELS(cv, C - cv);
#undef FD_DW_CHANNELS
        if (act > FD_ACT_CLAMP)   /* n pixels x C channels, contiguous, still in L1 */
            fd_act_row(orow + (size_t)ox * C, n * C, act, lo, hi);
        ox += n;
    }
}

/* The output columns [lo, hi) whose k taps all fall inside an axis of n inputs. */
static inline void fd_dw_interior(int n, int on, int k, int s, int p, int d, int *lo,
                                  int *hi)
{
    *lo = (p + s - 1) / s;
    int last = n - 1 - (k - 1) * d + p;
    *hi = last >= 0 ? last / s + 1 : 0;
    if (*hi > on) *hi = on;
    if (*hi < *lo) *hi = *lo;
}

#endif
