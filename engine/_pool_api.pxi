# The shared thread pool (engine/pool.h), for a kernel module that includes this file:
# pool_run(n_threads, n_items, fn, ctx) calls fn(ctx, i, slot) for every item i, on up to
# n_threads threads, never waiting for a thread that has not started.

from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from "pool.h" nogil:
    ctypedef void (*fd_task_fn)(void *ctx, ptrdiff_t item, int slot) noexcept nogil
    ctypedef void (*fd_pool_run_fn)(int n_threads, ptrdiff_t n_items, fd_task_fn fn,
                                    void *ctx) noexcept nogil

from . import _pool

cdef fd_pool_run_fn pool_run = <fd_pool_run_fn>PyCapsule_GetPointer(
    _pool.run_capsule, "framedelta.engine._pool.run")
