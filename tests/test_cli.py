"""The command line end to end: convert (both checkpoint forms), info, demo."""

import subprocess
import sys

import numpy as np
import pytest

import framedelta as fd
from framedelta.cli import main

torch = pytest.importorskip("torch")


def _cli(*args):
    """Run the installed console script as a user would."""
    return subprocess.run([sys.executable, "-m", "framedelta.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def unet_state(tmp_path_factory):
    from framedelta.converters.zoo import unet
    net = unet(widths=(8, 16, 32, 64)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "unet.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_convert_factory_with_mismatched_weights_fails_clearly(tmp_path, unet_state):
    net, weights = unet_state
    out = tmp_path / "net.h5"
    r = _cli("convert", "framedelta.converters.zoo:unet", "--weights", weights,
             "--input-shape", "1,3,32,48", "-o", out)
    # the factory's default widths differ from the checkpoint's: a clear error, no file
    assert r.returncode != 0 and not out.exists()
    assert "state dict" in r.stderr.lower() or "size mismatch" in r.stderr.lower(), r.stderr


def test_convert_pt2_round_trip(tmp_path, unet_state):
    net, _ = unet_state
    x = torch.rand(1, 3, 32, 48)
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x,)), pt2)
    out = tmp_path / "net.h5"
    r = _cli("convert", pt2, "-o", out)
    assert r.returncode == 0, r.stderr
    y = fd.load(out).run(x)
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(y - ref).max() <= 1e-4 * (1 + np.abs(ref).max())

    r = _cli("info", out)
    assert r.returncode == 0, r.stderr
    assert "conv2d" in r.stdout and "GMACs" in r.stdout and "receptive field" in r.stdout
    assert "(1, 2, 32, 48)" in r.stdout


def test_convert_resnet_factory_with_weights(tmp_path):
    from framedelta.converters.zoo import resnet18
    net = resnet18(num_classes=1000).eval()
    weights = tmp_path / "r18.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "r18.h5"
    assert main(["convert", "framedelta.converters.zoo:resnet18", "--weights", str(weights),
                 "--input-shape", "1,3,64,64", "-o", str(out)]) == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x).numpy()
    y = fd.load(out).run(x)
    assert np.abs(y - ref).max() <= 1e-4 * (1 + np.abs(ref).max())


def test_info_on_a_broken_file_names_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ModelFormatError" in err and "bad.h5" in err


def test_convert_needs_input_shape_for_a_factory(tmp_path):
    r = _cli("convert", "framedelta.converters.zoo:unet", "-o", tmp_path / "x.h5")
    assert r.returncode != 0 and "--input-shape" in r.stderr


def test_demo_runs_and_reports_speed():
    r = _cli("demo", "--frames", "3", "--size", "48x64", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "speed-up vs PyTorch" in r.stdout and "ms/frame" in r.stdout


def test_run_on_vtest_dense_vs_incremental(tmp_path, vtest_path):
    pytest.importorskip("cv2")
    from framedelta.converters.zoo import unet
    from framedelta.formats import Preprocess
    net = unet(widths=(8, 16, 32, 64)).eval()
    model_path = tmp_path / "unet.h5"
    fd.convert(net, torch.rand(1, 3, 360, 480), model_path,
               preprocess=Preprocess(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3))
    out_video = tmp_path / "regions.mp4"
    r = _cli("run", model_path, vtest_path, "--frames", "6", "--threads", "2",
             "--out-video", out_video)
    assert r.returncode == 0, r.stderr
    for needle in ("incremental", "speed-up vs dense", "MAC-count bound", "active %",
                   "max deviation"):
        assert needle in r.stdout
    dev = float(r.stdout.split("max deviation")[1].split(":")[1].split()[0])
    assert dev <= 1e-5
    import cv2
    cap = cv2.VideoCapture(str(out_video))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 6


def test_run_refuses_a_model_without_preprocessing(tmp_path):
    from framedelta.converters.zoo import unet
    net = unet(widths=(8, 16, 32, 64)).eval()
    model_path = tmp_path / "plain.h5"
    fd.convert(net, torch.rand(1, 3, 32, 32), model_path)
    video = tmp_path / "missing.avi"
    assert main(["run", str(model_path), str(video)]) == 2


def test_demo_offers_every_zoo_model(capsys):
    from framedelta.cli import ZOO_NAMES
    from framedelta.converters.zoo import ZOO
    assert set(ZOO_NAMES) == set(ZOO)
    assert main(["demo", "--model", "yolo", "--frames", "3", "--size", "64x96",
                 "--threads", "1"]) == 0
    assert "speed-up vs dense" in capsys.readouterr().out
