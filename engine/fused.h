/* Activations fused into the store of a convolution (conv2d, depthwise, transposed),
 * applied in place to a row of n just-computed values, still in L1.
 *
 * Codes (engine/ops.py ACTIVATIONS, formats/SPEC.md conv2d `activation`):
 *   0 none, 1 relu, 2 clamp(lo, hi), 3 silu, 4 hardswish, 5 sigmoid.
 * Each element gets exactly the operations of the standalone op's kernel (rows.h,
 * vexp.h), so a fused node has the bits of the conv followed by the activation node,
 * NaN included, whatever n and wherever the row starts.
 */
#ifndef FD_FUSED_H
#define FD_FUSED_H

#include "rows.h"
#include "vexp.h"

enum { FD_ACT_NONE = 0, FD_ACT_RELU = 1, FD_ACT_CLAMP = 2, FD_ACT_SILU = 3,
       FD_ACT_HARDSWISH = 4, FD_ACT_SIGMOID = 5 };

/* not always_inline: gemm.h calls it from kernels compiled for other instruction sets */
static inline void fd_act_row(float *o, int n, int act, float lo, float hi)
{
    switch (act) {
    case FD_ACT_RELU:
        for (int j = 0; j < n; j++)
            o[j] = fd_select(o[j] < 0.0f, 0.0f, o[j]);
        break;
    case FD_ACT_CLAMP:
        for (int j = 0; j < n; j++) {
            float v = o[j];
            v = fd_select(v < lo, lo, v);
            o[j] = fd_select(v > hi, hi, v);
        }
        break;
    /* the standalone ops' row functions, in place (each element alone) */
    case FD_ACT_SILU:
        fd_silu_row(o, o, n);
        break;
    case FD_ACT_HARDSWISH:
        for (int j = 0; j < n; j++)
            o[j] = o[j] * fd_relu6_plus3(o[j]) / 6.0f;
        break;
    case FD_ACT_SIGMOID:
        fd_sigmoid_row(o, o, n);
        break;
    default:
        break;
    }
}

#endif
