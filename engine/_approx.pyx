# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-layer change thresholds (the approximate mode, approx.py): hold small changes back.

A node's recomputed position propagates only when some channel moved by more than the
node's threshold from the value its cache held; otherwise the old value is put back and
the position leaves the node's output mask. The comparison is ``not (d <= t)``, so a
NaN anywhere counts as moved (as in the change detector). Rows are positions: (H*W, C)
for images, one row holding the whole tensor for the others.
"""

from cython.parallel cimport prange

include "_pool_api.pxi"
from libc.math cimport fabsf, signbit

ctypedef unsigned char u8

# Below this many floats a loop runs on one thread: these loops are memory-bound copies
# and compares, and a parallel region on a busy machine can wait a scheduler quantum for
# its second thread (measured: up to 10-25 ms per call on 2 shared cores).
DEF SERIAL_BELOW = 1 << 18


cdef inline int _threads(Py_ssize_t n, int n_threads) nogil:
    return 1 if n < SERIAL_BELOW else n_threads


def gather_rows(const float[:, ::1] a, const int[::1] pix, float[:, ::1] out,
                int n_threads):
    """out[i] = a[pix[i]]: the cached rows a masked recompute is about to overwrite."""
    cdef Py_ssize_t n = pix.shape[0], C = a.shape[1], i, c, p
    if out.shape[0] < n or out.shape[1] != C:
        raise ValueError("gather_rows: inconsistent shapes")
    cdef int nt = _threads(n * C, n_threads)
    for i in prange(n, nogil=True, num_threads=pool_threads(nt), schedule="static"):
        p = pix[i]
        for c in range(C):
            out[i, c] = a[p, c]


cdef inline bint _moved(const float* new, const float* old, Py_ssize_t C, float t) nogil:
    cdef Py_ssize_t c
    cdef float d
    for c in range(C):
        d = fabsf(new[c] - old[c])
        if not (d <= t):
            # inf - inf is NaN: an unchanged infinite value has not moved
            if new[c] == old[c]:
                continue
            return True
        if d == 0 and signbit(new[c]) != signbit(old[c]):
            # +0 -> -0 moved by nothing, but 1 / x tells them apart: with t = 0 this
            # keeps the exact mode's bits
            return True
    return False


def suppress_rows(float[:, ::1] a, const float[:, ::1] old, const int[::1] pix, float t,
                  u8[::1] mask, int n_threads):
    """Masked recompute: for each recomputed row p = pix[i] that did not move by more
    than ``t`` from old[i], put old[i] back and clear mask[p]. Returns how many."""
    cdef Py_ssize_t n = pix.shape[0], C = a.shape[1], i, c, p
    cdef Py_ssize_t k = 0
    if old.shape[0] < n or old.shape[1] != C:
        raise ValueError("suppress_rows: inconsistent shapes")
    cdef int nt = _threads(n * C, n_threads)
    for i in prange(n, nogil=True, num_threads=pool_threads(nt), schedule="static"):
        p = pix[i]
        if not _moved(&a[p, 0], &old[i, 0], C, t):
            for c in range(C):
                a[p, c] = old[i, c]
            mask[p] = 0
            k += 1
    return k


def suppress_dense(float[:, ::1] a, const float[:, ::1] old, u8[::1] mask, float t,
                   int n_threads):
    """Dense recompute with dirty ``mask``: clean rows get their old values back (they
    were not to change); dirty rows within ``t`` of old too, and leave the mask.
    Returns the number of dirty rows held back."""
    cdef Py_ssize_t n = a.shape[0], C = a.shape[1], p, c
    cdef Py_ssize_t k = 0
    if old.shape[0] != n or old.shape[1] != C or mask.shape[0] != n:
        raise ValueError("suppress_dense: inconsistent shapes")
    cdef int nt = _threads(n * C, n_threads)
    for p in prange(n, nogil=True, num_threads=pool_threads(nt), schedule="static"):
        if mask[p] == 0 or not _moved(&a[p, 0], &old[p, 0], C, t):
            for c in range(C):
                a[p, c] = old[p, c]
            if mask[p]:
                mask[p] = 0
                k += 1
    return k
