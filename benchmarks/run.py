"""The speed targets in one run: dense, exact incremental on real video, worst case,
per-step overhead and memory, for each model, side by side with onnxruntime and PyTorch.

    python benchmarks/run.py                        # ResNet-18, MobileNetV2, U-Net; all of vtest
    python benchmarks/run.py --frames 100 --models unet
    python benchmarks/run.py --update-readme        # also the table in benchmarks/README.md

Per model (1x3x360x480, uint8 frames, ImageNet preprocessing, 2 threads):

1. dense: framedelta vs onnxruntime vs PyTorch eager on one frame, interleaved rounds;
2. video: one stream per detector (pixel, block 16; threshold 8 in pixel units) over
   ../shared/data/vtest.avi (or ``--video``), dense engines timed every few frames in
   between; mean ms/frame after the first frame, the MAC bound (dense MACs /
   incremental MACs over the clip) and the share of it realised;
3. sweep: synthetic moving objects covering 0.5% to 50% of the frame, then a scene cut
   (every step a whole new frame) against a dense pass;
4. overhead: a step with no change (Python and mask bookkeeping only), against dense;
5. memory: the stream's ``cache_bytes`` against the activations it must keep (every
   node's output, float32).

Writes benchmarks/results/run.json, run_sweep.png (speed-up vs changed area),
run_models.png (per-model bars) and, with --update-readme, the `run-table` section of
benchmarks/README.md. Needs the bench extra.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, ROOT, LoadMeter, interleaved, machine_facts,  # noqa: E402
                    median_ms, read_clip, replace_section, write_json)
from video import DEFAULT_VIDEO, SWEEP, build, plot, run_clip  # noqa: E402
from video import table as clip_table  # noqa: E402

TARGET_MODELS = ["resnet18", "mobilenet_v2", "unet"]
DETECTORS = ["pixel", "block"]


def dense_times(dense, frame, rounds):
    times, loads = interleaved({k: (lambda fn=fn: fn(frame)) for k, fn in dense.items()},
                               rounds)
    med = {k: median_ms(v) for k, v in times.items()}
    return {"median_ms": med, "ratio_to_onnxruntime": med["framedelta_dense"] /
            med["onnxruntime"], "outside_load_median": statistics.median(loads)}


def scene_cut(model, frame, rounds):
    """Each step a whole new frame (the frame and its negative, alternately), against
    a dense pass, interleaved."""
    s = model.stream(threshold=8, detector="block")
    s.step(frame)
    frames = [255 - frame, frame]
    k = [0]

    def cut():
        s.step(frames[k[0] % 2])
        k[0] += 1
    times, loads = interleaved({"scene_cut": cut, "dense": lambda: model.run(frame)}, rounds)
    assert all(n.dense for n in s.last_stats.nodes)
    return {"scene_cut_ms": median_ms(times["scene_cut"]), "dense_ms": median_ms(times["dense"]),
            "ratio": statistics.median(times["scene_cut"]) / statistics.median(times["dense"]),
            "outside_load_median": statistics.median(loads)}


def overhead(model, frame, rounds, steps_per_round=20):
    """A step where nothing changed (detection, bookkeeping, outputs) against dense:
    rounds of ``steps_per_round`` such steps and one dense pass, interleaved."""
    s = model.stream(threshold=8, detector="block")
    s.step(frame)
    steps, dense, loads = [], [], []
    for _ in range(rounds):
        with LoadMeter() as meter:
            for _ in range(steps_per_round):
                t = time.perf_counter()
                s.step(frame)
                steps.append(time.perf_counter() - t)
                assert s.last_stats.macs == 0
            t = time.perf_counter()
            model.run(frame)
            dense.append(time.perf_counter() - t)
        loads.append(meter.outside)
    return {"no_change_ms": median_ms(steps), "dense_ms": median_ms(dense),
            "fraction_of_dense": statistics.median(steps) / statistics.median(dense),
            "nodes": len(model.graph.nodes), "outside_load_median": statistics.median(loads)}


def memory(model, frame):
    s = model.stream(threshold=8, detector="block")
    s.step(frame)
    activations = sum(4 * int(np.prod(model.shapes[t])) for n in model.graph.nodes
                      for t in n.outputs)
    return {"cache_bytes": s.cache_bytes, "activation_bytes": activations,
            "ratio": s.cache_bytes / activations}


def summary_table(rows):
    lines = ["| model | nodes | dense / onnxruntime | vtest pixel vs onnxruntime | "
             "vtest block vs onnxruntime | of MAC bound (pixel, block) | scene cut / dense | "
             "no-change step | no-change / dense | cache / activations |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r.get("video", {}).get("detectors")
        vid = (f"{v['pixel']['speedup_vs_onnxruntime']:.2f}x | "
               f"{v['block']['speedup_vs_onnxruntime']:.2f}x | "
               f"{100 * v['pixel']['realised_fraction_of_bound']:.0f}%, "
               f"{100 * v['block']['realised_fraction_of_bound']:.0f}%") if v else "- | - | -"
        lines.append(
            f"| {r['model']} | {r['overhead']['nodes']} | "
            f"{r['dense']['ratio_to_onnxruntime']:.2f} | {vid} | "
            f"{r['scene_cut']['ratio']:.2f} | {r['overhead']['no_change_ms']:.2f} ms | "
            f"{100 * r['overhead']['fraction_of_dense']:.1f}% | {r['memory']['ratio']:.2f} |")
    return "\n".join(lines)


def plot_models(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = [("dense: onnxruntime / framedelta", lambda r: 1 / r["dense"]["ratio_to_onnxruntime"])]
    for d in DETECTORS:
        bars.append((f"vtest {d}: vs onnxruntime",
                     lambda r, d=d: r["video"]["detectors"][d]["speedup_vs_onnxruntime"]))
        bars.append((f"vtest {d}: MAC bound",
                     lambda r, d=d: r["video"]["detectors"][d]["mac_bound"]))
    rows = [r for r in rows if "video" in r] or rows
    bars = bars if rows and "video" in rows[0] else bars[:1]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(bars)
    x = np.arange(len(rows))
    for i, (label, fn) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [fn(r) for r in rows], width,
               label=label, hatch="//" if "bound" in label else None,
               alpha=0.55 if "bound" in label else 1.0)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel("speed-up (x), higher is better")
    ax.set_title("framedelta, exact mode, 2 threads, 360x480")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=0, help="frames of the video (0 = all)")
    p.add_argument("--models", nargs="+", default=TARGET_MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--threshold", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=15, help="dense and scene-cut rounds")
    p.add_argument("--sweep-frames", type=int, default=25, help="frames per sweep point")
    p.add_argument("--dense-every", type=int, default=10)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from framedelta.scenes import fixed_camera_frames

    clip = read_clip(args.video, args.frames, without="the video part is left out")
    h, w = clip[0].shape[:2] if clip else (360, 480)
    frame = clip[0] if clip else next(iter(fixed_camera_frames(1, h, w, seed=0)))
    rows, sweep_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, dense = build(name, h, w, args.threads, tmp)
            row = {"model": name, "dense": dense_times(dense, frame, args.rounds)}
            print(f"{name}: dense / onnxruntime {row['dense']['ratio_to_onnxruntime']:.2f}",
                  flush=True)
            if clip:
                v = run_clip(model, dense, clip, args.dense_every, DETECTORS, args.threshold)
                v.update(model=name, input=f"{Path(args.video).name} ({len(clip)} frames)")
                row["video"] = v
                print(clip_table([v]), flush=True)
            for cov in SWEEP:
                frames = list(fixed_camera_frames(args.sweep_frames, h, w, coverage=cov, seed=1))
                r = run_clip(model, dense, frames, max(1, args.dense_every // 2), DETECTORS,
                             args.threshold)
                r.update(model=name, input=f"synthetic {100 * cov:g}%", coverage=cov)
                sweep_rows.append(r)
            row["scene_cut"] = scene_cut(model, frame, args.rounds)
            row["overhead"] = overhead(model, frame, 10)
            row["memory"] = memory(model, frame)
            rows.append(row)
            print(summary_table([row]).split("\n")[-1], flush=True)
    facts = machine_facts(args.threads)
    out = write_json("run", {"benchmark": "run", "machine": facts, "threshold": args.threshold,
                             "models": rows, "sweep": sweep_rows})
    summary = summary_table(rows)
    detail = clip_table([r["video"] for r in rows if "video" in r] + sweep_rows)
    print(summary + "\n\n" + detail)
    plot(sweep_rows, RESULTS / "run_sweep.png")
    plot_models(rows, RESULTS / "run_models.png")
    print(f"wrote {out}, {RESULTS / 'run_sweep.png'}, {RESULTS / 'run_models.png'}")
    if args.update_readme:
        cmd = " ".join(["python benchmarks/run.py"] + (argv if argv is not None
                                                       else sys.argv[1:]))
        note = (f"Measured with `{cmd}` on {facts['cpu_model']}, {args.threads} threads, "
                f"uint8 frames {h}x{w}, threshold {args.threshold:g} (pixel units), commit "
                f"{(facts['git_commit'] or '?')[:10]}. Dense: medians of {args.rounds} "
                "interleaved rounds. Video: mean ms/frame over the clip after the first "
                "frame against the dense engines' medians, timed in between. Scene cut: "
                "steps that each change the whole frame, against dense, interleaved. "
                "No-change step: median of 200, in rounds of 20 interleaved with a dense "
                "pass. Cache / activations: the stream's cache_bytes over the bytes of "
                "every node's output.\n\n"
                "![per model](results/run_models.png)\n\n"
                "![speed-up vs changed area](results/run_sweep.png)\n\n")
        replace_section(ROOT / "benchmarks" / "README.md", "run-table",
                        note + summary + "\n\n" + detail)


if __name__ == "__main__":
    main()
