# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Masks of the incremental path: change detection and change propagation.

The detector compares a new input with the stream's reference (per pixel, the max over
channels of |x - reference|, then a per-pixel or per-tile threshold); propagation
dilates a node's input mask by the exact input ranges of its output rows and columns
(receptive.py). The op kernels themselves, dense and masked, are in _kernels.pyx.
"""

cimport cython
from cython.parallel cimport prange

include "_pool_api.pxi"
from libc.string cimport memcpy, memset

import numpy as np

ctypedef unsigned char u8

cdef extern from "detect.h" nogil:
    void fd_maxdiff_u8(const u8* a, const u8* b, u8* d, long n, int c)
    long fd_pixel_mask_u8(const u8* d, int t, u8* out, long n)
    void fd_tile_sums_u8(const u8* d, long w, long y0, long y1, int b,
                         unsigned long long* sums)
    void fd_maxdiff_f32_planes(const float* x, long plane, const float* r, float* d, int w,
                               int c)
    void fd_take_f32_planes(const float* x, long plane, float* r, const u8* mask, int w,
                            int c)

# --- change detection ------------------------------------------------------------

cdef bint _planes_fit(const float[:, :, ::1] x, const float[:, :, ::1] ref, Py_ssize_t mh,
                      Py_ssize_t mw, str name) except -1:
    """x (C, H, W), ref (H, W, C) and a (H, W) map agree (ValueError naming the kernel
    otherwise); False when there is nothing to do."""
    cdef Py_ssize_t C = x.shape[0], H = x.shape[1], W = x.shape[2]
    if ref.shape[0] != H or ref.shape[1] != W or ref.shape[2] != C or mh != H or mw != W:
        raise ValueError(f"{name}: inconsistent shapes")
    return H > 0 and W > 0 and C > 0


def max_abs_diff_f32_planes(const float[:, :, ::1] x, const float[:, :, ::1] ref,
                            float[:, ::1] out, int n_threads):
    """out[y, x] = max over channels |x - ref|, with ``x`` in torch layout: x (C, H, W),
    ref (H, W, C), out (H, W); NaN anywhere gives NaN (= changed)."""
    cdef int C = x.shape[0], H = x.shape[1], W = x.shape[2], y
    if not _planes_fit(x, ref, out.shape[0], out.shape[1], "max_abs_diff_f32_planes"):
        return
    cdef long plane = <long>H * W
    for y in prange(H, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        fd_maxdiff_f32_planes(&x[0, y, 0], plane, &ref[y, 0, 0], &out[y, 0], W, C)


def take_changed_f32_planes(const float[:, :, ::1] x, float[:, :, ::1] ref,
                            const u8[:, ::1] mask, int n_threads):
    """Where mask is set, ref (H, W, C) takes x's (C, H, W) channels."""
    cdef int C = x.shape[0], H = x.shape[1], W = x.shape[2], y
    if not _planes_fit(x, ref, mask.shape[0], mask.shape[1], "take_changed_f32_planes"):
        return
    cdef long plane = <long>H * W
    for y in prange(H, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        fd_take_f32_planes(&x[0, y, 0], plane, &ref[y, 0, 0], &mask[y, 0], W, C)


def max_abs_diff_u8(const u8[:, :, ::1] x, const u8[:, :, ::1] ref, u8[:, ::1] out,
                    int n_threads):
    """out[y, x] = max over channels |x - ref| for uint8 frames, in pixel units."""
    cdef int H = x.shape[0], W = x.shape[1], C = x.shape[2], y
    if ref.shape[0] != H or ref.shape[1] != W or ref.shape[2] != C \
            or out.shape[0] != H or out.shape[1] != W:
        raise ValueError("max_abs_diff_u8: inconsistent shapes")
    if H == 0 or W == 0:
        return
    for y in prange(H, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        fd_maxdiff_u8(&x[y, 0, 0], &ref[y, 0, 0], &out[y, 0], W, C)


def frame_to_input(const u8[:, :, ::1] frame, const float[:, ::1] lut, const int[::1] src,
                   float[:, :, ::1] out, int n_threads):
    """out[y, x, c] = lut[c, frame[y, x, src[c]]]: a uint8 frame through the input's
    preprocessing, tabulated (Model.frame_lut: 256 values a channel, computed with the
    numpy formula, so the result has the formula's bits)."""
    cdef int H = frame.shape[0], W = frame.shape[1], C = out.shape[2], y, i, c
    _check_lut(frame.shape[2], C, lut, src)
    if out.shape[0] != H or out.shape[1] != W:
        raise ValueError("frame_to_input: inconsistent shapes")
    for y in prange(H, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        for i in range(W):
            for c in range(C):
                out[y, i, c] = lut[c, frame[y, i, src[c]]]


cdef _check_lut(int frame_c, int C, const float[:, ::1] lut, const int[::1] src):
    # the loops index frame channels through src and lut by pixel value unchecked
    if lut.shape[0] != C or lut.shape[1] != 256 or src.shape[0] != C:
        raise ValueError("frame tables: inconsistent shapes")
    cdef int c
    for c in range(C):
        if src[c] < 0 or src[c] >= frame_c:
            raise ValueError("frame tables: source channel out of range")


def take_changed_u8(const u8[:, :, ::1] new, u8[:, :, ::1] ref, float[:, :, ::1] inp,
                    const u8[:, ::1] mask, const float[:, ::1] lut, const int[::1] src,
                    int n_threads):
    """Where mask is set: ref takes new's pixel, and inp its preprocessed value."""
    cdef int H = new.shape[0], W = new.shape[1], C = new.shape[2], y, i, c
    cdef int CI = inp.shape[2]
    _check_lut(C, CI, lut, src)
    if (ref.shape[0] != H or ref.shape[1] != W or ref.shape[2] != C or inp.shape[0] != H
            or inp.shape[1] != W or mask.shape[0] != H or mask.shape[1] != W):
        raise ValueError("take_changed_u8: inconsistent shapes")
    for y in prange(H, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        for i in range(W):
            if mask[y, i]:
                for c in range(C):
                    ref[y, i, c] = new[y, i, c]
                for c in range(CI):
                    inp[y, i, c] = lut[c, new[y, i, src[c]]]


# --- mask propagation --------------------------------------------------------------

cdef bint _monotone(const int[::1] lo, const int[::1] hi) noexcept nogil:
    """lo and hi non-decreasing over the non-empty ranges (every rule of receptive.py
    but a general gather)."""
    cdef int o, plo = -1, phi = -1
    for o in range(lo.shape[0]):
        if lo[o] > hi[o]:
            continue
        if lo[o] < plo or hi[o] < phi:
            return False
        plo = lo[o]
        phi = hi[o]
    return True


cdef void _reach(const int[::1] lo, const int[::1] hi, int n_in, int* first,
                 int* last) noexcept nogil:
    """For input index i: the outputs whose (non-empty) ranges hold i are, for monotone
    ranges, those non-empty ones in first[i]..last[i]: first[i] the first with
    hi >= i, last[i] the last with lo <= i."""
    cdef int n_out = lo.shape[0], i, o = 0
    for i in range(n_in):
        while o < n_out and (lo[o] > hi[o] or hi[o] < i):
            o += 1
        first[i] = o
    o = n_out - 1
    for i in range(n_in - 1, -1, -1):
        while o >= 0 and (lo[o] > hi[o] or lo[o] > i):
            o -= 1
        last[i] = o


def dilate_mask(const u8[:, ::1] m, const int[::1] lo_y, const int[::1] hi_y,
                const int[::1] lo_x, const int[::1] hi_x, u8[:, ::1] out):
    """out[oy, ox] = any(m[lo_y[oy]:hi_y[oy]+1, lo_x[ox]:hi_x[ox]+1]).

    The ranges are the exact input windows of each output row and column (see
    receptive.py), clipped to the input; an empty range (lo > hi) reads nothing.
    Monotone ranges (all of receptive.py's rules): each run of set positions of an input
    row dirties one interval of output columns, and each such row one interval of output
    rows, so the cost follows the set rows, not the map. Otherwise two passes of prefix
    sums, O(H*W + H*OW + OH*OW) whatever the window size.
    """
    cdef int H = m.shape[0], W = m.shape[1], OH = out.shape[0], OW = out.shape[1]
    if lo_y.shape[0] != OH or hi_y.shape[0] != OH or lo_x.shape[0] != OW or hi_x.shape[0] != OW:
        raise ValueError("dilate_mask: inconsistent shapes")
    if OH == 0 or OW == 0:
        return
    if H == 0 or W == 0:
        out[:, :] = 0
        return
    cdef bint monotone
    with nogil:
        monotone = _monotone(lo_y, hi_y) and _monotone(lo_x, hi_x)
    if monotone:
        _dilate_runs(m, lo_y, hi_y, lo_x, hi_x, out)
    else:
        _dilate_prefix(m, lo_y, hi_y, lo_x, hi_x, out)


cdef void _or_row(u8* dst, const u8* src, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        dst[i] = dst[i] | src[i]


cdef _dilate_runs(const u8[:, ::1] m, const int[::1] lo_y, const int[::1] hi_y,
                  const int[::1] lo_x, const int[::1] hi_x, u8[:, ::1] out):
    cdef int H = m.shape[0], W = m.shape[1], OH = out.shape[0], OW = out.shape[1]
    cdef int[::1] fx = np.empty(W, np.int32), lx = np.empty(W, np.int32)
    cdef int[::1] fy = np.empty(H, np.int32), ly = np.empty(H, np.int32)
    cdef u8[::1] row = np.empty(OW, np.uint8), ne_x = np.empty(OW, np.uint8)
    cdef int r, i, j, a, o, o1, o2, n_empty_x = 0
    cdef bint any_
    cdef const u8* p
    cdef unsigned long long word
    with nogil:
        _reach(lo_x, hi_x, W, &fx[0], &lx[0])
        _reach(lo_y, hi_y, H, &fy[0], &ly[0])
        for o in range(OW):
            ne_x[o] = lo_x[o] <= hi_x[o]
            n_empty_x += lo_x[o] > hi_x[o]
        memset(&out[0, 0], 0, <size_t>OH * OW)
        for r in range(H):
            p = &m[r, 0]
            o1 = fy[r]
            o2 = ly[r]
            if o1 > o2:
                continue                      # no output row reads input row r
            # the row's runs of set positions -> output columns
            memset(&row[0], 0, OW)
            any_ = False
            a = -1                            # start of the current run
            i = 0
            while i < W:
                if a < 0 and i + 8 <= W:
                    memcpy(&word, p + i, 8)
                    if word == 0:
                        i += 8
                        continue
                if p[i]:
                    any_ = True
                    if a < 0:
                        a = i
                elif a >= 0:
                    if fx[a] <= lx[i - 1]:
                        memset(&row[fx[a]], 1, lx[i - 1] - fx[a] + 1)
                    a = -1
                i += 1
            if a >= 0 and fx[a] <= lx[W - 1]:
                memset(&row[fx[a]], 1, lx[W - 1] - fx[a] + 1)
            if not any_:
                continue
            if n_empty_x:
                for o in range(OW):
                    row[o] = row[o] & ne_x[o]
            for j in range(o1, o2 + 1):
                if lo_y[j] <= hi_y[j]:
                    _or_row(&out[j, 0], &row[0], OW)


cdef _dilate_prefix(const u8[:, ::1] m, const int[::1] lo_y, const int[::1] hi_y,
                    const int[::1] lo_x, const int[::1] hi_x, u8[:, ::1] out):
    cdef int H = m.shape[0], W = m.shape[1], OH = out.shape[0], OW = out.shape[1]
    cdef int[:, ::1] rows = np.empty((H + 1, OW), np.int32)   # prefix over input rows
    cdef int[::1] pre = np.empty(W + 1, np.int32)
    cdef int[::1] busy = np.empty(H + 1, np.int32)            # prefix of non-empty rows
    cdef int r, c, o, any_
    with nogil:
        memset(&rows[0, 0], 0, OW * sizeof(int))
        busy[0] = 0
        for r in range(H):
            any_ = 0
            for c in range(W):
                any_ = any_ | m[r, c]
            busy[r + 1] = busy[r] + (any_ != 0)
            if not any_:
                memcpy(&rows[r + 1, 0], &rows[r, 0], OW * sizeof(int))
                continue
            pre[0] = 0
            for c in range(W):
                pre[c + 1] = pre[c] + (m[r, c] != 0)
            for o in range(OW):
                rows[r + 1, o] = rows[r, o] + (lo_x[o] <= hi_x[o] and
                                               pre[hi_x[o] + 1] - pre[lo_x[o]] > 0)
        for o in range(OH):
            if lo_y[o] > hi_y[o] or busy[hi_y[o] + 1] == busy[lo_y[o]]:
                memset(&out[o, 0], 0, OW)
                continue
            for c in range(OW):
                out[o, c] = rows[hi_y[o] + 1, c] - rows[lo_y[o], c] > 0


def mask_indices(const u8[:, ::1] m):
    """Flat indices (int32, ascending) of the set positions of a 2-D mask."""
    cdef Py_ssize_t n = m.shape[0] * m.shape[1], i, j, k = 0, nw
    if n == 0:
        return np.empty(0, np.int32)
    cdef const u8* p = &m[0, 0]
    with nogil:
        for i in range(n):
            k += p[i] != 0
    cdef int[::1] out = np.empty(k, np.int32)
    cdef unsigned long long word
    k = 0
    nw = n // 8
    with nogil:
        for j in range(nw):               # skip eight clean positions at a time
            memcpy(&word, p + 8 * j, 8)
            if word == 0:
                continue
            for i in range(8 * j, 8 * j + 8):
                if p[i]:
                    out[k] = <int>i
                    k += 1
        for i in range(8 * nw, n):
            if p[i]:
                out[k] = <int>i
                k += 1
    return np.asarray(out)


# --- change masks from per-pixel differences ---------------------------------------

def pixel_change_mask(const float[:, ::1] d, float t, u8[:, ::1] out):
    """out = d > t (NaN counts as changed); returns the number of changed pixels."""
    cdef int H = d.shape[0], W = d.shape[1], y, x
    cdef Py_ssize_t n = 0
    with nogil:
        for y in range(H):
            for x in range(W):
                out[y, x] = not (d[y, x] <= t)
                n += out[y, x]
    return n


def block_change_mask(const float[:, ::1] d, float t, int b, u8[:, ::1] out):
    """Per b x b tile: changed, whole, when the tile's mean of d exceeds t (NaN: changed).

    Tiles at the right and bottom edges may be partial: their mean is over the pixels
    they have. Returns the number of changed pixels.
    """
    cdef int H = d.shape[0], W = d.shape[1]
    cdef int iy, ix, ty, tx, y, x, y1, x1
    cdef double s
    cdef bint ch
    cdef Py_ssize_t n = 0
    if b < 1:
        raise ValueError("block_change_mask: block must be positive")
    with nogil:
        for iy in range((H + b - 1) // b):
            ty = iy * b
            y1 = min(H, ty + b)
            for ix in range((W + b - 1) // b):
                tx = ix * b
                x1 = min(W, tx + b)
                s = 0.0
                for y in range(ty, y1):
                    for x in range(tx, x1):
                        s = s + d[y, x]
                ch = not (s / ((y1 - ty) * (x1 - tx)) <= t)
                for y in range(ty, y1):
                    for x in range(tx, x1):
                        out[y, x] = ch
                if ch:
                    n += (y1 - ty) * (x1 - tx)
    return n


def pixel_change_mask_u8(const u8[:, ::1] d, float t, u8[:, ::1] out):
    """pixel_change_mask for an integer map (max_abs_diff_u8's): d > t is d > floor(t)."""
    cdef long n = d.shape[0] * d.shape[1]
    cdef int tt = 255 if t >= 255 else <int>t          # t >= 0: truncation is floor
    if n == 0:
        return 0
    with nogil:
        n = fd_pixel_mask_u8(&d[0, 0], tt, &out[0, 0], n)
    return n


def block_change_mask_u8(const u8[:, ::1] d, float t, int b, u8[:, ::1] out, int n_threads):
    """block_change_mask for an integer map: a tile's sum is exact in any order, so tile
    rows run in parallel and the decision is the float version's (mean > t)."""
    cdef int H = d.shape[0], W = d.shape[1]
    if b < 1:
        raise ValueError("block_change_mask: block must be positive")
    if H == 0 or W == 0:
        return 0
    cdef int nty = (H + b - 1) // b, ntx = (W + b - 1) // b
    cdef unsigned long long[:, ::1] sums = np.zeros((nty, ntx), np.uint64)
    cdef int iy, ix, y, y0, y1, x0, x1
    cdef Py_ssize_t n = 0
    cdef bint ch
    for iy in prange(nty, nogil=True, num_threads=pool_threads(n_threads), schedule="static"):
        y0 = iy * b
        y1 = min(H, y0 + b)
        fd_tile_sums_u8(&d[0, 0], W, y0, y1, b, &sums[iy, 0])
        for ix in range(ntx):
            x0 = ix * b
            x1 = min(W, x0 + b)
            ch = not (<double>sums[iy, ix] / ((y1 - y0) * (x1 - x0)) <= t)
            for y in range(y0, y1):
                memset(&out[y, x0], ch, x1 - x0)
            if ch:
                n += (y1 - y0) * (x1 - x0)
    return n
