# The shared thread pool (engine/pool.h), for a kernel module that includes this file:
# pool_run(n_threads, n_items, fn, ctx) calls fn(ctx, i, slot) for every item i, on up to
# n_threads threads, never waiting for a thread that has not started; pool_threads(n) is
# the thread count for the kernels that still open an OpenMP region (one: see
# fd_pool_threads in pool.h).

from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from "pool.h" nogil:
    ctypedef void (*fd_task_fn)(void *ctx, ptrdiff_t item, int slot) noexcept nogil
    ctypedef void (*fd_pool_run_fn)(int n_threads, ptrdiff_t n_items, fd_task_fn fn,
                                    void *ctx) noexcept nogil
    ctypedef int (*fd_pool_threads_fn)(int n_threads) noexcept nogil
    ctypedef struct fd_pool_api:
        fd_pool_run_fn run
        fd_pool_threads_fn threads

from . import _pool

cdef fd_pool_api* _pool_api = <fd_pool_api*>PyCapsule_GetPointer(
    _pool.api_capsule, "framedelta.engine._pool.api")
cdef fd_pool_run_fn pool_run = _pool_api.run
cdef fd_pool_threads_fn pool_threads = _pool_api.threads
