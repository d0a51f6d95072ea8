# cython: language_level=3
"""The process's one thread pool (engine/pool.h), for every kernel module.

The kernel modules take its functions from :data:`api_capsule` when they are imported
(engine/_pool_api.pxi), so that all of them share these workers.
"""

from cpython.pycapsule cimport PyCapsule_New

cdef extern from *:
    """
    #define FD_POOL_IMPLEMENTATION
    #include "pool.h"
    static fd_pool_api fd_pool_api_table = {fd_pool_run, fd_pool_threads};
    static void *fd_pool_api_address(void) { return (void *)&fd_pool_api_table; }
    """
    void *fd_pool_api_address()
    long fd_pool_backoffs
    long fd_pool_worker_items, fd_pool_items, fd_pool_jobs

api_capsule = PyCapsule_New(fd_pool_api_address(), "framedelta.engine._pool.api", NULL)


def backoffs():
    """How many times the pool has backed off to the caller alone (a worker lost its
    core mid-job) in this process."""
    return fd_pool_backoffs


def counts():
    """(jobs, items run by the caller, items run by workers) so far in this process."""
    return fd_pool_jobs, fd_pool_items, fd_pool_worker_items


cdef extern from "pool.h" nogil:
    void fd_pool_wake(int n_threads, long ns)


def wake(int n_threads, double seconds=0.005):
    """A pass is about to start: wake the pool's workers and keep them spinning for
    ``seconds`` (they would otherwise wake in its first kernels, late)."""
    fd_pool_wake(n_threads, <long>(seconds * 1e9))
