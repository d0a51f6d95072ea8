# cython: language_level=3
"""The process's one thread pool (engine/pool.h), for every kernel module.

The kernel modules take ``fd_pool_run`` from :data:`run_capsule` when they are imported
(engine/_pool_api.pxi), so that all of them share these workers.
"""

from cpython.pycapsule cimport PyCapsule_New

cdef extern from *:
    """
    #define FD_POOL_IMPLEMENTATION
    #include "pool.h"
    static void *fd_pool_run_address(void) { return (void *)fd_pool_run; }
    """
    void *fd_pool_run_address()

run_capsule = PyCapsule_New(fd_pool_run_address(), "framedelta.engine._pool.run", NULL)
