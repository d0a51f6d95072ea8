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


# --- errors that name the real problem, torch frames -------------------------------------

def _snapshot(s):
    return (s.reference_input.copy(), s._n_steps)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((24, 32, 3), np.float32), ["input shape", "(1, 3, 24, 32)", "(24, 32, 3)"]),
    (np.zeros((24, 32, 3), np.int32), ["input dtype", "int32", "uint8 (24, 32, 3)"]),
    (np.zeros((24, 32), np.uint8), ["frame rank", "grayscale", "(24, 32, 3)"]),
    (np.zeros((24, 31, 3), np.uint8), ["frame shape", "(24, 31, 3)"]),
    (np.zeros((1, 3, 24, 32), np.float64), ["input dtype", "float64"]),
    ("frame.png", ["input dtype", "<U9"]),
])
def test_wrong_frame_names_the_real_problem_and_changes_nothing(bad, words):
    """Once told only "this stream was fed uint8 frames so far" whatever was wrong."""
    model = _small_model(n_threads=1)
    frames = _frames(3, seed=13)
    s = model.stream(threshold=2)
    s.step(frames[0])
    s.step(frames[1])
    before = _snapshot(s)
    with pytest.raises(ValueError) as info:
        s.step(bad)
    msg = str(info.value)
    assert "reset()" not in msg
    for w in words:
        assert w in msg, msg
    assert "this model takes float32 (1, 3, 24, 32)" in msg     # what is accepted
    ref, n = _snapshot(s)
    np.testing.assert_array_equal(ref, before[0])
    assert n == before[1]
    assert_identical(s.step(frames[2]), model.run(s.reference_input))


def test_switching_between_frames_and_tensors_says_what_was_fed():
    model = _small_model(n_threads=1)
    s = model.stream()
    s.step(_frames(1)[0])
    with pytest.raises(ValueError, match="fed uint8 frames so far and received a float32 "
                                         r"tensor; call reset\(\)"):
        s.step(np.zeros((1, 3, 24, 32), np.float32))


def test_run_of_a_wrong_frame_says_frames_work():
    model = _small_model(n_threads=1)
    with pytest.raises(ValueError, match=r"uint8 \(24, 32, 3\) BGR frame"):
        model.run(np.zeros((24, 32), np.uint8))
    from test_format import make_graph
    plain = Model(make_graph(preprocess=False), n_threads=1)
    with pytest.raises(ValueError, match="declares no image preprocessing"):
        plain.run(np.zeros((8, 8, 3), np.uint8))


def test_torch_uint8_frames_are_frames():
    torch = pytest.importorskip("torch")
    model = _small_model(n_threads=1)
    frames = _frames(4, seed=14)
    s, t = model.stream(threshold=3), model.stream(threshold=3)
    for f in frames:
        assert_identical(s.step(torch.from_numpy(f)), t.step(f), "torch vs numpy frame")
    assert s.reference_input.dtype == np.uint8
    assert_identical(model.run(torch.from_numpy(frames[0])), model.run(frames[0]))
    # a non-contiguous torch view (a crop of a bigger frame) is a frame too
    big = torch.from_numpy(np.ascontiguousarray(np.pad(frames[1], ((2, 2), (3, 3), (0, 0)))))
    assert_identical(model.run(big[2:-2, 3:-3]), model.run(frames[1]))
