/* exp for the sigmoid and SiLU kernels, written so that GCC vectorises the loops that
 * call it (no libm call, selects instead of branches): glibc's expf is a scalar call,
 * and at 5-6 ns an element it made SiLU 70 of EfficientNet-B0's 104 ms.
 *
 * Cephes' expf: n = round(x / ln 2), r = x - n ln 2 in two steps (Cody-Waite), a
 * degree-5 polynomial for exp(r), times 2^n built in the exponent bits. Within 2 ulp of
 * the exact value over the normal range; below -87.34 (where 2^n would be subnormal)
 * it returns 0, above 88.72 +inf, and NaN for NaN. Callers use it where those limits
 * cannot show in float32: 1 / (1 + exp(-x)) and x / (1 + exp(-x)) take the same values
 * with 0 as with a subnormal there. Each element is computed alone, in the same
 * operations whatever the loop around it, so dense and masked calls give the same bits.
 */
#ifndef FD_VEXP_H
#define FD_VEXP_H

#include <stdint.h>
#include <string.h>

static inline float fd_expf(float x)
{
    const float hi = 88.72283935546875f, lo = -87.33654022216796875f;
    float xc = x != x ? 0.0f : x;
    xc = xc > hi ? hi : xc;
    xc = xc < lo ? lo : xc;
    /* round to nearest by adding and taking away 1.5 * 2^23: floorf would not vectorise
     * without -fno-trapping-math, and nothing here reassociates (no -ffast-math) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y = y * scale;
    y = x > hi ? __builtin_inff() : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

/* o[i] = 1 / (1 + exp(-x[i])) */
static inline void fd_sigmoid_row(const float *x, float *o, int n)
{
    for (int i = 0; i < n; i++)
        o[i] = 1.0f / (1.0f + fd_expf(-x[i]));
}

/* o[i] = x[i] / (1 + exp(-x[i])), torch's SiLU */
static inline void fd_silu_row(const float *x, float *o, int n)
{
    for (int i = 0; i < n; i++)
        o[i] = x[i] / (1.0f + fd_expf(-x[i]));
}

#endif
