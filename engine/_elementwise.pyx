# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Broadcasting arithmetic on images: out = a OP b, one position at a time.

Operands are engine-layout images (H, W, C) or broadcast views of them: each operand
comes as a pointer with an element stride per axis (0 along an axis it broadcasts
over), so squeeze-excitation's (1, 1, C) scale, a (H, W, 1) attention map and a scalar
all run through the same loop without being expanded in memory. The per-element
arithmetic is one IEEE float32 operation, as torch's, in the same order for the dense
and the masked path, so both give the same bits.
"""

include "_pool_api.pxi"

# positions per item of work (the pool hands items to whichever thread is free)
DEF PIECE = 512

DEF OP_ADD = 0
DEF OP_SUB = 1
DEF OP_MUL = 2
DEF OP_DIV = 3

OPS = {"add": OP_ADD, "sub": OP_SUB, "mul": OP_MUL, "div": OP_DIV}


cdef inline float _apply(float x, float y, int op) noexcept nogil:
    if op == OP_ADD:
        return x + y
    if op == OP_SUB:
        return x - y
    if op == OP_MUL:
        return x * y
    return x / y


cdef void _row(const float* a, Py_ssize_t sa, const float* b, Py_ssize_t sb, float* o,
               int C, int op) noexcept nogil:
    """C channels of one position; the unit-stride cases vectorise."""
    cdef int c
    if sa == 1 and sb == 1:
        if op == OP_ADD:
            for c in range(C):
                o[c] = a[c] + b[c]
        elif op == OP_SUB:
            for c in range(C):
                o[c] = a[c] - b[c]
        elif op == OP_MUL:
            for c in range(C):
                o[c] = a[c] * b[c]
        else:
            for c in range(C):
                o[c] = a[c] / b[c]
    elif sa == 1 and sb == 0:
        if op == OP_MUL:
            for c in range(C):
                o[c] = a[c] * b[0]
        else:
            for c in range(C):
                o[c] = _apply(a[c], b[0], op)
    else:
        for c in range(C):
            o[c] = _apply(a[c * sa], b[c * sb], op)


def binary(object a, const Py_ssize_t[::1] sa, object b, const Py_ssize_t[::1] sb,
           float[:, :, ::1] out, int op, int n_threads, const int[::1] pix=None):
    """out[y, x, c] = a[y*sa0 + x*sa1 + c*sa2] OP b[...] for the positions in pix.

    a, b    in   float32 arrays (kept alive by the caller) whose data the strides index
    sa, sb  in   (3,) element strides per output axis (y, x, c); 0 where broadcast
    out     out  (H, W, C): the positions in pix (all when None) are written
    op      in   OPS[name]
    """
    cdef const float[::1] av = a.reshape(-1)
    cdef const float[::1] bv = b.reshape(-1)
    cdef int W = out.shape[1], C = out.shape[2]
    if sa.shape[0] != 3 or sb.shape[0] != 3 or not 0 <= op <= OP_DIV:
        raise ValueError("binary: bad strides or op")
    cdef Py_ssize_t P = ((<Py_ssize_t>out.shape[0] * W) if pix is None else pix.shape[0])
    if P == 0 or C == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* ap = &av[0]
    cdef const float* bp = &bv[0]
    cdef float* op_ = &out[0, 0, 0]
    cdef BinaryJob j
    j.a, j.b, j.out, j.pix, j.P, j.W, j.C, j.op = ap, bp, op_, pp, P, W, C, op
    j.a0, j.a1, j.a2, j.b0, j.b1, j.b2 = sa[0], sa[1], sa[2], sb[0], sb[1], sb[2]
    with nogil:
        pool_run(n_threads, (P + PIECE - 1) // PIECE, _binary_item, &j)


ctypedef struct BinaryJob:
    const float* a
    const float* b
    float* out
    const int* pix
    Py_ssize_t P, a0, a1, a2, b0, b1, b2
    int W, C, op


cdef void _binary_item(void* ctx, ptrdiff_t item, int slot) noexcept nogil:
    """Positions [item * PIECE, ...) of binary()."""
    cdef BinaryJob* j = <BinaryJob*>ctx
    cdef Py_ssize_t k, m, y, x
    for k in range(item * PIECE, min(j.P, (item + 1) * PIECE)):
        m = j.pix[k] if j.pix != NULL else k
        y = m // j.W
        x = m % j.W
        _row(j.a + y * j.a0 + x * j.a1, j.a2, j.b + y * j.b0 + x * j.b1, j.b2,
             j.out + m * j.C, j.C, j.op)
