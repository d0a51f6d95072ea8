# The fused activation of conv2d and conv_transpose2d, shared by the kernel modules
# that include this file (engine/ops.py: ACTIVATIONS and engine/fused.h hold the same
# codes).

cdef extern from "fused.h" nogil:
    void fd_act_row(float *o, int n, int act, float lo, float hi)

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_CLAMP = 2


cdef inline float _act(float v, int act, float lo, float hi) noexcept nogil:
    # Comparisons, not fmaxf/fminf: NaN must stay NaN, as in torch (and as gemm.h does).
    if act == ACT_RELU:
        return 0.0 if v < 0 else v
    if act == ACT_CLAMP:
        if v < lo:
            return lo
        if v > hi:
            return hi
    elif act > ACT_CLAMP:      # silu, hardswish, sigmoid: fused.h's arithmetic
        fd_act_row(&v, 1, act, lo, hi)
    return v
