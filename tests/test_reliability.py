"""Hostile use that once corrupted a stream or misled its user (issue 17).

One stream stepped from several threads; frames of the wrong kind; what errors name.
"""

import sys
import threading

import numpy as np
import pytest

from framedelta.engine.crops import reshaped_graph
from framedelta.engine.model import Model
from test_stream import _frames, _small_model, assert_identical

N_THREADS, STEPS_EACH = 4, 12


def _bigger_model():
    """test_stream's small model on 96x128 frames: steps long enough to interleave."""
    m = _small_model()
    return Model(reshaped_graph(m.graph, m.shapes, 96, 128), n_threads=1)


MODES = {
    "exact": {},
    "approximate": {"layer_thresholds": 0.0},    # the approximate path, bit-exact at 0
    "regions": {"mode": "regions"},
}


@pytest.fixture
def switch_often():
    """Python threads swap every 5 ms by default; swapping often makes interleaved
    steps likely (without the stream's lock this test fails in every mode)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


@pytest.mark.parametrize("mode", list(MODES))
def test_one_stream_stepped_from_several_threads_stays_exact(mode, switch_often):
    """Threshold 0: the reference is the fed frame, so every output must be the dense
    output of one of the frames fed (the steps serialise, none sees half of another);
    afterwards the stream must still be exact, step after step."""
    kwargs = MODES[mode]
    model = _bigger_model()
    _, c, h, w = model.input_shape
    if mode == "regions":
        pytest.importorskip("cv2", reason="mode='regions' needs opencv-python-headless")
    frames = _frames(N_THREADS * STEPS_EACH + 8, seed=11, h=h, w=w)
    # digest of each fed frame's dense output -> frame index
    dense = [model.run(f) for f in frames]
    by_bits = {d.tobytes(): i for i, d in enumerate(dense)}
    s = model.stream(threshold=0, **kwargs)
    s.step(frames[0])
    outputs, errors = [], []
    start = threading.Barrier(N_THREADS)

    def work(k):
        try:
            start.wait()
            for j in range(STEPS_EACH):
                i = 1 + k * STEPS_EACH + j
                outputs.append((i, s.step(frames[i])))
        except Exception as e:          # noqa: BLE001 - reported below, with the thread
            errors.append((k, e))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"a step raised in a thread: {errors[0]}"
    assert len(outputs) == N_THREADS * STEPS_EACH
    bad = [i for i, y in outputs if y.tobytes() not in by_bits]
    assert not bad, f"{len(bad)} of {len(outputs)} outputs equal no fed frame's dense output"
    # each output is its own frame's: threshold 0 takes the whole new frame in
    assert all(by_bits[y.tobytes()] == i for i, y in outputs)
    for i in range(N_THREADS * STEPS_EACH + 1, len(frames)):
        y = s.step(frames[i])
        assert_identical(y, model.run(s.reference_input), f"{mode}: step {i} after threads")
        assert_identical(y, dense[i], f"{mode}: step {i} vs its frame")


def test_reset_from_another_thread_waits_for_the_step(switch_often):
    model = _small_model(n_threads=1)
    frames = _frames(60, seed=12)
    s = model.stream(threshold=0)
    stop = threading.Event()

    def resetter():
        while not stop.is_set():
            s.reset()
    t = threading.Thread(target=resetter)
    t.start()
    try:
        for f in frames:
            assert_identical(s.step(f), model.run(f))
    finally:
        stop.set()
        t.join()
