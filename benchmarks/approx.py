"""The approximate mode's trade-off: speed-up vs onnxruntime against output error.

    python benchmarks/approx.py --update-readme              # all of vtest, four models
    python benchmarks/approx.py --frames 20 --models pnet    # a quick check

For each model (the zoo's U-Net, ResNet-18 and MobileNetV2 with random weights, and
MTCNN's PNet with its trained weights; 1x3x360x480 uint8 frames of vtest) it steps, over
the same frames and interleaved frame by frame in one process: the exact stream
(``layer_thresholds=None``), one stream per relative threshold of the sweep
(``layer_thresholds=r``), and two with the thresholds ``framedelta.engine.approx.calibrate``
picks on the first ``--calibrate-frames`` frames: for the model's target, and for a
relative L2 of at most 0.01 (the zoo's random weights give nearly constant labels, so a
label bound alone says little; ``exact_label_change`` in the JSON says how much the
exact mode's own labels move); every
``--dense-every`` frames it also times onnxruntime and framedelta dense. Detector block
16, threshold 8 (pixel units), 2 threads.

Errors are measured against the exact mode's output on the same frame (the exact stream
equals ``model.run(reference_input)``): relative L2 (mean and worst frame), the fraction
of argmax labels equal (U-Net: per pixel, mean and worst frame; classifiers: top-1 per
frame, the fraction of frames equal) and, for PNet, the max abs of the face-probability
map (second output) over all frames. Targets (issue 9): U-Net >= 5x vs onnxruntime with
>= 99% labels equal; ResNet-18 and MobileNetV2 >= 3x with top-1 equal on >= 99% of
frames; PNet >= 5x with face probabilities within 0.01.

Outputs benchmarks/results/approx.json, approx.png and the table in benchmarks/README.md
(--update-readme). Needs the bench extra; PNet needs facenet-pytorch (--no-deps).
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
MODELS = ["unet", "resnet18", "mobilenet_v2", "pnet"]
SWEEP = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
# a second calibrated run, bounded in relative L2 (worst frame): random weights give
# nearly constant labels, so a label bound alone says little about the error
REL_L2_BOUND = 0.01

# per model: the target's error figure, its bound, the speed-up wanted, and what
# calibrate() bounds to get there (metric, max_error, output index)
TARGETS = {
    "unet": dict(figure="label_agreement_mean", at_least=0.99, speedup=5.0,
                 calibrate=("labels", 0.01, None)),
    "resnet18": dict(figure="top1_agreement", at_least=0.99, speedup=3.0,
                     calibrate=("labels", 0.01, None)),
    "mobilenet_v2": dict(figure="top1_agreement", at_least=0.99, speedup=3.0,
                         calibrate=("labels", 0.01, None)),
    "pnet": dict(figure="prob_max_abs", at_most=0.01, speedup=5.0,
                 calibrate=("max_abs", 0.01, 1)),
}


def build(name, h, w, n_threads, tmp):
    """(framedelta model, onnxruntime callable on a uint8 frame)."""
    import torch

    import framedelta as fd
    from framedelta.formats import Preprocess

    if name == "pnet":
        from framedelta.converters.zoo.pnet import (PNET_MISSING, pnet, pnet_preprocess,
                                                    pnet_weights_path)
        if pnet_weights_path() is None:
            raise SystemExit(PNET_MISSING)
        net, pre = pnet(), pnet_preprocess()
    else:
        net, pre = zoo_model(name, h, w), Preprocess(**IMAGENET)
    x = torch.rand(1, 3, h, w)
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, x, path, preprocess=pre)
    model = fd.load(path, n_threads=n_threads)
    sess = onnxruntime_session(net, x, Path(tmp) / f"{name}.onnx", n_threads)

    def ort(frame):
        return sess.run(None, {"x": model.frame_to_internal(frame).transpose(2, 0, 1)[None]})
    return model, ort


def _outputs(y):
    return y if isinstance(y, tuple) else (y,)


def errors(y, exact, name):
    """Per frame: rel_l2 (worst output), label agreement, top-1 equal, PNet's prob max abs."""
    from framedelta.engine.checks import deviation
    d = deviation(y, exact)
    out = {"rel_l2": d.rel_l2, "label_agreement": d.label_agreement, "max_abs": d.max_abs}
    if name == "pnet":
        out["prob_max_abs"] = deviation(_outputs(y)[1], _outputs(exact)[1]).max_abs
    return out


