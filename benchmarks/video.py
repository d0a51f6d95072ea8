"""Incremental speed on video: framedelta incremental vs dense vs PyTorch vs onnxruntime.

    python benchmarks/video.py                          # vtest (first 200 frames) + sweep
    python benchmarks/video.py --frames 0 --update-readme     # the whole clip
    python benchmarks/video.py --video my_clip.mp4 --models unet

Two inputs: a real fixed-camera clip (../shared/data/vtest.avi by default, or any
video by path) and a synthetic sweep of changed area (moving objects covering 0.5% to
50% of the frame). For each model (the zoo: ResNet-18, MobileNetV2, the U-Net,
MobileNetV3-small, EfficientNet-B0, DeepLabV3, the YOLO detector and the FCN, at the
clip's size, 1x3x360x480 for vtest; uint8 frames, ImageNet preprocessing) it steps one
stream per detector (`pixel` and `block` 16, threshold 8 in pixel units) over every
frame, and times the dense engines (framedelta dense, PyTorch eager, onnxruntime) every
``--dense-every`` frames, all interleaved in one process. Reports mean ms/frame (first
frame excluded), speed-up vs onnxruntime and vs our dense, and the MAC-count bound
beside the realised speed-up.
Outputs benchmarks/results/video.json, video_sweep.png and the table in
benchmarks/README.md (--update-readme). Needs the bench extra.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MODELS, ROOT, RESULTS, LoadMeter, machine_facts,  # noqa: E402
                    onnxruntime_session, read_clip, replace_section, write_json, zoo_model)
IMAGENET = dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SWEEP = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "vtest.avi"


def build(name, h, w, n_threads, tmp):
    import torch

    import framedelta as fd
    from framedelta.formats import Preprocess

    net = zoo_model(name, h, w)
    x = torch.rand(1, 3, h, w)
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, x, path, preprocess=Preprocess(**IMAGENET))
    model = fd.load(path, n_threads=n_threads)
    sess = onnxruntime_session(net, x, Path(tmp) / f"{name}.onnx", n_threads)
    mean = np.array(IMAGENET["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET["std"], np.float32).reshape(1, 3, 1, 1)

    def to_tensor(frame):
        x = frame[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return np.ascontiguousarray((x - mean) / std)

    def torch_run(frame):
        with torch.no_grad():
            return net(torch.from_numpy(to_tensor(frame)))

    dense = {"framedelta_dense": model.run,
             "onnxruntime": lambda f: sess.run(None, {"x": to_tensor(f)}),
             "torch": torch_run}
    return model, dense


def run_clip(model, dense, frames, dense_every, detectors, threshold):
    """Step one stream per detector over ``frames``; time dense engines every k frames."""
    streams = {d: model.stream(threshold=threshold, detector=d, block=16) for d in detectors}
    inc = {d: [] for d in detectors}
    mac_ratio = {d: [] for d in detectors}
    changed = {d: [] for d in detectors}
    dense_ms = {k: [] for k in dense}
    loads = []
    for i, frame in enumerate(frames):
        with LoadMeter() as meter:
            if i % dense_every == 1 or dense_every == 1:
                for k, fn in dense.items():
                    t = time.perf_counter()
                    fn(frame)
                    dense_ms[k].append(1e3 * (time.perf_counter() - t))
            for d, s in streams.items():
                t = time.perf_counter()
                s.step(frame)
                dt = 1e3 * (time.perf_counter() - t)
                if i > 0:       # the first step is dense by definition
                    inc[d].append(dt)
                    mac_ratio[d].append(s.last_stats.macs)
                    changed[d].append(s.last_stats.input_changed_fraction)
        loads.append(meter.outside)
    dense_macs = streams[detectors[0]].last_stats.dense_macs
    out = {"dense_ms": {k: statistics.median(v) for k, v in dense_ms.items()},
           "outside_load_median": statistics.median(loads), "detectors": {}}
    for d in detectors:
        mean_inc = float(np.mean(inc[d]))
        out["detectors"][d] = {
            "incremental_ms": mean_inc,
            "changed_fraction": float(np.mean(changed[d])),
            # over the clip: dense MACs of all frames / incremental MACs of all frames
            "mac_bound": dense_macs * len(mac_ratio[d]) / max(1, sum(mac_ratio[d])),
            "speedup_vs_dense": out["dense_ms"]["framedelta_dense"] / mean_inc,
            "speedup_vs_onnxruntime": out["dense_ms"]["onnxruntime"] / mean_inc,
        }
        b = out["detectors"][d]
        b["realised_fraction_of_bound"] = b["speedup_vs_dense"] / b["mac_bound"]
    return out


def table(rows):
    lines = ["| input | model | detector | changed % | MAC bound | incremental ms | "
             "dense ms | onnxruntime ms | torch ms | vs dense | vs onnxruntime | "
             "of bound | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for d, b in r["detectors"].items():
            dm = r["dense_ms"]
            lines.append(
                f"| {r['input']} | {r['model']} | {d} | {100 * b['changed_fraction']:.1f} | "
                f"{b['mac_bound']:.2f} | {b['incremental_ms']:.1f} | "
                f"{dm['framedelta_dense']:.1f} | {dm['onnxruntime']:.1f} | {dm['torch']:.1f} | "
                f"{b['speedup_vs_dense']:.2f} | {b['speedup_vs_onnxruntime']:.2f} | "
                f"{100 * b['realised_fraction_of_bound']:.0f}% | "
                f"{r['outside_load_median']:.2f} |")
    return "\n".join(lines)


def plot(sweep_rows, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, d in zip(axes, ("pixel", "block")):
        for model in sorted({r["model"] for r in sweep_rows}):
            rs = sorted((r for r in sweep_rows if r["model"] == model),
                        key=lambda r: r["detectors"][d]["changed_fraction"])
            xs = [100 * r["detectors"][d]["changed_fraction"] for r in rs]
            ax.plot(xs, [r["detectors"][d]["speedup_vs_onnxruntime"] for r in rs], "o-",
                    label=f"{model} vs onnxruntime")
            ax.plot(xs, [r["detectors"][d]["mac_bound"] for r in rs], ":", alpha=0.6,
                    label=f"{model} MAC bound")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("changed input pixels (%)")
        ax.set_title(f"detector {d}" + (" 16" if d == "block" else "") + ", threshold 8")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed-up (x)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=200, help="frames of the video (0 = all)")
    p.add_argument("--sweep-frames", type=int, default=25, help="frames per sweep point")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--threshold", type=float, default=8.0)
    p.add_argument("--dense-every", type=int, default=10)
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--out", default="video", help="results name: benchmarks/results/OUT.json "
                   "and the README section OUT-table (keeps other runs' results)")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from framedelta.scenes import fixed_camera_frames

    clip = read_clip(args.video, args.frames, without="only the synthetic sweep runs")
    h, w = clip[0].shape[:2] if clip else (360, 480)
    detectors = ["pixel", "block"]
    rows, sweep_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, dense = build(name, h, w, args.threads, tmp)
            if clip:
                r = run_clip(model, dense, clip, args.dense_every, detectors, args.threshold)
                r.update(model=name, input=f"{Path(args.video).name} ({len(clip)} frames)")
                rows.append(r)
                print(table([r]).split("\n")[-2:], flush=True)
            if not args.no_sweep:
                for cov in SWEEP:
                    frames = list(fixed_camera_frames(args.sweep_frames, h, w, coverage=cov,
                                                      seed=1))
                    r = run_clip(model, dense, frames, max(1, args.dense_every // 2),
                                 detectors, args.threshold)
                    r.update(model=name, input=f"synthetic {100 * cov:g}%", coverage=cov)
                    sweep_rows.append(r)
                    print(table([r]).split("\n")[-2:], flush=True)
    facts = machine_facts(args.threads)
    out = write_json(args.out, {"benchmark": "video", "machine": facts, "threshold":
                               args.threshold, "clip": rows, "sweep": sweep_rows})
    text = table(rows + sweep_rows)
    print(text)
    print(f"wrote {out}")
    sweep_png = f"{args.out}_sweep.png"
    if sweep_rows:
        plot(sweep_rows, RESULTS / sweep_png)
        print(f"wrote {RESULTS / sweep_png}")
    if args.update_readme:
        cmd = " ".join(["python benchmarks/video.py"] + (argv if argv is not None
                                                         else sys.argv[1:]))
        note = (f"Measured with `{cmd}` on "
                f"{facts['cpu_model']}, {args.threads} threads, uint8 frames 360x480, "
                f"threshold {args.threshold:g} (pixel units), commit "
                f"{(facts['git_commit'] or '?')[:10]}. Incremental: mean ms/frame over "
                "the clip after the first frame; dense engines: medians of runs "
                "interleaved with the streams. MAC bound = dense MACs / incremental MACs; "
                "'of bound' = realised speed-up vs our dense / MAC bound.\n\n")
        if sweep_rows:
            note += f"![speed-up vs changed area](results/{sweep_png})\n\n"
        replace_section(ROOT / "benchmarks" / "README.md", f"{args.out}-table", note + text)


if __name__ == "__main__":
    main()
