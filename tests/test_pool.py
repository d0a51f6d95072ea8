"""The shared thread pool (engine/pool.h): results never depend on how its items fall on
threads, it survives a fork, and callers on several Python threads at once (which run
their jobs inline while another holds the pool) get the same bits as one alone."""

import multiprocessing
import threading

import numpy as np

from framedelta.engine import _pool
from test_stream import _frames, _small_model


def _run_all(model, frames):
    return [model.run(f) for f in frames]


def _child(q):
    model = _small_model(n_threads=2)
    q.put([y.tobytes() for y in _run_all(model, _frames(4, seed=3))])


def test_forked_child_runs_on_its_own_pool():
    model = _small_model(n_threads=2)
    parent = _run_all(model, _frames(4, seed=3))     # the parent's workers exist now
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    got = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0
    assert got == [y.tobytes() for y in parent]


def test_concurrent_callers_match_one_alone():
    model = _small_model(n_threads=2)
    frames = _frames(6, seed=5)
    alone = [y.tobytes() for y in _run_all(model, frames)]
    results, errors = {}, []

    def work(k):
        try:
            m = _small_model(n_threads=2)        # its own buffers; the pool is shared
            results[k] = [y.tobytes() for y in _run_all(m, frames)]
        except Exception as e:                   # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert all(results[k] == alone for k in range(4))


def test_counts_and_backoffs_are_reported():
    jobs, own, workers = _pool.counts()
    _run_all(_small_model(n_threads=2), _frames(2))
    jobs2, own2, workers2 = _pool.counts()
    assert jobs2 >= jobs and own2 + workers2 > own + workers
    assert _pool.backoffs() >= 0
