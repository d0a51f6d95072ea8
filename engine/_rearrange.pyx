# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Rearranging and normalising kernels: constant pad, slice of an image, group norm.

Layout as in _kernels.pyx: an image is a C-contiguous (H, W, C) float32 array. The
pad and slice kernels take ``pix``, the flat output positions (oy * OW + ox) to write
(all when None); each position is written by the same code in both paths, so dense
and masked agree bit for bit. Group norm is global: it is always computed whole. Work
is split in pieces that depend only on the shapes, never on ``n_threads``.
"""

import numpy as np
from cython.parallel cimport prange

include "_pool_api.pxi"
from libc.math cimport sqrt
from libc.string cimport memcpy

# Group norm's statistics are summed per chunk of this many positions, then the
# chunks' sums in chunk order: the result does not depend on the number of threads.
DEF GN_CHUNK = 256


def pad(const float[:, :, ::1] x, float[:, :, ::1] out, int pt, int pl, float value,
        int n_threads, const int[::1] pix=None):
    """Constant padding of H and W.

    x      in   (H, W, C)
    out    out  (OH, OW, C), OH >= H + pt, OW >= W + pl: out[oy, ox] = x[oy - pt, ox - pl]
                inside the input, ``value`` elsewhere; at the positions in pix (all
                when None)
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1]
    if out.shape[2] != C or OH < H + pt or OW < W + pl or pt < 0 or pl < 0:
        raise ValueError("pad: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    if P == 0 or C == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k, m
    cdef int iy, ix, c
    cdef float* o
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        m = pp[k] if pp != NULL else k
        iy = <int>(m // OW) - pt
        ix = <int>(m % OW) - pl
        o = op + m * C
        if iy >= 0 and iy < H and ix >= 0 and ix < W:
            memcpy(o, xp + (<Py_ssize_t>iy * W + ix) * C, C * sizeof(float))
        else:
            for c in range(C):
                o[c] = value


def slice_image(const float[:, :, ::1] x, float[:, :, ::1] out, int axis, int start,
                int step, int n_threads, const int[::1] pix=None):
    """x[start::step] along one torch axis of an image (1 = C, 2 = H, 3 = W).

    x      in   (H, W, C)
    out    out  (OH, OW, OC): out[oy, ox, oc] = x[iy, ix, ic] with the sliced axis'
                index start + o * step and the others equal; at the positions in pix
    """
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2]
    cdef int OH = out.shape[0], OW = out.shape[1], OC = out.shape[2]
    cdef int y0 = 0, sy = 1, x0 = 0, sx = 1, c0 = 0, sc = 1
    if axis == 1:
        c0, sc = start, step
    elif axis == 2:
        y0, sy = start, step
    elif axis == 3:
        x0, sx = start, step
    else:
        raise ValueError("slice_image: axis must be 1, 2 or 3")
    if (start < 0 or step < 1 or OH < 1 or OW < 1 or OC < 1
            or (axis != 2 and OH != H) or (axis != 3 and OW != W) or (axis != 1 and OC != C)
            or y0 + <long long>(OH - 1) * sy >= H or x0 + <long long>(OW - 1) * sx >= W
            or c0 + <long long>(OC - 1) * sc >= C):
        raise ValueError("slice_image: inconsistent shapes")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    if P == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t k, m
    cdef int oy, ox, c
    cdef float* o
    cdef const float* xs
    for k in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        m = pp[k] if pp != NULL else k
        oy = <int>(m // OW)
        ox = <int>(m % OW)
        o = op + m * OC
        xs = xp + (<Py_ssize_t>(y0 + oy * sy) * W + x0 + ox * sx) * C + c0
        if sc == 1:
            memcpy(o, xs, OC * sizeof(float))
        else:
            for c in range(OC):
                o[c] = xs[<Py_ssize_t>c * sc]


def group_norm(const float[:, ::1] x, const float[::1] weight, const float[::1] bias,
               float[:, ::1] out, int num_groups, double eps, int n_threads):
    """Group normalisation, statistics in double (two passes: mean, then the biased
    variance around it), then y = (x - mean) * (rstd * weight[c]) + bias[c] in double.

    x       in   (P, C): positions by channels (an image's (H*W, C), a vector's (1, C))
    weight  in   (C,)
    bias    in   (C,)
    out     out  (P, C), every element
    """
    cdef Py_ssize_t P = x.shape[0]
    cdef int C = x.shape[1], G = num_groups
    if (G < 1 or C % G or out.shape[0] != P or out.shape[1] != C or weight.shape[0] != C
            or bias.shape[0] != C):
        raise ValueError("group_norm: inconsistent shapes")
    if P == 0 or C == 0:
        return
    cdef int CG = C // G
    cdef Py_ssize_t nchunk = (P + GN_CHUNK - 1) // GN_CHUNK
    cdef double[:, ::1] part = np.zeros((nchunk, G), np.float64)
    cdef double[::1] mean = np.zeros(G, np.float64)
    cdef double[::1] scale = np.empty(C, np.float64)
    cdef double[::1] shift = np.empty(C, np.float64)
    cdef const float* xp = &x[0, 0]
    cdef float* op = &out[0, 0]
    cdef double n = <double>P * CG
    cdef Py_ssize_t ch, p, p1, q
    cdef int g, c
    cdef double s, d
    # pass 1: sums per chunk and group
    for ch in prange(nchunk, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p1 = min(P, (ch + 1) * GN_CHUNK)
        for g in range(G):
            s = 0.0
            for p in range(ch * GN_CHUNK, p1):
                for c in range(g * CG, g * CG + CG):
                    s = s + xp[p * C + c]
            part[ch, g] = s
    for g in range(G):
        s = 0.0
        for q in range(nchunk):
            s += part[q, g]
        mean[g] = s / n
    # pass 2: squared deviations from the mean
    for ch in prange(nchunk, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        p1 = min(P, (ch + 1) * GN_CHUNK)
        for g in range(G):
            s = 0.0
            for p in range(ch * GN_CHUNK, p1):
                for c in range(g * CG, g * CG + CG):
                    d = xp[p * C + c] - mean[g]
                    s = s + d * d
            part[ch, g] = s
    for g in range(G):
        s = 0.0
        for q in range(nchunk):
            s += part[q, g]
        d = 1.0 / sqrt(s / n + eps)
        for c in range(g * CG, g * CG + CG):
            scale[c] = d * weight[c]
            shift[c] = bias[c]
    # pass 3: normalise
    for p in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        for c in range(C):
            op[p * C + c] = <float>((xp[p * C + c] - mean[c // CG]) * scale[c] + shift[c])


def concat_spatial(list xs, const int[::1] src, const int[::1] loc, int axis,
                   float[:, :, ::1] out, int n_threads, const int[::1] pix=None):
    """Concatenation of images along H (axis 0) or W (axis 1), at pix.

    xs   in   list of (H_k, W_k, C) arrays, equal but for the concatenated axis
    src  in   per output row (axis 0) or column (axis 1): the input k it comes from
    loc  in   ... and its row or column in that input
    out  out  (OH, OW, C)
    """
    cdef int n_in = len(xs), k
    cdef int OH = out.shape[0], OW = out.shape[1], C = out.shape[2]
    cdef Py_ssize_t[::1] ptrs = np.empty(max(1, n_in), np.intp)
    cdef int[::1] widths = np.empty(max(1, n_in), np.intc)
    cdef int[::1] lens = np.empty(max(1, n_in), np.intc)
    cdef const float[:, :, ::1] v
    if axis not in (0, 1) or src.shape[0] != (OH if axis == 0 else OW) \
            or loc.shape[0] != src.shape[0]:
        raise ValueError("concat_spatial: inconsistent shapes")
    for k in range(n_in):
        v = xs[k]
        if v.shape[2] != C or (axis == 0 and v.shape[1] != OW) or (axis == 1 and v.shape[0] != OH):
            raise ValueError("concat_spatial: inconsistent shapes")
        ptrs[k] = <Py_ssize_t>&v[0, 0, 0]
        widths[k] = v.shape[1]
        lens[k] = v.shape[axis]
    cdef Py_ssize_t i
    for i in range(src.shape[0]):
        if src[i] < 0 or src[i] >= n_in or loc[i] < 0 or loc[i] >= lens[src[i]]:
            raise ValueError("concat_spatial: source table out of range")
    cdef Py_ssize_t P = ((<Py_ssize_t>OH * OW) if pix is None else pix.shape[0])
    if P == 0 or C == 0:
        return
    cdef const int* pp = NULL if pix is None else &pix[0]
    cdef float* op = &out[0, 0, 0]
    cdef Py_ssize_t m
    cdef int oy, ox, iy, ix
    for i in prange(P, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        m = pp[i] if pp != NULL else i
        oy = <int>(m // OW)
        ox = <int>(m % OW)
        if axis == 0:
            k = src[oy]
            iy = loc[oy]
            ix = ox
        else:
            k = src[ox]
            iy = oy
            ix = loc[ox]
        memcpy(op + m * C, (<float*>ptrs[k]) + (<Py_ssize_t>iy * widths[k] + ix) * C,
               C * sizeof(float))
