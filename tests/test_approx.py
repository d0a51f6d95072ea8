"""The approximate mode (engine/approx.py): per-layer thresholds with a bounded error.

Thresholds 0 give the exact mode's output bit for bit; with thresholds > 0, after every
step and for every node, each position's cache is within the node's threshold of the
node's layer applied densely to its inputs' caches, and a position that did not
propagate kept its cached value (random graphs and frame sequences); over 2,000 frames
the error does not drift. Also: options validated, calibration honest, "auto" mode.
"""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framedelta.engine.approx import calibrate, clip_error
from framedelta.engine.checks import deviation
from framedelta.engine.model import Model
from framedelta.engine.layout import to_torch
from framedelta.formats.graph import Graph, InputSpec, Node
from test_stream import (_frames, _small_model, assert_identical, frame_sequences, graphs,
                         stream_settings)


def _input_caches(s, step):
    env = dict(s._caches)
    env[s.model.graph.input.name] = s._ref.input
    return [env[t] for t in step.node.inputs]


def _moved(a, b):
    """float32 per-element |a - b|, 0 where equal (inf == inf) or both NaN, inf where
    only one is NaN: the kernel's own comparison."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a - b, dtype=np.float32)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    d[same] = 0
    d[np.isnan(d)] = np.inf
    return d


def _position_max(d, cache, mask_shape):
    if cache.ndim == 3 and cache.shape[:2] == tuple(mask_shape):
        return d.reshape(mask_shape[0] * mask_shape[1], -1).max(axis=1, initial=0)
    return d.reshape(1, -1).max(axis=1, initial=0)


def check_invariant(s, before=None, what=""):
    """Every node: cache within its threshold of layer(input caches), per position; and
    (given the caches ``before`` the step) only propagated positions changed."""
    for step in s._plan:
        name = step.node.name
        cache = s._caches[step.node.outputs[0]]
        exact = np.empty_like(cache)
        step.run(_input_caches(s, step), exact, 1)
        t = s._approx.threshold(name)
        m = _position_max(_moved(cache, exact), cache, step.mask_shape)
        bound = np.float32(0 if t is None else t)
        assert (m <= bound).all(), \
            f"{what}: node {name} ({step.node.op}) off by {m.max():.4g} > threshold {bound}"
        if before is not None:
            changed = _position_max(_moved(cache, before[step.node.outputs[0]]), cache,
                                    step.mask_shape) > 0
            prop = s.dirty_mask(name).reshape(-1)
            if prop.size != changed.size:       # one position: the whole tensor
                prop = np.full(changed.shape, bool(prop.any()))
            assert not (changed & ~prop).any(), \
                f"{what}: node {name} changed at positions it did not propagate"


@given(data=st.data())
def test_thresholds_zero_are_the_exact_mode_bit_for_bit(data):
    g = data.draw(graphs())
    frames = data.draw(frame_sequences(g.input.shape))
    settings = data.draw(stream_settings())
    model = Model(g, n_threads=data.draw(st.sampled_from([1, 2])))
    exact = model.stream(**settings)
    zero = model.stream(layer_thresholds=0.0, **settings)
    absolute = model.stream(layer_thresholds={n.name: 0.0 for n in g.nodes}, **settings)
    for i, x in enumerate(frames):
        y = exact.step(x)
        assert_identical(zero.step(x), y, f"frame {i}, relative 0")
        assert_identical(absolute.step(x), y, f"frame {i}, absolute 0")
        assert_identical(y, model.run(zero.reference_input), f"frame {i}")


@given(data=st.data())
def test_each_cache_is_its_layer_of_its_inputs_within_the_threshold(data):
    g = data.draw(graphs())
    frames = data.draw(frame_sequences(g.input.shape, max_frames=6))
    settings = data.draw(stream_settings())
    rel = data.draw(st.sampled_from([0.02, 0.2, 1.0, 5.0]))
    model = Model(g, n_threads=data.draw(st.sampled_from([1, 2])))
    s = model.stream(layer_thresholds=rel, **settings)
    before = None
    for i, x in enumerate(frames):
        y = s.step(x)
        check_invariant(s, before, f"frame {i}, relative {rel}")
        # what step() returns is what the caches hold (outputs kept in torch layout
        # are updated on the propagated rows only)
        caches = tuple(np.array(to_torch(s._caches[t], model.shapes[t]))
                       for t in g.outputs)
        assert_identical(y, caches if isinstance(y, tuple) else caches[0], f"frame {i}")
        before = {k: v.copy() for k, v in s._caches.items()}
        for n in s.last_stats.nodes:
            assert 0.0 <= n.suppressed_fraction <= n.active_fraction + 1e-12


@given(data=st.data())
def test_threads_do_not_change_approximate_results(data):
    g = data.draw(graphs())
    frames = data.draw(frame_sequences(g.input.shape, max_frames=4))
    settings = data.draw(stream_settings())
    outs = []
    for n_threads in (1, 2):
        s = Model(g, n_threads=n_threads).stream(layer_thresholds=0.3, **settings)
        outs.append([s.step(x) for x in frames])
    for a, b in zip(*outs):
        assert_identical(a, b, "1 vs 2 threads")


def test_no_drift_over_2000_frames():
    model = _small_model(n_threads=1)
    s = model.stream(threshold=4, detector="pixel", layer_thresholds=0.1)
    frames = _frames(2000, seed=5)
    errors, held = [], 0.0
    checked = set(range(1, 2000, 199)) | {1999}
    before = None
    for i, f in enumerate(frames):
        y = s.step(f)
        held += sum(n.suppressed_fraction for n in s.last_stats.nodes)
        if i % 20 == 0 or i == len(frames) - 1:
            errors.append(deviation(y, model.run(s.reference_input)).max_abs)
        if i in checked:
            check_invariant(s, before, f"frame {i}")
        before = {k: v.copy() for k, v in s._caches.items()} if i + 1 in checked else None
    assert held > 100, "the thresholds held nothing back: the test would test nothing"
    first, second = max(errors[:50]), max(errors[50:])
    assert first > 0
    # bounded: the second 1,000 frames are no worse than the first (a drift grows)
    assert second <= 1.5 * first, (first, second)


def _se_model():
    rng = np.random.default_rng(1)
    conv = {"out_channels": 6, "kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1),
            "dilation": (1, 1), "activation": "relu"}
    nodes = [
        Node("c1", "conv2d", ["x"], ["a"], conv,
             {"weight": (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32),
              "bias": rng.standard_normal(6).astype(np.float32)}),
        Node("gap", "global_avg_pool", ["a"], ["g"], {"keepdim": 1}),
        Node("sig", "sigmoid", ["g"], ["s"], {}),
        Node("se", "mul", ["a", "s"], ["b"], {}),
        Node("c2", "conv2d", ["b"], ["y"], dict(conv, out_channels=2),
             {"weight": (rng.standard_normal((2, 6, 3, 3)) * 0.3).astype(np.float32),
              "bias": rng.standard_normal(2).astype(np.float32)})]
    return Model(Graph(InputSpec("x", (1, 3, 32, 40)), nodes, ["y"]), n_threads=1)


def test_held_back_se_scale_keeps_the_network_sparse():
    model = _se_model()
    x0 = np.random.default_rng(2).standard_normal((1, 3, 32, 40)).astype(np.float32)
    x1 = x0.copy()
    x1[:, :, 4:8, 4:8] += 1.0
    for lt, dense_after_se in ((None, True), (0.05, False)):
        s = model.stream(layer_thresholds=lt)
        s.step(x0)
        s.step(x1)
        active = {n.name: n.active_fraction for n in s.last_stats.nodes}
        assert (active["se"] == 1.0) == dense_after_se, (lt, active)
        assert (active["c2"] == 1.0) == dense_after_se, (lt, active)
    gap = next(n for n in s.last_stats.nodes if n.name == "gap")
    assert gap.suppressed_fraction == 1.0 and gap.error_bound > 0
    assert active["sig"] == 0.0
    check_invariant(s, what="SE, masked")


def test_dense_fallback_holds_back_too():
    model = _se_model()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 32, 40)).astype(np.float32)
    s = model.stream(layer_thresholds=0.1)
    s.step(x)
    before = None
    for i in range(4):     # small noise everywhere: every position dirty, most held back
        x = x + (rng.standard_normal(x.shape) * 0.02).astype(np.float32)
        s.step(x)
        check_invariant(s, before, f"step {i}")
        before = {k: v.copy() for k, v in s._caches.items()}
        c1 = next(n for n in s.last_stats.nodes if n.name == "c1")
        assert c1.dense and 0.5 < c1.suppressed_fraction < 1.0, c1


def test_options_are_validated():
    model = _small_model()
    for bad in (-1, float("nan"), float("inf"), True, "fast", [0.1]):
        with pytest.raises(ValueError, match="layer_thresholds"):
            model.stream(layer_thresholds=bad)
    with pytest.raises(ValueError, match="no node named 'nope'"):
        model.stream(layer_thresholds={"nope": 0.1})
    with pytest.raises(ValueError, match=r"layer_thresholds\['ca'\]"):
        model.stream(layer_thresholds={"ca": -0.1})
    with pytest.raises(ValueError, match="calibration= applies only"):
        model.stream(calibration={"max_error": 0.1})
    with pytest.raises(ValueError, match="calibration= applies only"):
        model.stream(layer_thresholds=0.1, calibration={"max_error": 0.1})
    for cal, msg in (({"bound": 1}, "unknown keys"), ({"metric": "psnr"}, "metric"),
                     ({"frames": 1}, "frames"), ({"max_error": -1}, "max_error"),
                     ({"output": 1}, "output 1"), ("0.1", "must be a dict")):
        with pytest.raises(ValueError, match=msg):
            model.stream(layer_thresholds="auto", calibration=cal)
    with pytest.raises(ValueError, match="cannot read"):
        model.stream(layer_thresholds="/nonexistent/thresholds.json")
    frames = _frames(3)
    with pytest.raises(ValueError, match="metric"):
        calibrate(model, frames, 0.1, metric="psnr")
    with pytest.raises(ValueError, match="at least 2 frames"):
        calibrate(model, frames[:1], 0.1)
    with pytest.raises(ValueError, match="max_error"):
        calibrate(model, frames, -0.1)
    for kw in ({"lo": 0.0}, {"lo": 2.0, "hi": 1.0}, {"hi": float("nan")}):
        with pytest.raises(ValueError, match="lo|hi"):
            calibrate(model, frames, 0.1, **kw)
    with pytest.raises(ValueError, match="iterations"):
        calibrate(model, frames, 0.1, iterations=-1)


def test_calibration_meets_its_bound_and_its_file_reproduces_it(tmp_path):
    model = _small_model(n_threads=1)
    frames = _frames(25, seed=3)
    # (a bound that buys MACs: under 0.05 here the thresholds save < 1%, and calibrate
    # falls back to the exact mode, tested below)
    cal = calibrate(model, frames, max_error=0.1, metric="rel_l2", threshold=4,
                    detector="pixel", iterations=5)
    assert cal.error <= 0.1 and cal.multiplier > 0 and cal.thresholds
    assert cal.mac_ratio >= 1.1 * cal.exact_mac_ratio
    assert any(t["error"] > 0.1 for t in cal.tried) or cal.multiplier == 1.0
    path = tmp_path / "t.json"
    cal.save(path)
    assert json.loads(path.read_text())["thresholds"] == cal.thresholds
    # measured again, independently: a stream with the file's thresholds vs the exact mode
    s = model.stream(threshold=4, detector="pixel", layer_thresholds=str(path))
    e = model.stream(threshold=4, detector="pixel")
    devs = [deviation(s.step(f), e.step(f)) for f in frames][1:]
    assert clip_error(devs, "rel_l2") == pytest.approx(cal.error)
    assert cal.error <= 0.1
    assert sum(n.suppressed_fraction for n in s.last_stats.nodes) >= 0


def test_auto_runs_exactly_then_calibrates_on_the_first_frames():
    model = _small_model(n_threads=1)
    frames = _frames(12, seed=4)
    bounds = {"max_error": 0.1, "metric": "max_abs", "frames": 6}
    s = model.stream(threshold=4, detector="pixel", layer_thresholds="auto",
                     calibration=bounds)
    e = model.stream(threshold=4, detector="pixel")
    for i, f in enumerate(frames):
        y = s.step(f)
        ye = e.step(f)
        if i < 5:
            assert s.calibration is None
            assert_identical(y, ye, f"frame {i}: exact until calibrated")
    cal = s.calibration
    assert cal is not None and cal.frames == 6 and cal.error <= 0.1
    ref = calibrate(model, frames[:6], 0.1, "max_abs", threshold=4, detector="pixel")
    assert cal.thresholds == ref.thresholds
    assert all(n.error_bound == cal.thresholds.get(n.name) for n in s.last_stats.nodes)


def test_labels_metric_counts_frames_whose_argmax_differs():
    from framedelta.engine.checks import Deviation
    devs = [Deviation(0.1, 0.1, 1.0), Deviation(0.2, 0.3, 0.0), Deviation(0.0, 0.0, 1.0)]
    assert clip_error(devs, "labels") == pytest.approx(1 / 3)
    assert clip_error(devs, "rel_l2") == pytest.approx(0.3)
    assert clip_error(devs, "max_abs") == pytest.approx(0.2)


def test_cli_calibrate_writes_thresholds_that_run_uses(tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    from framedelta.cli import main
    from framedelta.formats import write_model
    model = _small_model(n_threads=1)
    path = tmp_path / "m.h5"
    write_model(model.graph, path)
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for f in _frames(12, seed=6):
        w.write(f)
    w.release()
    out = tmp_path / "t.json"
    assert main(["calibrate", str(path), str(video), "--max-error", "0.1", "--frames", "10",
                 "--threshold", "4", "--detector", "pixel", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["error"] <= 0.1 and data["thresholds"] and f"{data['error']:.4g}" in text
    assert main(["run", str(path), str(video), "--frames", "10", "--threshold", "4",
                 "--detector", "pixel", "--layer-thresholds", str(out)]) == 0
    assert "held back %" in capsys.readouterr().out
    assert main(["run", str(path), str(video), "--frames", "4",
                 "--layer-thresholds", "0.05"]) == 0
    assert main(["run", str(path), str(video), "--layer-thresholds", "fast"]) == 2


def test_check_every_measures_the_approximate_error():
    model = _small_model(n_threads=1)
    s = model.stream(threshold=4, detector="pixel", layer_thresholds=0.5, check_every=3)
    e = model.stream(threshold=4, detector="pixel")
    seen = 0
    for i, f in enumerate(_frames(12, seed=7)):
        y, ye = s.step(f), e.step(f)
        if (i + 1) % 3 == 0:
            assert s.last_stats.check == deviation(y, ye)
            seen += s.last_stats.check.max_abs > 0
        else:
            assert s.last_stats.check is None
    assert seen > 0


def test_pnet_trained_weights_keep_the_invariant_on_vtest(vtest_path, tmp_path):
    from framedelta.converters.zoo.pnet import (PNET_MISSING, pnet, pnet_preprocess,
                                                pnet_weights_path)
    if pnet_weights_path() is None:
        pytest.skip(PNET_MISSING)
    torch = pytest.importorskip("torch")
    import framedelta as fd
    from framedelta.scenes import video_frames
    frames = [np.ascontiguousarray(f[::3, ::3]) for f in video_frames(vtest_path, 40)]
    h, w = frames[0].shape[:2]
    fd.convert(pnet(), torch.rand(1, 3, h, w), tmp_path / "pnet.h5",
               preprocess=pnet_preprocess())
    model = fd.load(tmp_path / "pnet.h5", n_threads=1)
    s = model.stream(threshold=8, detector="block", layer_thresholds=0.05, check_every=8)
    e = model.stream(threshold=8, detector="block")
    before, held, checks = None, 0.0, []
    for i, f in enumerate(frames):
        y, ye = s.step(f), e.step(f)
        held += sum(n.suppressed_fraction for n in s.last_stats.nodes)
        if i % 8 == 7:
            check_invariant(s, before, f"frame {i}")
            checks.append(s.last_check)
            assert s.last_check == deviation(y, ye)
        before = {k: v.copy() for k, v in s._caches.items()} if i % 8 == 6 else None
    assert held > 0 and len(checks) == 5
    assert max(c.max_abs for c in checks) > 0        # approximate, and measured as such


def test_no_scene_cut_shortcut_in_the_approximate_mode():
    """A frame that changes almost everywhere (sensor noise under a low threshold) is
    what the thresholds hold back node by node: the exact mode's scene-cut shortcut
    (every node whole, no comparison) must not take it over."""
    from framedelta.engine.stream import SCENE_CUT
    model = _small_model(n_threads=1)
    s = model.stream(threshold=0, detector="pixel", layer_thresholds=0.5)
    f = _frames(1, seed=4)[0]
    s.step(f)
    noisy = np.clip(f.astype(int) + np.random.default_rng(0).integers(-2, 3, f.shape),
                    0, 255).astype(np.uint8)
    s.step(noisy)
    assert s.last_stats.input_changed_fraction > SCENE_CUT
    assert sum(n.suppressed_fraction for n in s.last_stats.nodes) > 0


def test_calibration_falls_back_to_the_exact_mode_when_thresholds_buy_nothing():
    """A bound nothing but the exact mode meets (0) would leave thresholds of 0 at
    every node: comparisons that save no MACs. calibrate() returns the exact mode then
    (no node thresholded), and a stream given that result is the exact stream."""
    from framedelta.engine.approx import MIN_MAC_GAIN
    model = _small_model(n_threads=1)
    frames = _frames(8, seed=6)
    cal = calibrate(model, frames, max_error=0.0, metric="max_abs", threshold=4,
                    detector="pixel", iterations=2)
    assert cal.thresholds == {} and cal.multiplier == 0.0 and cal.error == 0.0
    assert cal.mac_ratio == cal.exact_mac_ratio
    assert all(t["mac_ratio"] < MIN_MAC_GAIN * cal.exact_mac_ratio or t["error"] > 0
               for t in cal.tried)
    s = model.stream(threshold=4, detector="pixel", layer_thresholds=cal.thresholds)
    e = model.stream(threshold=4, detector="pixel")
    for f in frames:
        assert_identical(s.step(f), e.step(f))
    assert all(n.suppressed_fraction == 0 for n in s.last_stats.nodes)