def summarise(name, per_frame, ms, macs, dense_macs, dense_ms):
    """One setting over the clip (the first, dense, frame left out)."""
    mean_ms = float(np.mean(ms))
    r = {"ms": mean_ms, "ms_median": float(statistics.median(ms)),
         "mac_bound": dense_macs * len(macs) / max(1, sum(macs)),
         "speedup_vs_onnxruntime": dense_ms["onnxruntime"] / mean_ms,
         "speedup_vs_dense": dense_ms["framedelta_dense"] / mean_ms,
         "rel_l2_mean": float(np.mean([e["rel_l2"] for e in per_frame])),
         "rel_l2_max": float(max(e["rel_l2"] for e in per_frame)),
         "label_agreement_mean": float(np.mean([e["label_agreement"] for e in per_frame])),
         "label_agreement_min": float(min(e["label_agreement"] for e in per_frame)),
         "max_abs": float(max(e["max_abs"] for e in per_frame))}
    r["top1_agreement"] = r["label_agreement_mean"]       # one label per frame
    if name == "pnet":
        r["prob_max_abs"] = float(max(e["prob_max_abs"] for e in per_frame))
    t = TARGETS[name]
    ok_err = (r[t["figure"]] >= t["at_least"]) if "at_least" in t else \
        (r[t["figure"]] <= t["at_most"])
    r["target_error_met"] = bool(ok_err)
    r["target_met"] = bool(ok_err and r["speedup_vs_onnxruntime"] >= t["speedup"])
    return r


def run_model(name, model, ort, clip, args):
    from framedelta.engine.approx import calibrate
    kw = dict(threshold=args.threshold, detector="block", block=16)
    settings = {"exact": None, **{f"r={r:g}": r for r in args.sweep}}
    cals = {}
    if args.calibrate_frames:
        for key, (metric, bound, output) in (("calibrated", TARGETS[name]["calibrate"]),
                                             ("calibrated_rel_l2",
                                              ("rel_l2", REL_L2_BOUND, None))):
            t = time.perf_counter()
            cal = calibrate(model, clip[:args.calibrate_frames], bound, metric, output, **kw)
            print(f"  {name}: {key} in {time.perf_counter() - t:.0f} s: {cal.summary()}",
                  flush=True)
            settings[key] = cal.thresholds
            cals[key] = {"frames": cal.frames, "metric": metric, "max_error": bound,
                         "output": output, "multiplier": cal.multiplier,
                         "error_on_calibration_frames": cal.error, "tried": cal.tried}
    streams = {k: model.stream(layer_thresholds=v, **kw) for k, v in settings.items()}
    dense = {"onnxruntime": ort, "framedelta_dense": model.run}
    dense_ms = {k: [] for k in dense}
    ms = {k: [] for k in streams}
    macs = {k: [] for k in streams}
    per_frame = {k: [] for k in streams}
    label_change = []        # how much the exact mode's own labels move: 0 = vacuous figure
    first = None
    loads = []
    for i, frame in enumerate(clip):
        with LoadMeter() as meter:
            if i % args.dense_every == 1 or args.dense_every == 1:
                for k, fn in dense.items():
                    t = time.perf_counter()
                    fn(frame)
                    dense_ms[k].append(1e3 * (time.perf_counter() - t))
            ys = {}
            # a different stream first on each frame: no setting always follows onnxruntime
            order = list(streams)[i % len(streams):] + list(streams)[:i % len(streams)]
            for k in order:
                s = streams[k]
                t = time.perf_counter()
                ys[k] = s.step(frame)
                dt = 1e3 * (time.perf_counter() - t)
                if i > 0:                      # the first step is dense by definition
                    ms[k].append(dt)
                    macs[k].append(s.last_stats.macs)
        loads.append(meter.outside)
        if i == 0:
            first = ys["exact"]
        else:
            label_change.append(1 - errors(ys["exact"], first, name)["label_agreement"])
            for k in streams:
                per_frame[k].append(errors(ys[k], ys["exact"], name))
    dmacs = streams["exact"].last_stats.dense_macs
    dms = {k: statistics.median(v) for k, v in dense_ms.items()}
    out = {"model": name, "frames": len(clip), "dense_ms": dms,
           "outside_load_median": statistics.median(loads), "settings": {},
           "calibration": cals,
           # mean over frames of the fraction of the exact mode's labels that differ from
           # its first frame's: when 0, label agreement cannot tell settings apart
           "exact_label_change": float(np.mean(label_change)) if label_change else 0.0}
    for k in streams:
        out["settings"][k] = summarise(name, per_frame[k], ms[k], macs[k], dmacs, dms)
    return out


def _figure(name, s):
    t = TARGETS[name]
    v = s[t["figure"]]
    return f"{100 * v:.2f}%" if "at_least" in t else f"{v:.4f}"


