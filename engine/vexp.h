/* exp, sigmoid and SiLU in 16-lane vectors (one AVX-512 register; two AVX or four SSE
 * ones elsewhere): glibc's expf is a scalar call, and at 5-6 ns an element it made SiLU
 * 70 of EfficientNet-B0's 104 ms; a loop GCC vectorises itself still took ~2 cycles an
 * element in a convolution's store (its remainder loops and 256-bit preference).
 *
 * Cephes' expf: n = round(x / ln 2), r = x - n ln 2 in two steps (Cody-Waite), a
 * degree-5 polynomial for exp(r), times 2^n built in the exponent bits. Within 2 ulp of
 * the exact value over the normal range; below -87.34 (where 2^n would be subnormal)
 * it returns 0, above 88.72 +inf, and NaN for NaN. Callers use it where those limits
 * cannot show in float32: 1 / (1 + exp(-x)) and x / (1 + exp(-x)) take the same values
 * with 0 as with a subnormal there.
 *
 * Every element, wherever it is computed (a row of any length or start, a partial
 * vector, the scalar fd_expf, a convolution's fused store), goes through the same
 * vector function: lanes are independent, so dense and masked calls, fused and
 * standalone ops give the same bits.
 */
#ifndef FD_VEXP_H
#define FD_VEXP_H

#include <stdint.h>
#include <string.h>

typedef float fd_ev __attribute__((vector_size(64)));
typedef int32_t fd_evi __attribute__((vector_size(64)));
typedef float fd_ev_u __attribute__((vector_size(64), aligned(4), may_alias));

#define FD_EV_L 16

static inline __attribute__((always_inline)) fd_ev fd_ev_sel(fd_evi m, fd_ev yes, fd_ev no)
{
    return (fd_ev)(((fd_evi)yes & m) | ((fd_evi)no & ~m));
}

static inline __attribute__((always_inline)) fd_ev fd_ev_splat(float v)
{
    return v - (fd_ev){0};
}

static inline __attribute__((always_inline)) fd_ev fd_expf_v(fd_ev x)
{
    const fd_ev hi = fd_ev_splat(88.72283935546875f), lo = fd_ev_splat(-87.33654022216796875f);
    const fd_ev zero = fd_ev_splat(0.0f);
    fd_evi nan = x != x;
    fd_ev xc = fd_ev_sel(nan, zero, x);
    xc = fd_ev_sel(xc > hi, hi, xc);
    xc = fd_ev_sel(xc < lo, lo, xc);
    /* round to nearest by adding and taking away 1.5 * 2^23 (nothing here reassociates:
     * no -ffast-math) */
    fd_ev n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    fd_ev r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    fd_ev p = fd_ev_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    fd_ev y = p * (r * r) + r + 1.0f;
    fd_evi bits = (__builtin_convertvector(n, fd_evi) + 127) << 23;
    y = y * (fd_ev)bits;
    y = fd_ev_sel(x > hi, fd_ev_splat(__builtin_inff()), y);
    y = fd_ev_sel(x < lo, zero, y);
    return fd_ev_sel(nan, x, y);
}

/* 1 / (1 + exp(-x)) */
static inline __attribute__((always_inline)) fd_ev fd_sigmoid_v(fd_ev x)
{
    return 1.0f / (1.0f + fd_expf_v(-x));
}

/* x / (1 + exp(-x)), torch's SiLU */
static inline __attribute__((always_inline)) fd_ev fd_silu_v(fd_ev x)
{
    return x / (1.0f + fd_expf_v(-x));
}

static inline float fd_expf(float x)
{
    return fd_expf_v(fd_ev_splat(x))[0];
}

/* o[i] = f(x[i]), i < n, through the vector function f (whole vectors, then the rest in
 * a zero-padded one); o may be x */
#define FD_EV_ROW(NAME, F)                                                              \
    static inline void NAME(const float *x, float *o, int n)                           \
    {                                                                                   \
        int i = 0;                                                                      \
        for (; i + FD_EV_L <= n; i += FD_EV_L)                                          \
            *(fd_ev_u *)(o + i) = F(*(const fd_ev_u *)(x + i));                         \
        if (i < n) {                                                                    \
            float t[FD_EV_L] = {0};                                                     \
            memcpy(t, x + i, (size_t)(n - i) * sizeof(float));                          \
            fd_ev v = F(*(const fd_ev_u *)t);                                           \
            memcpy(o + i, &v, (size_t)(n - i) * sizeof(float));                         \
        }                                                                               \
    }

FD_EV_ROW(fd_sigmoid_row, fd_sigmoid_v)
FD_EV_ROW(fd_silu_row, fd_silu_v)

#endif
