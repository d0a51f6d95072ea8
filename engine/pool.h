/* framedelta's thread pool: a parallel for that never waits for a thread that has not
 * started.
 *
 * Why not OpenMP's parallel for: every OpenMP region ends in a barrier that each thread
 * of the team must reach. When another process holds a core (a decoder, another
 * service, a neighbour stream), the team's thread on that core is descheduled and the
 * whole region waits for the kernel to give it a time slice back, several ms, at every
 * region: MTCNN's PNet step went from 9.6 to 29.7 ms beside one busy core, and a small
 * net with ~100 regions a pass collapsed entirely.
 *
 * Here the caller publishes a job (n_items independent items), takes items itself from
 * a shared counter, and waits only for items that a worker has taken and not finished.
 * A worker that wakes up late finds the counter exhausted and goes back to waiting; if
 * no worker ever runs, the caller does every item. Items are assigned dynamically, so
 * results must not depend on which thread runs an item (every kernel here computes
 * each output element in one item, the same way whatever the assignment); ``slot``
 * (0 for the caller, 1 .. n_threads - 1 for workers) indexes per-thread scratch only.
 *
 * Workers spin for FD_POOL_SPIN_NS after a job (a pass runs its nodes back to back),
 * yielding the core at each check after the first few hundred, and then sleep on a
 * condition variable. One job at a time: a caller that finds the
 * pool busy (another Python thread's stream, or a nested call) runs its job inline,
 * which is what a server stepping many cameras from many threads wants anyway. After a
 * fork the child starts its own workers.
 *
 * This header declares the API (fd_task_fn, fd_pool_run_fn); the implementation is
 * compiled once, in the module that defines FD_POOL_IMPLEMENTATION (engine/_pool.pyx),
 * and the others call it through a function pointer from that module's capsule, so
 * every kernel of the process shares the one pool.
 */
#ifndef FD_POOL_H
#define FD_POOL_H

#include <stddef.h>

/* run item ``item`` of a job; ``slot`` < n_threads names the thread's scratch */
typedef void (*fd_task_fn)(void *ctx, ptrdiff_t item, int slot);
typedef void (*fd_pool_run_fn)(int n_threads, ptrdiff_t n_items, fd_task_fn fn, void *ctx);
typedef int (*fd_pool_threads_fn)(int n_threads);

/* what the kernel modules take from engine/_pool.pyx's capsule */
typedef struct {
    fd_pool_run_fn run;
    fd_pool_threads_fn threads;
} fd_pool_api;

#ifdef FD_POOL_IMPLEMENTATION

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define FD_POOL_MAX 64
#ifndef FD_POOL_SPIN_NS
#define FD_POOL_SPIN_NS 100000   /* 0.1 ms: longer than the gap between two nodes */
#endif

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int busy;          /* a caller owns the pool */
    atomic_long gen;          /* bumped for each job */
    atomic_int open;          /* workers may still join the current job */
    atomic_int inside;        /* workers between joining and leaving a job */
    atomic_int sleepers;      /* workers waiting on cv */
    atomic_long next, done;   /* items taken, items finished */
    fd_task_fn fn;            /* the current job (valid while open) */
    void *ctx;
    ptrdiff_t n_items;
    int n_threads;
    int n_workers;            /* started, in process pid */
    pid_t pid;
} fd_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static inline void fd_pool_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline int64_t fd_pool_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* statistics of the jobs run on several threads, written by the caller holding busy */
static long fd_pool_worker_items, fd_pool_items, fd_pool_jobs;
static atomic_llong fd_pool_awake_until;   /* ns: workers keep spinning until then */

/* take and run items until none is left; returns how many this thread ran */
static inline ptrdiff_t fd_pool_take(fd_task_fn fn, void *ctx, ptrdiff_t n, int slot)
{
    ptrdiff_t i, ran = 0;
    while ((i = (ptrdiff_t)atomic_fetch_add(&fd_pool.next, 1)) < n) {
        fn(ctx, i, slot);
        atomic_fetch_add(&fd_pool.done, 1);
        ran++;
    }
    return ran;
}

