"""Region re-run on video: regions (margins exact, 32, 16) vs layer-wise vs dense vs onnxruntime.

    python benchmarks/regions.py --frames 200 --update-readme     # what the README quotes
    python benchmarks/regions.py --frames 20                       # a quick check
    python benchmarks/regions.py --video my_clip.mp4 --models pnet unet

For each fully convolutional model of the zoo (the U-Net, the FCN, the YOLO detector's
backbone and neck with its per-level 1x1 head convs, and MTCNN's PNet with its trained
weights) on the clip's uint8 frames (ImageNet preprocessing; PNet's own), one stream
per mode steps over every frame: ``mode="regions"`` with ``margin="exact"``, 32 and 16,
and the layer-wise ``mode="layers"``, all with the same detector (block 16, threshold
8 in pixel units), so they share one reference input; framedelta dense and onnxruntime
run every ``--dense-every`` frames; everything interleaved in one process. Every
``--check-every`` frames each stream's output is compared with ``model.run`` of the
reference input (``checks.deviation``: max abs, relative L2, label agreement).

YOLO: its Detect head decodes boxes with grids that are constants of the input size, so
it cannot run on crops (``stream(mode="regions")`` refuses it naming the node); the
benchmark runs the detector without the decoding, on frames whose height is cut to a
multiple of 32 (352x480 for vtest: 360 / 32 is not whole and the neck's nearest
upsampling from 12 to 23 rows is not an integer ratio, refused too).

Writes benchmarks/results/regions.json, regions.png and, with --update-readme, the
``regions-table`` section of benchmarks/README.md.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, RESULTS, LoadMeter, machine_facts, read_clip,  # noqa: E402
                    onnxruntime_session, replace_section, write_json, zoo_model)

IMAGENET = dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "vtest.avi"
MODELS = ["pnet", "unet", "fcn", "yolo"]
MODES = [("regions", "exact"), ("regions", 32), ("regions", 16), ("layers", None)]


def mode_name(mode, margin):
    return "layers" if mode == "layers" else f"regions {margin}"


def yolo_features(h, w):
    """The zoo's YOLO without the decoding: per level the Detect head's 1x1 conv."""
    import torch
    from torch import nn

    net = zoo_model("yolo", h, w)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            n = self.net
            p3 = n.c3_2(n.down2(n.c3_1(n.down1(n.stem(x)))))
            p4 = n.c3_3(n.down3(p3))
            p5 = n.sppf(n.c3_4(n.down4(p4)))
            h5 = n.lat5(p5)
            h4 = n.lat4(n.td4(torch.cat((n._up(h5, p4), p4), 1)))
            o3 = n.td3(torch.cat((n._up(h4, p3), p3), 1))
            o4 = n.pan4(torch.cat((n.bu3(o3), h4), 1))
            o5 = n.pan5(torch.cat((n.bu4(o4), h5), 1))
            return tuple(m(o) for m, o in zip(n.detect.m, (o3, o4, o5)))

    return Features().eval()


def frame_crop(name, h):
    """Rows (top, bottom) of the clip a model runs on: YOLO needs a multiple of 32."""
    if name != "yolo" or h % 32 == 0:
        return 0, h
    top = (h % 32) // 2
    return top, top + h - h % 32


def build(name, h, w, n_threads, tmp):
    import torch

    import framedelta as fd
    from framedelta.converters.zoo.pnet import pnet, pnet_preprocess
    from framedelta.formats import Preprocess

    if name == "pnet":
        net, pre = pnet(), pnet_preprocess()
    else:
        net = yolo_features(h, w) if name == "yolo" else zoo_model(name, h, w)
        pre = Preprocess(**IMAGENET)
    x = torch.rand(1, 3, h, w)
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, x, path, preprocess=pre)
    model = fd.load(path, n_threads=n_threads)
    sess = onnxruntime_session(net, x, Path(tmp) / f"{name}.onnx", n_threads)
    mean = np.array(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(pre.std, np.float32).reshape(1, 3, 1, 1)

    def to_tensor(frame):
        x = frame[..., ::-1] if pre.bgr_to_rgb else frame
        x = x.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(pre.scale)
        return np.ascontiguousarray((x - mean) / std)

    dense = {"framedelta_dense": model.run,
             "onnxruntime": lambda f: sess.run(None, {"x": to_tensor(f)})}
    return model, dense


def run_clip(model, dense, frames, dense_every, check_every, threshold):
    from framedelta.engine.checks import deviation

    streams = {mode_name(m, g): model.stream(threshold=threshold, detector="block",
                                             block=16, mode=m,
                                             **({"margin": g} if m == "regions" else {}))
               for m, g in MODES}
    ms = {k: [] for k in streams}
    macs = {k: [] for k in streams}
    cropped = {k: [] for k in streams}
    n_regions = {k: [] for k in streams}
    prepare = {k: 0.0 for k in streams}
    devs = {k: [] for k in streams}
    dense_ms = {k: [] for k in dense}
    changed, loads = [], []
    for i, frame in enumerate(frames):
        with LoadMeter() as meter:
            if i % dense_every == 1 or dense_every == 1:
                for k, fn in dense.items():
                    t = time.perf_counter()
                    fn(frame)
                    dense_ms[k].append(1e3 * (time.perf_counter() - t))
            outs = {}
            for k, s in streams.items():
                t = time.perf_counter()
                outs[k] = s.step(frame)
                dt = 1e3 * (time.perf_counter() - t)
                st = s.last_stats
                if i > 0:       # the first step is dense by definition
                    ms[k].append(dt)
                    macs[k].append(st.macs)
                    if hasattr(st, "cropped_fraction"):
                        cropped[k].append(st.cropped_fraction)
                        n_regions[k].append(len(st.regions))
                prepare[k] += getattr(st, "prepare_seconds", 0.0)
        loads.append(meter.outside)
        if i > 0:
            changed.append(streams["layers"].last_stats.input_changed_fraction)
        if i > 0 and i % check_every == 0:
            refs = {}
            for k, s in streams.items():
                key = s.reference_input.tobytes()
                if key not in refs:
                    refs[key] = model.run(s.reference_input)
                devs[k].append(deviation(outs[k], refs[key]))
    dense_macs = streams["layers"].last_stats.dense_macs
    out = {"dense_ms": {k: statistics.median(v) for k, v in dense_ms.items()},
           "outside_load_median": statistics.median(loads),
           "changed_fraction": float(np.mean(changed)), "modes": {}}
    for k in streams:
        mean_ms = float(np.mean(ms[k]))
        d = devs[k]
        out["modes"][k] = {
            "ms": mean_ms,
            "ms_median": float(np.median(ms[k])),
            "mac_bound": dense_macs * len(macs[k]) / max(1, sum(macs[k])),
            "speedup_vs_onnxruntime": out["dense_ms"]["onnxruntime"] / mean_ms,
            "speedup_vs_dense": out["dense_ms"]["framedelta_dense"] / mean_ms,
            "cropped_fraction": float(np.mean(cropped[k])) if cropped[k] else None,
            "regions_per_frame": float(np.mean(n_regions[k])) if n_regions[k] else None,
            "prepare_seconds": prepare[k],
            "checks": len(d),
            "max_abs": max((c.max_abs for c in d), default=None),
            "rel_l2": max((c.rel_l2 for c in d), default=None),
            "label_agreement": min((c.label_agreement for c in d), default=None),
        }
    s = streams["regions exact"]
    out["exact_margin"] = list(s.exact_margin)
    out["alignment"] = list(s.plan.alignment)
    out["crop_models"] = len(s.plan.prepare_seconds)
    out["prepare_seconds_per_crop_model"] = (statistics.median(s.plan.prepare_seconds)
                                             if s.plan.prepare_seconds else None)
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows):
    lines = ["| model | mode | ms/frame | vs onnxruntime | vs dense | MAC bound | cropped % | "
             "crops/frame | max abs dev | rel L2 dev | label agreement | prepare s | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        dm = r["dense_ms"]
        lines.append(f"| {r['model']} | framedelta dense | {dm['framedelta_dense']:.1f} | "
                     f"{dm['onnxruntime'] / dm['framedelta_dense']:.2f} | 1.00 | 1.00 | | | "
                     f"0 | 0 | 100% | | {r['outside_load_median']:.2f} |")
        lines.append(f"| {r['model']} | onnxruntime dense | {dm['onnxruntime']:.1f} | 1.00 | "
                     f"{dm['framedelta_dense'] / dm['onnxruntime']:.2f} | | | | | | | | |")
        for k, b in r["modes"].items():
            lines.append(
                f"| {r['model']} | {k} | {b['ms']:.1f} | {b['speedup_vs_onnxruntime']:.2f} | "
                f"{b['speedup_vs_dense']:.2f} | {b['mac_bound']:.2f} | "
                f"{_fmt(b['cropped_fraction'] and 100 * b['cropped_fraction'], '.1f')} | "
                f"{_fmt(b['regions_per_frame'], '.2f')} | {_fmt(b['max_abs'], '.2g')} | "
                f"{_fmt(b['rel_l2'], '.2g')} | "
                f"{_fmt(b['label_agreement'] and 100 * b['label_agreement'], '.2f')}% | "
                f"{b['prepare_seconds']:.2f} | {r['outside_load_median']:.2f} |")
    return "\n".join(lines)


def winners(rows):
    """Per model: the fastest exact mode, and the fastest mode at all with its deviation."""
    lines = ["| model | changed % | exact margin (t, l, b, r) px | fastest exact | "
             "vs onnxruntime | fastest overall | vs onnxruntime | its rel L2 dev |",
             "|---|---:|---|---|---:|---|---:|---:|"]
    for r in rows:
        exact = {k: b for k, b in r["modes"].items() if k in ("layers", "regions exact")}
        fe = max(exact, key=lambda k: exact[k]["speedup_vs_onnxruntime"])
        fa = max(r["modes"], key=lambda k: r["modes"][k]["speedup_vs_onnxruntime"])
        lines.append(f"| {r['model']} | {100 * r['changed_fraction']:.1f} | "
                     f"{tuple(r['exact_margin'])} | {fe} | "
                     f"{exact[fe]['speedup_vs_onnxruntime']:.2f} | {fa} | "
                     f"{r['modes'][fa]['speedup_vs_onnxruntime']:.2f} | "
                     f"{_fmt(r['modes'][fa]['rel_l2'], '.2g')} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [mode_name(m, g) for m, g in MODES]
    width = 0.8 / len(names)
    for j, k in enumerate(names):
        xs = np.arange(len(rows)) + (j - len(names) / 2 + 0.5) * width
        axes[0].bar(xs, [r["modes"][k]["speedup_vs_onnxruntime"] for r in rows], width,
                    label=k)
        axes[1].bar(xs, [max(r["modes"][k]["rel_l2"] or 0.0, 1e-9) for r in rows], width,
                    label=k)
    for ax in axes:
        ax.set_xticks(np.arange(len(rows)), [r["model"] for r in rows])
        ax.grid(alpha=0.3, axis="y")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("speed-up vs onnxruntime dense (x)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("relative L2 deviation from exact (1e-9 = exact)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=200, help="frames of the video (0 = all)")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--threshold", type=float, default=8.0)
    p.add_argument("--dense-every", type=int, default=5)
    p.add_argument("--check-every", type=int, default=10)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    if args.frames < 0 or args.dense_every < 1 or args.check_every < 1:
        p.error("--frames must be >= 0, --dense-every and --check-every >= 1")

    import torch
    torch.set_num_threads(args.threads)
    from framedelta.converters.zoo.pnet import PNET_MISSING, pnet_weights_path
    clip = read_clip(args.video, args.frames)
    h, w = clip[0].shape[:2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "pnet" and pnet_weights_path() is None:
                print(f"pnet skipped: {PNET_MISSING}", file=sys.stderr)
                continue
            top, bottom = frame_crop(name, h)
            frames = [np.ascontiguousarray(f[top:bottom]) for f in clip]
            model, dense = build(name, bottom - top, w, args.threads, tmp)
            r = run_clip(model, dense, frames, args.dense_every, args.check_every,
                         args.threshold)
            r.update(model=name, size=[bottom - top, w],
                     input=f"{Path(args.video).name} ({len(frames)} frames)")
            rows.append(r)
            print(table([r]), flush=True)
    facts = machine_facts(args.threads)
    out = write_json("regions", {"benchmark": "regions", "machine": facts,
                                 "threshold": args.threshold, "detector": "block 16",
                                 "rows": rows})
    text = table(rows) + "\n\nWhich mode wins, per model, on this clip:\n\n" + winners(rows)
    print(text)
    print(f"wrote {out}")
    plot(rows, RESULTS / "regions.png")
    print(f"wrote {RESULTS / 'regions.png'}")
    if args.update_readme:
        cmd = " ".join(["python benchmarks/regions.py"] + (argv if argv is not None
                                                           else sys.argv[1:]))
        note = (f"Measured with `{cmd}` on {facts['cpu_model']}, {args.threads} threads, "
                f"{rows[0]['input'] if rows else ''}, uint8 frames, detector block 16, "
                f"threshold {args.threshold:g} (pixel units), commit "
                f"{(facts['git_commit'] or '?')[:10]}. ms/frame: mean over the clip after "
                "the first frame (crop-model preparation included; its total is 'prepare "
                "s'); dense engines: medians of runs interleaved with the streams. "
                "Deviations: the worst of the checks every "
                f"{args.check_every} frames against `model.run(reference_input)`.\n\n"
                "![region re-run: speed-up and deviation](results/regions.png)\n\n")
        replace_section(ROOT / "benchmarks" / "README.md", "regions-table", note + text)


if __name__ == "__main__":
    main()
