"""The speed targets in one run, each engine alone (benchmarks/common.py): dense, exact
incremental on real video, under a busy neighbour, at a camera's pace, a step's cost
outside its nodes, memory; side by side with onnxruntime and PyTorch.

    python benchmarks/run.py                        # ResNet-18, MobileNetV2, U-Net; all of vtest
    python benchmarks/run.py --frames 200 --models mobilenet_v3_small efficientnet_b0
    python benchmarks/run.py --update-readme        # also the table in benchmarks/README.md

Per model (uint8 frames at the clip's size, ImageNet preprocessing, 2 threads):

1. dense: framedelta vs onnxruntime vs PyTorch eager on one frame, each alone
   (alternating blocks), and interleaved as a second figure;
2. video: one exact stream (block detector 16, threshold 8 in pixel units) over
   ../shared/data/vtest.avi (or ``--video``), then each dense engine alone on every 8th
   frame: mean ms a step after the first frame, the MAC bound (dense MACs / incremental
   MACs over the clip) and the share of it realised, against our dense and onnxruntime;
3. contended: the same on the first frames beside a process busy-looping on one core,
   over quiet: the slowdown of the stream, our dense pass and onnxruntime;
4. paced: the first frames with 0.1 s before each (a 10 fps camera), over back to back;
5. overhead: a step's time minus its nodes' (uint8 frames and float tensors), a step
   with no change against dense, scene cuts against dense;
6. memory: the stream's ``cache_bytes`` against the activations it must keep;
7. with ``--sweep``: synthetic moving objects covering 0.5% to 50% of the frame
   (interleaved, both detectors).

Writes benchmarks/results/run.json, run_models.png (per-model bars), run_sweep.png
(with --sweep) and, with --update-readme, the `run-table` section of
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
from common import (RESULTS, ROOT, BusyNeighbour, LoadMeter, interleaved,  # noqa: E402
                    machine_facts, measure, median_ms, read_clip, replace_section,
                    write_json)
from video import DEFAULT_VIDEO, SWEEP, build, plot, run_clip  # noqa: E402
from video import table as clip_table  # noqa: E402

TARGET_MODELS = ["resnet18", "mobilenet_v2", "unet"]   # the default; --models takes any of
# the zoo (benchmarks/common.MODELS)
DETECTORS = ["pixel", "block"]


def dense_times(dense, frame, rounds, protocol="alone"):
    times, loads = measure({k: (lambda fn=fn: fn(frame)) for k, fn in dense.items()},
                           protocol, rounds=max(2, rounds // 4), block=4)
    med = {k: median_ms(v) for k, v in times.items()}
    return {"protocol": protocol, "median_ms": med,
            "ratio_to_onnxruntime": med["framedelta_dense"] / med["onnxruntime"],
            "outside_load_median": statistics.median(loads)}


def clip_alone(model, dense, frames, threshold, dense_every=8):
    """The exact mode on the clip, each engine alone (the headline protocol): one stream
    (block detector, 16) steps over every frame back to back; then each dense engine,
    after a pause, runs back to back on every ``dense_every``-th frame. Mean ms a step
    after the first frame, medians for the dense engines, the MAC bound over the clip
    (dense MACs of all frames / incremental MACs of all frames) and its realised share."""
    s = model.stream(threshold=threshold, detector="block", block=16)
    steps, macs, changed, loads = [], [], [], []
    with LoadMeter() as meter:
        for i, f in enumerate(frames):
            t = time.perf_counter()
            s.step(f)
            if i > 0:      # the first step is dense by definition
                steps.append(time.perf_counter() - t)
                macs.append(s.last_stats.macs)
                changed.append(s.last_stats.input_changed_fraction)
    loads.append(meter.outside)
    sample = frames[1::dense_every] or frames[:1]
    dense_ms = {}
    for k, fn in dense.items():
        time.sleep(0.3)
        fn(sample[0])
        ts = []
        with LoadMeter() as meter:
            for f in sample:
                t = time.perf_counter()
                fn(f)
                ts.append(time.perf_counter() - t)
        loads.append(meter.outside)
        dense_ms[k] = median_ms(ts)
    inc = 1e3 * float(np.mean(steps))
    bound = s.last_stats.dense_macs * len(macs) / max(1, sum(macs))
    out = {"incremental_ms": inc, "step_ms": [1e3 * t for t in steps], "dense_ms": dense_ms,
           "mac_bound": bound, "changed_fraction": float(np.mean(changed)),
           "speedup_vs_dense": dense_ms["framedelta_dense"] / inc,
           "speedup_vs_onnxruntime": dense_ms["onnxruntime"] / inc,
           "outside_load_median": statistics.median(loads), "frames": len(frames)}
    out["realised_fraction_of_bound"] = out["speedup_vs_dense"] / bound
    out["vs_onnxruntime_over_bound"] = out["speedup_vs_onnxruntime"] / bound
    return out


def contended(model, dense, frames, threshold):
    """clip_alone on the first frames, quiet and beside a process busy-looping on one
    core: the slowdown (contended / quiet) of the exact stream and of each dense engine."""
    quiet = clip_alone(model, dense, frames, threshold, dense_every=4)
    with BusyNeighbour():
        busy = clip_alone(model, dense, frames, threshold, dense_every=4)
    slow = {k: busy["dense_ms"][k] / quiet["dense_ms"][k] for k in dense}
    slow["incremental"] = busy["incremental_ms"] / quiet["incremental_ms"]
    return {"frames": len(frames), "quiet": {k: v for k, v in quiet.items() if k != "step_ms"},
            "contended": {k: v for k, v in busy.items() if k != "step_ms"}, "slowdown": slow}


def paced(model, frames, threshold, pause=0.1):
    """Camera-like pacing: the same frames stepped back to back and with a ``pause``
    before each (10 fps), each by a new stream; mean step after the first frame."""
    out = {}
    for name, wait in (("back_to_back", 0.0), ("paced", pause)):
        s = model.stream(threshold=threshold, detector="block", block=16)
        ts = []
        for i, f in enumerate(frames):
            if wait:
                time.sleep(wait)
            t = time.perf_counter()
            s.step(f)
            if i > 0:
                ts.append(time.perf_counter() - t)
        out[name + "_ms"] = 1e3 * float(np.mean(ts))
    out["ratio"] = out["paced_ms"] / out["back_to_back_ms"]
    return out


def outside_nodes(model, frames, threshold, as_float):
    """What a step costs outside its nodes (detection, taking the changes in, mask
    propagation, layout, outputs, bookkeeping): step seconds - the nodes' seconds, per
    step over ``frames``, fed as uint8 frames or as the float tensors they give."""
    s = model.stream(threshold=threshold if not as_float else threshold / 255 / 0.226,
                     detector="block", block=16)
    feed = [model.frame_to_internal(f) if as_float else f for f in frames]
    if as_float:
        feed = [np.ascontiguousarray(x.transpose(2, 0, 1)[None]) for x in feed]
    out = []
    for i, x in enumerate(feed):
        t = time.perf_counter()
        s.step(x)
        total = time.perf_counter() - t
        if i > 0:
            out.append(total - sum(n.seconds for n in s.last_stats.nodes))
    return 1e3 * statistics.median(out)


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
    lines = ["| model | nodes | dense / onnxruntime alone (interleaved) | MAC bound | "
             "exact vs our dense | of bound | exact vs onnxruntime | vs onnxruntime / bound "
             "| contended slowdown: exact, dense, onnxruntime | paced / back to back | "
             "outside nodes uint8, float | no-change / dense | scene cut / dense | "
             "cache / activations |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r.get("video")
        vid = (f"{v['mac_bound']:.2f} | {v['speedup_vs_dense']:.2f}x | "
               f"{100 * v['realised_fraction_of_bound']:.0f}% | "
               f"{v['speedup_vs_onnxruntime']:.2f}x | {v['vs_onnxruntime_over_bound']:.2f}"
               ) if v else "- | - | - | - | -"
        c = r.get("contended", {}).get("slowdown")
        con = (f"{c['incremental']:.2f}, {c['framedelta_dense']:.2f}, {c['onnxruntime']:.2f}"
               if c else "-")
        pc = f"{r['paced']['ratio']:.2f}" if "paced" in r else "-"
        o = r["overhead"]
        lines.append(
            f"| {r['model']} | {o['nodes']} | {r['dense']['ratio_to_onnxruntime']:.2f} "
            f"({r['dense_interleaved']['ratio_to_onnxruntime']:.2f}) | {vid} | {con} | {pc} | "
            f"{o['outside_nodes_uint8_ms']:.2f}, {o['outside_nodes_float_ms']:.2f} ms | "
            f"{100 * o['fraction_of_dense']:.1f}% | {r['scene_cut']['ratio']:.2f} | "
            f"{r['memory']['ratio']:.2f} |")
    return "\n".join(lines)


def plot_models(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if "video" in r]
    if not rows:
        return
    bars = [("dense: onnxruntime / framedelta", lambda r: 1 / r["dense"]["ratio_to_onnxruntime"]),
            ("exact on vtest: vs onnxruntime", lambda r: r["video"]["speedup_vs_onnxruntime"]),
            ("exact on vtest: vs our dense", lambda r: r["video"]["speedup_vs_dense"]),
            ("MAC bound", lambda r: r["video"]["mac_bound"])]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(bars)
    x = np.arange(len(rows))
    for i, (label, fn) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [fn(r) for r in rows], width,
               label=label, hatch="//" if "bound" in label else None,
               alpha=0.55 if "bound" in label else 1.0)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, [r["model"] for r in rows], rotation=20)
    ax.set_ylabel("speed-up (x), higher is better")
    ax.set_title("framedelta exact mode on vtest (block 16, threshold 8), each engine alone")
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
    p.add_argument("--rounds", type=int, default=12, help="dense and scene-cut rounds")
    p.add_argument("--contended-frames", type=int, default=60)
    p.add_argument("--paced-frames", type=int, default=20)
    p.add_argument("--sweep", action="store_true",
                   help="also the synthetic changed-area sweep (interleaved, both detectors)")
    p.add_argument("--sweep-frames", type=int, default=25, help="frames per sweep point")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from framedelta.scenes import fixed_camera_frames

    clip = read_clip(args.video, args.frames, without="the video part is left out")
    h, w = clip[0].shape[:2] if clip else (360, 480)
    frame = clip[0] if clip else next(iter(fixed_camera_frames(1, h, w, seed=0)))
    probe = clip[:30] if clip else list(fixed_camera_frames(30, h, w, seed=0))
    rows, sweep_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, dense = build(name, h, w, args.threads, tmp)
            row = {"model": name, "dense": dense_times(dense, frame, args.rounds),
                   "dense_interleaved": dense_times(dense, frame, args.rounds, "interleaved")}
            print(f"{name}: dense / onnxruntime {row['dense']['ratio_to_onnxruntime']:.2f} "
                  f"alone, {row['dense_interleaved']['ratio_to_onnxruntime']:.2f} "
                  "interleaved", flush=True)
            fast = {k: v for k, v in dense.items() if k != "torch"}
            if clip:
                v = clip_alone(model, fast, clip, args.threshold)
                row["video"] = dict(v, input=f"{Path(args.video).name} ({len(clip)} frames)")
                print(f"  vtest: bound {v['mac_bound']:.2f}, {v['incremental_ms']:.1f} ms, "
                      f"{v['speedup_vs_dense']:.2f}x our dense "
                      f"({100 * v['realised_fraction_of_bound']:.0f}% of bound), "
                      f"{v['speedup_vs_onnxruntime']:.2f}x onnxruntime", flush=True)
                row["contended"] = contended(model, fast, clip[:args.contended_frames],
                                             args.threshold)
                print(f"  contended slowdown {row['contended']['slowdown']}", flush=True)
                row["paced"] = paced(model, clip[:args.paced_frames], args.threshold)
                print(f"  paced / back to back {row['paced']['ratio']:.2f}", flush=True)
            if args.sweep:
                for cov in SWEEP:
                    frames = list(fixed_camera_frames(args.sweep_frames, h, w, coverage=cov,
                                                      seed=1))
                    r = run_clip(model, dense, frames, 5, DETECTORS, args.threshold)
                    r.update(model=name, input=f"synthetic {100 * cov:g}%", coverage=cov)
                    sweep_rows.append(r)
            row["scene_cut"] = scene_cut(model, frame, args.rounds)
            row["overhead"] = overhead(model, frame, 10)
            for kind in ("uint8", "float"):
                row["overhead"][f"outside_nodes_{kind}_ms"] = outside_nodes(
                    model, probe, args.threshold, kind == "float")
            row["memory"] = memory(model, frame)
            rows.append(row)
            print(summary_table([row]).split("\n")[-1], flush=True)
    facts = machine_facts(args.threads)
    out = write_json("run", {"benchmark": "run", "machine": facts, "threshold": args.threshold,
                             "models": rows, "sweep": sweep_rows})
    summary = summary_table(rows)
    detail = clip_table(sweep_rows) if sweep_rows else ""
    print(summary + "\n\n" + detail)
    if sweep_rows:
        plot(sweep_rows, RESULTS / "run_sweep.png")
    plot_models(rows, RESULTS / "run_models.png")
    print(f"wrote {out}, {RESULTS / 'run_models.png'}")
    if args.update_readme:
        cmd = " ".join(["python benchmarks/run.py"] + (argv if argv is not None
                                                       else sys.argv[1:]))
        note = (f"Measured with `{cmd}` on {facts['cpu_model']}, {args.threads} threads, "
                f"uint8 frames {h}x{w}, threshold {args.threshold:g} (pixel units), block "
                f"detector 16, commit {(facts['git_commit'] or '?')[:10]}. Dense: each engine "
                "alone (blocks, medians; interleaved in brackets). Exact on vtest, each "
                "engine alone: the stream's mean ms a step over the clip after the first "
                "frame, against our dense pass and onnxruntime (each alone, back to back on "
                "every 8th frame); MAC bound = dense MACs / the stream's MACs over the clip. "
                f"Contended: the first {args.contended_frames} frames beside a process "
                "busy-looping on one core, over the same quiet (slowdown of the stream, our "
                f"dense and onnxruntime). Paced: the first {args.paced_frames} frames with "
                "0.1 s before each, over back to back. Outside nodes: a step's time minus "
                "its nodes' (detection, taking changes in, masks, layout, outputs), median "
                "over 30 frames, fed uint8 or as float tensors. No-change step: against "
                "dense. Cache / activations: the stream's cache_bytes over the bytes of "
                "every node's output.\n\n"
                "![per model](results/run_models.png)\n\n")
        replace_section(ROOT / "benchmarks" / "README.md", "run-table",
                        note + summary + ("\n\n" + detail if detail else ""))


if __name__ == "__main__":
    main()