static void *fd_pool_worker(void *arg)
{
    const int slot = (int)(intptr_t)arg;
    long seen = atomic_load(&fd_pool.gen);
    for (;;) {
        long g;
        int64_t t0 = fd_pool_now_ns();
        int spins = 0;
        while ((g = atomic_load(&fd_pool.gen)) == seen) {
            /* polite spinning: past the first few hundred checks, yield the core at
             * every check, so that a caller (or a neighbour) that shares it runs */
            if (++spins < 512)
                fd_pool_relax();
            else
                sched_yield();
            if (spins % 64 == 0 && fd_pool_now_ns() - t0 > FD_POOL_SPIN_NS
                && fd_pool_now_ns() > atomic_load(&fd_pool_awake_until)) {
                pthread_mutex_lock(&fd_pool.mu);
                atomic_fetch_add(&fd_pool.sleepers, 1);
                while ((g = atomic_load(&fd_pool.gen)) == seen)
                    pthread_cond_wait(&fd_pool.cv, &fd_pool.mu);
                atomic_fetch_sub(&fd_pool.sleepers, 1);
                pthread_mutex_unlock(&fd_pool.mu);
                break;
            }
        }
        seen = g;
        atomic_fetch_add(&fd_pool.inside, 1);
        /* the caller closes the job before it waits for inside == 0: a worker that
         * sees it open reads the fields of a job that is still running */
        if (atomic_load(&fd_pool.open) && slot < fd_pool.n_threads)
            fd_pool_take(fd_pool.fn, fd_pool.ctx, fd_pool.n_items, slot);
        atomic_fetch_sub(&fd_pool.inside, 1);
    }
    return NULL;
}

/* In a forked child only the forking thread exists: no workers, and a job, the mutex or
 * the condition variable may have been caught mid-use by the fork. Start afresh. */
static void fd_pool_after_fork_child(void)
{
    pthread_mutex_init(&fd_pool.mu, NULL);
    pthread_cond_init(&fd_pool.cv, NULL);
    atomic_store(&fd_pool.busy, 0);
    atomic_store(&fd_pool.open, 0);
    atomic_store(&fd_pool.inside, 0);
    atomic_store(&fd_pool.sleepers, 0);
    fd_pool.n_workers = 0;
    fd_pool.pid = getpid();
}

/* workers 1 .. n - 1 exist (started on first use, again after a fork); returns the
 * threads there are, the caller included (fewer when a thread cannot be started) */
static int fd_pool_start(int n)
{
    pid_t pid = getpid();
    if (fd_pool.pid == 0)         /* first use */
        pthread_atfork(NULL, NULL, fd_pool_after_fork_child);
    if (fd_pool.pid != pid) {     /* first use, or a forked child: no workers here */
        fd_pool.pid = pid;
        fd_pool.n_workers = 0;
    }
    while (fd_pool.n_workers < n - 1) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&t, &a, fd_pool_worker,
                                 (void *)(intptr_t)(fd_pool.n_workers + 1));
        pthread_attr_destroy(&a);
        if (err)
            break;
        fd_pool.n_workers++;
    }
    return fd_pool.n_workers + 1;
}

/* Back-off (under fd_pool.busy): when the caller keeps waiting for items a worker took
 * and did not finish (the worker was descheduled mid-item: another process has its
 * core), jobs run on the caller alone for a while, then the workers are tried again. */
static int64_t fd_pool_solo_until;     /* ns; jobs before then run on the caller alone */
static int64_t fd_pool_solo_ns = 2000000;  /* the next back-off, doubled each time */
static int fd_pool_backoff = -1;           /* FRAMEDELTA_POOL_BACKOFF=0 turns it off */
static long fd_pool_backoffs;              /* how many times it backed off (stats) */

/* The thread count for a kernel that still runs an OpenMP region: one. Two thread pools
 * in one process fight over the cores: with OpenMP's worker spinning after a relu and
 * ours after a conv, ResNet-18's dense pass on 2 threads took 110-145 ms instead of 72
 * (the workers descheduled each other mid-item). So every parallel kernel goes through
 * this pool, and the few left on OpenMP (small, or rare ops) run on the calling thread
 * until they move here. */
static int fd_pool_threads(int n_threads)
{
    (void)n_threads;
    return 1;
}

/* A pass is about to start (a step after a camera's pause): wake the sleeping workers
 * now and keep them spinning for ``ns``, so that they are running when its first kernel
 * comes, instead of paying a wake-up (tens to hundreds of microseconds in a VM) in each
 * of its first jobs while the caller works alone. */
