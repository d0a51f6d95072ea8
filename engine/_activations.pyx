# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Activation and softmax kernels: one public ``def`` per kernel, each releasing the GIL.

Layout (engine/layout.py): the elementwise kernels see a tensor as (P, C) positions x
channels (engine.ops.positions), the per-channel and softmax kernels as (O, N, I):
outer lines, the axis the op works along, inner stride. For an image (H, W, C) and a
channel axis that is (H*W, C, 1), for a vector (F,) it is (1, F, 1), for any other
tensor the torch-layout shape split around the axis.

``pix`` (int32, optional) lists the outer indices to compute (flat output positions
oy * OW + ox of an image); the others keep what the output held. Dense and masked
calls run the very same loop body per position, so they agree bit for bit, and work
is split by position only, never by ``n_threads``.

Comparisons, not fmaxf/fminf, wherever NaN must propagate as in torch; float32
arithmetic in torch's order of operations; never -ffast-math (setup.py).
"""

from cython.parallel cimport prange

include "_pool_api.pxi"
from libc.math cimport INFINITY, erff, expf, log, pow, sqrtf, tanhf

cdef extern from "rows.h" nogil:
    void fd_prelu_row(const float *x, const float *s, float *o, int n)
    void fd_hardswish_row(const float *x, float *o, int n)
    void fd_hardsigmoid_row(const float *x, float *o, int n)
    void fd_leaky_relu_row(const float *x, float a, float *o, int n)

cdef extern from "vexp.h" nogil:
    float fd_expf(float x)
    void fd_sigmoid_row(const float *x, float *o, int n)
    void fd_silu_row(const float *x, float *o, int n)

# Unary op codes shared with engine/ops.py (UNARY).
# elements per item of work (the pool hands items to whichever thread is free)
DEF UNARY_PIECE = 16384

DEF U_LEAKY_RELU = 0
DEF U_SIGMOID = 1
DEF U_TANH = 2
DEF U_SILU = 3
DEF U_HARDSWISH = 4
DEF U_HARDSIGMOID = 5
DEF U_GELU = 6
DEF U_GELU_TANH = 7
DEF U_POW = 8
DEF U_SQUARE = 9
DEF U_CUBE = 10
DEF U_INV_SQUARE = 11
DEF U_SQRT = 12
DEF U_RSQRT = 13
DEF U_RECIPROCAL = 14

# float32 constants: a double literal would make C compute the expression in double
# (hardswish of 3e38 must overflow to inf, as torch's float32 arithmetic does).
cdef float ZERO = 0.0, HALF = 0.5, ONE = 1.0, THREE = 3.0, SIX = 6.0
cdef float SQRT1_2 = 0.70710678118654752440
cdef float GELU_BETA = 0.79788456080286535588    # sqrt(2 / pi), torch's kBeta
cdef float GELU_KAPPA = 0.044715


def unary_codes():
    """{name: code} of the ops ``unary`` computes."""
    return {"leaky_relu": U_LEAKY_RELU, "sigmoid": U_SIGMOID, "tanh": U_TANH,
            "silu": U_SILU, "hardswish": U_HARDSWISH, "hardsigmoid": U_HARDSIGMOID,
            "gelu": U_GELU, "gelu_tanh": U_GELU_TANH, "pow": U_POW, "square": U_SQUARE,
            "cube": U_CUBE, "inv_square": U_INV_SQUARE, "sqrt": U_SQRT, "rsqrt": U_RSQRT,
            "reciprocal": U_RECIPROCAL}


cdef inline float _relu6_of_x_plus_3(float v) noexcept nogil:
    v = v + THREE
    if v < ZERO:
        return ZERO
    if v > SIX:
        return SIX
    return v       # NaN stays NaN


cdef inline float _unary(float v, int op, float a) noexcept nogil:
    if op == U_LEAKY_RELU:
        return v if v > ZERO else v * a
    if op == U_SIGMOID:
        return ONE / (ONE + fd_expf(-v))
    if op == U_TANH:
        return tanhf(v)
    if op == U_SILU:
        return v / (ONE + fd_expf(-v))
    if op == U_HARDSWISH:
        return v * _relu6_of_x_plus_3(v) / SIX
    if op == U_HARDSIGMOID:
        return _relu6_of_x_plus_3(v) / SIX
    if op == U_GELU:
        return v * HALF * (ONE + erff(v * SQRT1_2))
    if op == U_GELU_TANH:
        return HALF * v * (ONE + tanhf(GELU_BETA * (v + GELU_KAPPA * (v * v * v))))
    if op == U_SQUARE:
        return v * v
    if op == U_CUBE:
        return v * v * v
    if op == U_INV_SQUARE:
        return ONE / (v * v)
    if op == U_SQRT:
        return sqrtf(v)
    if op == U_RSQRT:
        return ONE / sqrtf(v)
    if op == U_RECIPROCAL:
        return ONE / v
    return <float>pow(<double>v, <double>a)


def unary(const float[:, ::1] x, float[:, ::1] out, int op, float a, int n_threads,
          const int[::1] pix=None):
    """out[p, c] = f(x[p, c]) for the op ``op`` (unary_codes()) at positions p in pix.

    x: in (P, C); out: out (P, C); a: in, the op's parameter (leaky_relu's slope, pow's
    exponent), ignored by the others; pix: in, positions to compute (None: all).
    """
    cdef int C = out.shape[1]
    if x.shape[0] != out.shape[0] or x.shape[1] != C:
        raise ValueError("unary: inconsistent shapes")
    if op < U_LEAKY_RELU or op > U_RECIPROCAL:
        raise ValueError(f"unary: unknown op code {op}")
    cdef Py_ssize_t P = out.shape[0] if pix is None else pix.shape[0]
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    if C == 0 or P == 0:
        return
    cdef UnaryJob j
    j.x, j.ldx, j.out, j.ldo, j.pix, j.P, j.C, j.op, j.a = &x[0, 0], x.strides[0] // 4, \
        &out[0, 0], out.strides[0] // 4, pp, P, C, op, a
    j.per = max(1, UNARY_PIECE // C)
    with nogil:
        pool_run(n_threads, (P + j.per - 1) // j.per, _unary_item, &j)


ctypedef struct UnaryJob:
    const float* x
    Py_ssize_t ldx
    float* out
    Py_ssize_t ldo
    const int* pix
    Py_ssize_t P, per
    int C, op
    float a


cdef void _unary_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    cdef UnaryJob* j = <UnaryJob*>ctx
    cdef Py_ssize_t k, p
    cdef int c, C = j.C, op = j.op
    cdef const float* xr
    cdef float* o
    for k in range(item * j.per, min(j.P, (item + 1) * j.per)):
        p = j.pix[k] if j.pix != NULL else k
        xr = j.x + p * j.ldx
        o = j.out + p * j.ldo
        # whole rows, branch-free, which vectorise (engine/vexp.h, engine/rows.h)
        if op == U_SILU:
            fd_silu_row(xr, o, C)
        elif op == U_SIGMOID:
            fd_sigmoid_row(xr, o, C)
        elif op == U_HARDSWISH:
            fd_hardswish_row(xr, o, C)
        elif op == U_HARDSIGMOID:
            fd_hardsigmoid_row(xr, o, C)
        elif op == U_LEAKY_RELU:
            fd_leaky_relu_row(xr, j.a, o, C)
        else:
            for c in range(C):
                o[c] = _unary(xr[c], op, j.a)


def prelu(const float[:, :, ::1] x, const float[::1] slope, float[:, :, ::1] out,
          int n_threads, const int[::1] pix=None):
    """out[o, c, i] = x if x > 0 else x * slope[c], for o in pix.

    x: in (O, C, I), C the channel axis; slope: in (C,) (a shared slope already
    broadcast); out: out (O, C, I); pix: in, outer indices to compute (None: all).
    """
    cdef int C = x.shape[1], I = x.shape[2]
    if out.shape[0] != x.shape[0] or out.shape[1] != C or out.shape[2] != I \
            or slope.shape[0] != C:
        raise ValueError("prelu: inconsistent shapes")
    cdef Py_ssize_t P = out.shape[0] if pix is None else pix.shape[0]
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    cdef Py_ssize_t k, o
    cdef int c, i
    cdef float v
    if P == 0:
        return
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    if I == 1:                        # an image's channels: one contiguous row a position
        for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
            o = pp[k] if pp != NULL else k
            fd_prelu_row(xp + o * C, &slope[0], op + o * C, C)
        return
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        o = pp[k] if pp != NULL else k
        for c in range(C):
            for i in range(I):
                v = x[o, c, i]
                out[o, c, i] = v if v > ZERO else v * slope[c]


cdef void _softmax_line(const float* x, float* y, int n, Py_ssize_t stride,
                        bint log_) noexcept nogil:
    # Max by comparison: NaN never wins it, but exp(NaN - m) then makes the sum NaN, and
    # +inf (inf - inf) or a row of -inf (-inf + inf) do the same: the row is NaN, as in
    # torch. The sum is accumulated in double, in index order.
    cdef float m = -INFINITY, v
    cdef double s = 0.0, ls
    cdef int j
    for j in range(n):
        v = x[j * stride]
        if v > m:
            m = v
    if log_:
        for j in range(n):
            s += expf(x[j * stride] - m)
        ls = log(s)
        for j in range(n):
            y[j * stride] = <float>(<double>(x[j * stride] - m) - ls)
    else:
        for j in range(n):
            v = expf(x[j * stride] - m)
            y[j * stride] = v
            s += v
        for j in range(n):
            y[j * stride] = <float>(<double>y[j * stride] / s)


def softmax(const float[:, :, ::1] x, float[:, :, ::1] out, bint log_, int n_threads,
            const int[::1] pix=None):
    """Softmax (log_ False) or log-softmax (log_ True) along axis 1 of (O, N, I).

    x: in (O, N, I); out: out (O, N, I), not x; pix: in, outer indices o to compute
    (every inner i of each), None: all.
    """
    cdef int N = x.shape[1], I = x.shape[2]
    if out.shape[0] != x.shape[0] or out.shape[1] != N or out.shape[2] != I:
        raise ValueError("softmax: inconsistent shapes")
    if out.shape[0] == 0 or N == 0 or I == 0:
        return
    if <size_t>&out[0, 0, 0] == <size_t>&x[0, 0, 0]:
        raise ValueError("softmax: out must not be x")
    cdef Py_ssize_t P = out.shape[0] if pix is None else pix.shape[0]
    cdef const int* pp = NULL if pix is None or P == 0 else &pix[0]
    cdef Py_ssize_t k, o, i, L = P * I
    for k in prange(L, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        o = pp[k // I] if pp != NULL else k // I
        i = k % I
        _softmax_line(&x[o, 0, i], &out[o, 0, i], N, I, log_)
