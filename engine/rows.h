/* Row loops of the per-position kernels, branch-free so that GCC vectorises them and
 * the remainder of a row (an image with 10 channels: 10 of a 16-wide vector) takes no
 * branch either: selects are done on the bits. With a data-dependent branch per element
 * (half the signs of a PReLU's input negative) the mispredictions made PReLU 3.6 ns an
 * element and a 2x2 max pool 1.6 ns an output, the two slowest nodes of MTCNN's PNet.
 * Each element's value is the branchy version's, NaN included, and does not depend on
 * the row's length or start.
 */
#ifndef FD_ROWS_H
#define FD_ROWS_H

#include <stdint.h>
#include <string.h>

static inline float fd_select(int take_a, float a, float b)
{
    uint32_t ua, ub, m = (uint32_t)0 - (uint32_t)(take_a != 0);
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    ua = (ua & m) | (ub & ~m);
    memcpy(&a, &ua, 4);
    return a;
}

/* o[j] = x[j] > 0 ? x[j] : x[j] * s[j]  (NaN: x * s, which is NaN) */
static inline void fd_prelu_row(const float *restrict x, const float *restrict s,
                                float *restrict o, int n)
{
    for (int j = 0; j < n; j++) {
        float v = x[j];
        o[j] = fd_select(v > 0.0f, v, v * s[j]);
    }
}

/* o[j] = max(o[j], x[j]) where NaN wins and stays */
static inline void fd_max_row(const float *restrict x, float *restrict o, int n)
{
    for (int j = 0; j < n; j++) {
        float v = x[j], m = o[j];
        o[j] = fd_select(v > m || v != v, v, m);
    }
}

/* relu6(v + 3) in float32; NaN stays NaN */
static inline float fd_relu6_plus3(float v)
{
    float r = v + 3.0f;
    r = fd_select(r < 0.0f, 0.0f, r);
    return fd_select(r > 6.0f, 6.0f, r);
}

/* hardswish: v * relu6(v + 3) / 6, torch's order of operations */
static inline void fd_hardswish_row(const float *restrict x, float *restrict o, int n)
{
    for (int j = 0; j < n; j++) {
        float v = x[j];
        o[j] = v * fd_relu6_plus3(v) / 6.0f;
    }
}

/* hardsigmoid: relu6(v + 3) / 6 */
static inline void fd_hardsigmoid_row(const float *restrict x, float *restrict o, int n)
{
    for (int j = 0; j < n; j++)
        o[j] = fd_relu6_plus3(x[j]) / 6.0f;
}

/* leaky_relu: v > 0 ? v : v * a */
static inline void fd_leaky_relu_row(const float *restrict x, float a, float *restrict o,
                                     int n)
{
    for (int j = 0; j < n; j++) {
        float v = x[j];
        o[j] = fd_select(v > 0.0f, v, v * a);
    }
}

#endif