static void fd_pool_wake(int n_threads, long ns)
{
    if (n_threads <= 1 || atomic_load(&fd_pool.busy))
        return;
    atomic_store(&fd_pool_awake_until, fd_pool_now_ns() + ns);
    if (fd_pool.pid != getpid() || fd_pool.n_workers < n_threads - 1) {
        if (atomic_exchange(&fd_pool.busy, 1))
            return;
        fd_pool_start(n_threads);
        atomic_store(&fd_pool.busy, 0);
    }
    if (atomic_load(&fd_pool.sleepers) > 0) {
        /* a new generation with no job: sleepers wake, find it closed, and spin */
        pthread_mutex_lock(&fd_pool.mu);
        atomic_fetch_add(&fd_pool.gen, 1);
        pthread_cond_broadcast(&fd_pool.cv);
        pthread_mutex_unlock(&fd_pool.mu);
    }
}

/* fn(ctx, i, slot) for 0 <= i < n_items, on up to n_threads threads (the caller one) */
static void fd_pool_run(int n_threads, ptrdiff_t n_items, fd_task_fn fn, void *ctx)
{
    if (n_items <= 0)
        return;
    if (n_threads > FD_POOL_MAX)
        n_threads = FD_POOL_MAX;
    int64_t start = 0;
    /* alone: one thread or item, the pool busy (another Python thread, a nested call),
     * or backing off */
    const int owned = n_threads > 1 && n_items > 1 && !atomic_exchange(&fd_pool.busy, 1);
    if (!owned || (start = fd_pool_now_ns()) < fd_pool_solo_until) {
        for (ptrdiff_t i = 0; i < n_items; i++)
            fn(ctx, i, 0);
        if (owned)
            atomic_store(&fd_pool.busy, 0);
        return;
    }
    int have = fd_pool_start(n_threads);
    if (have < n_threads)
        n_threads = have;
    fd_pool.fn = fn;
    fd_pool.ctx = ctx;
    fd_pool.n_items = n_items;
    fd_pool.n_threads = n_threads;
    atomic_store(&fd_pool.next, 0);
    atomic_store(&fd_pool.done, 0);
    atomic_store(&fd_pool.open, 1);
    atomic_fetch_add(&fd_pool.gen, 1);
    if (atomic_load(&fd_pool.sleepers) > 0) {
        pthread_mutex_lock(&fd_pool.mu);
        pthread_cond_broadcast(&fd_pool.cv);
        pthread_mutex_unlock(&fd_pool.mu);
    }
    ptrdiff_t own_items = fd_pool_take(fn, ctx, n_items, 0);
    fd_pool_jobs++;
    fd_pool_items += own_items;
    fd_pool_worker_items += n_items - own_items;
    /* only items a worker has taken are left: wait for those, then for workers still
     * reading the job's fields */
    int64_t own = 0;
    if (atomic_load(&fd_pool.done) < n_items) {
        own = fd_pool_now_ns();
        for (int spins = 0; atomic_load(&fd_pool.done) < n_items; spins++) {
            fd_pool_relax();
            if (spins > 2048)
                sched_yield();
        }
        int64_t end = fd_pool_now_ns(), waited = end - own;
        /* waiting longer than the job itself ran (and long in absolute terms) means a
         * worker lost its core mid-item: go solo for a while, longer each time */
        if (fd_pool_backoff < 0) {
            const char *e = getenv("FRAMEDELTA_POOL_BACKOFF");
            fd_pool_backoff = !(e && e[0] == '0');
        }
        if (fd_pool_backoff && waited > 200000 && waited > own - start) {
            fd_pool_backoffs++;
            fd_pool_solo_until = end + fd_pool_solo_ns;
            if (fd_pool_solo_ns < 256000000)
                fd_pool_solo_ns *= 2;
        } else if (fd_pool_solo_ns > 2000000 && waited < 20000) {
            fd_pool_solo_ns /= 2;
        }
    }
    atomic_store(&fd_pool.open, 0);
    for (int spins = 0; atomic_load(&fd_pool.inside) != 0; spins++) {
        fd_pool_relax();
        if (spins > 4096)
            sched_yield();
    }
    atomic_store(&fd_pool.busy, 0);
}

#endif /* FD_POOL_IMPLEMENTATION */
#endif /* FD_POOL_H */