def table(rows):
    lines = ["| model | layer_thresholds | MAC bound | ms | vs onnxruntime | vs dense | "
             "rel L2 mean / max | target figure | target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        t = TARGETS[r["model"]]
        fig = t["figure"].replace("_", " ")
        for k, s in r["settings"].items():
            if k in r["calibration"]:
                c = r["calibration"][k]
                k = (f"calibrated {c['metric']} <= {c['max_error']:g} "
                     f"(x{c['multiplier']:.3g}, {c['frames']} frames)")
            lines.append(
                f"| {r['model']} | {k} | {s['mac_bound']:.2f} | {s['ms']:.1f} | "
                f"{s['speedup_vs_onnxruntime']:.2f} | {s['speedup_vs_dense']:.2f} | "
                f"{s['rel_l2_mean']:.2e} / {s['rel_l2_max']:.2e} | {fig} "
                f"{_figure(r['model'], s)} | {'met' if s['target_met'] else 'not met'} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False)
    for ax, r in zip(axes[0], rows):
        t = TARGETS[r["model"]]
        at_least = "at_least" in t

        def err(s):
            v = s[t["figure"]]
            return max(1e-5, 1 - v if at_least else v)
        items = list(r["settings"].items())
        sweep = [(k, s) for k, s in items if k.startswith("r=")]
        ax.plot([s["speedup_vs_onnxruntime"] for _, s in sweep], [err(s) for _, s in sweep],
                "o-", label="relative threshold sweep")
        for k, s in sweep:
            ax.annotate(k[2:], (s["speedup_vs_onnxruntime"], err(s)), fontsize=7)
        for k, mark in (("exact", "ks"), ("calibrated", "r*"), ("calibrated_rel_l2", "m^")):
            if k in r["settings"]:
                s = r["settings"][k]
                ax.plot([s["speedup_vs_onnxruntime"]], [err(s)], mark, ms=9,
                        label=k + (" (an error of 0 is drawn at 1e-5)" if k == "exact" else ""))
        ax.axhline(1 - t["at_least"] if at_least else t["at_most"], color="g", ls="--",
                   lw=0.8, label="error target")
        ax.axvline(t["speedup"], color="g", ls=":", lw=0.8, label="speed target")
        ax.set_yscale("log")
        ax.set_xlabel("speed-up vs onnxruntime (x)")
        ax.set_ylabel("1 - " + t["figure"].replace("_", " ") if at_least else
                      t["figure"].replace("_", " "))
        ax.set_title(f"{r['model']} ({r['frames']} frames)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=0, help="frames of the video (0 = all)")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--sweep", nargs="+", type=float, default=SWEEP,
                   help="relative layer thresholds")
    p.add_argument("--calibrate-frames", type=int, default=30,
                   help="frames calibrate() sees (the clip's first; 0: no calibrated run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--threshold", type=float, default=8.0)
    p.add_argument("--dense-every", type=int, default=5)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    if args.calibrate_frames == 1:
        p.error("--calibrate-frames must be 0 or at least 2")

    import torch
    torch.set_num_threads(args.threads)
    clip = read_clip(args.video, args.frames)
    h, w = clip[0].shape[:2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, ort = build(name, h, w, args.threads, tmp)
            r = run_model(name, model, ort, clip, args)
            r["input"] = f"{Path(args.video).name} ({len(clip)} frames)"
            rows.append(r)
            print(table([r]), flush=True)
            print(f"  exact mode's labels moving: {100 * r['exact_label_change']:.2f}%",
                  flush=True)
    facts = machine_facts(args.threads)
    out = write_json("approx", {"benchmark": "approx", "machine": facts,
                                "threshold": args.threshold, "detector": "block 16",
                                "command": "python benchmarks/approx.py " +
                                " ".join(argv if argv is not None else sys.argv[1:]),
                                "targets": TARGETS, "rows": rows})
    plot(rows, RESULTS / "approx.png")
    print(f"wrote {out} and {RESULTS / 'approx.png'}")
    if args.update_readme:
        text = (f"{rows[0]['input']}, detector block 16, threshold 8, {args.threads} threads, "
                f"{facts.get('cpu_model', '')}; ms: mean per frame, first (dense) frame "
                "left out; errors vs the exact mode on the same frames. How much the exact "
                "mode's own labels move over the clip (mean fraction differing from its "
                "first frame's; 0 means the label figure cannot tell settings apart): " +
                ", ".join(f"{r['model']} {100 * r['exact_label_change']:.2f}%" for r in rows)
                + ".\n\n" + table(rows))
        replace_section(ROOT / "benchmarks" / "README.md", "approx-table", text)
        print("updated benchmarks/README.md")


if __name__ == "__main__":
    main()
