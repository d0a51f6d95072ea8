"""The `framedelta` command line: convert, info, demo.

    framedelta convert net.pt2 -o net.h5
    framedelta convert pkg.module:factory --weights ckpt.pth --input-shape 1,3,360,480 -o net.h5
    framedelta info net.h5
    framedelta demo [--video clip.mp4] [--frames 30]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import FramedeltaError

IMAGENET = dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W (e.g. 1,3,360,480), got {text!r}")
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 1,C,H,W with positive sizes, got {text!r}")
    return shape


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 360x480), got {text!r}")
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"the scene must be at least 16x16, got {text!r}")
    return h, w


def _preprocess(args):
    if not args.frames_in:
        return None
    from .formats import Preprocess
    return Preprocess(**IMAGENET, bgr_to_rgb=True)


def cmd_convert(args):
    import torch

    from .converters import convert
    from .converters.checkpoint import load_source
    source = load_source(args.source, weights=args.weights, allow_pickle=args.allow_pickle)
    if isinstance(source, torch.export.ExportedProgram):
        example = None
        if args.input_shape is not None:
            example = torch.rand(args.input_shape)
    else:
        if args.input_shape is None:
            raise SystemExit("framedelta convert: --input-shape 1,C,H,W is required for a "
                             "module (a .pt2 file carries its own)")
        example = torch.rand(args.input_shape)
    graph = convert(source, example, args.output, preprocess=_preprocess(args))
    print(f"wrote {args.output}: {len(graph.nodes)} nodes, input {tuple(graph.input.shape)}")


def cmd_info(args):
    from .formats import read_model
    from .info import format_table
    print(format_table(read_model(args.model), args.model))


def _timed(fn, x):
    t = time.perf_counter()
    y = fn(x)
    return y, time.perf_counter() - t


def cmd_demo(args):
    """The README's main job: convert a bundled model, run it on a clip, compare speed."""
    import torch
    from tqdm import tqdm

    from . import convert, load
    from .converters.zoo import ZOO
    from .formats import Preprocess
    from .scenes import fixed_camera_frames, video_frames

    torch.set_num_threads(args.threads)
    if args.video:
        frames = list(video_frames(args.video, args.frames))
        if not frames:
            raise SystemExit(f"framedelta demo: no frames could be read from {args.video}")
        source = args.video
    else:
        h, w = args.size
        frames = list(fixed_camera_frames(args.frames, h, w, coverage=0.03, seed=0))
        source = f"the bundled synthetic fixed-camera scene ({h}x{w}, 3% moving)"
    h, w = frames[0].shape[:2]
    net = ZOO[args.model]()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out) if args.out else Path(tmp) / f"{args.model}.h5"
        print(f"converting {args.model} (plain PyTorch, random weights) for 1x3x{h}x{w} ...")
        convert(net, torch.rand(1, 3, h, w), path, preprocess=Preprocess(**IMAGENET))
        model = load(path, n_threads=args.threads)
    print(f"running on {len(frames)} frames of {source}, {args.threads} threads")
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    fd_times, torch_times, worst = [], [], 0.0
    with torch.no_grad():
        for frame in tqdm(frames, unit="frame"):
            y, dt = _timed(model.run, frame)
            fd_times.append(dt)
            x = torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)[None]
            x = (x.float() / 255.0 - mean) / std
            yt, dt = _timed(net, x)
            torch_times.append(dt)
            yt = yt.numpy()
            worst = max(worst, float(np.abs(y - yt).max() / (1 + np.abs(yt).max())))
    fd_ms = 1e3 * float(np.median(fd_times[1:] or fd_times))
    torch_ms = 1e3 * float(np.median(torch_times[1:] or torch_times))
    print(f"framedelta dense : {fd_ms:8.1f} ms/frame (median)")
    print(f"PyTorch eager    : {torch_ms:8.1f} ms/frame (median)")
    print(f"speed-up vs PyTorch: {torch_ms / fd_ms:.2f}x   "
          f"max relative difference to PyTorch: {worst:.2e}")
    print("(incremental execution, which recomputes only what changed, is the next step)")
    if worst > 1e-4:
        print("error: framedelta and PyTorch disagree", file=sys.stderr)
        return 1
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="framedelta", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"framedelta {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint to a model file")
    c.add_argument("source", help="a .pt2 file (torch.export.save), or pkg.module:factory")
    c.add_argument("--weights", help="state-dict file for a pkg.module:factory source")
    c.add_argument("--input-shape", type=_shape, help="1,C,H,W (required for a factory)")
    c.add_argument("-o", "--output", required=True, help="model file to write (.h5)")
    c.add_argument("--frames-in", action="store_true",
                   help="declare ImageNet preprocessing so the model takes uint8 BGR frames")
    c.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled whole module (runs code from the file: trusted "
                        "files only)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="nodes, shapes, MACs and receptive fields of a model file")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="convert a bundled model and run it on a clip")
    d.add_argument("--model", default="unet", choices=["unet", "resnet18", "mobilenet_v2"])
    d.add_argument("--video", help="a video file instead of the bundled synthetic scene")
    d.add_argument("--frames", type=int, default=20, help="frames to run (default 20)")
    d.add_argument("--size", type=_size, default=(360, 480),
                   help="HxW of the synthetic scene (default 360x480)")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--out", help="keep the converted model file here")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FramedeltaError as e:
        print(f"framedelta {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"framedelta {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
