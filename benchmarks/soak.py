"""Soak: many frames per stream mode, memory sampled, exactness checked on the way.

    python benchmarks/soak.py --update-readme        # the protocol: 10,000 frames a mode
    python benchmarks/soak.py --frames 300           # a quick check
    python benchmarks/soak.py --model unet --modes regions --frames 200

Per mode (``exact``: mode="layers"; ``approximate``: layer_thresholds 0.05;
``regions``: mode="regions", margin="exact"), in a fresh process of its own (so one
mode's freed memory does not hide another's growth): one stream steps over the real
clip (vtest) looped, each loop with its own seeded Gaussian pixel noise (sigma 2, so
no two loops are alike and the detector always sees some noise), block detector 16,
threshold 8. Every ``--sample-every`` frames it records the process's resident memory
(VmRSS), ``stream.cache_bytes`` and ``model.memory_bytes`` (crop models included);
every ``--check-every`` frames the output's deviation from ``model.run`` of the
stream's reference input (exact modes: must be 0; approximate: measured). The figure
is RSS growth after warm-up: (RSS at the end - RSS after ``--warmup`` frames) / RSS
after warm-up, and the largest RSS seen after warm-up likewise; the target is <= 2%.

Writes benchmarks/results/soak.json and, with --update-readme, the ``soak-table``
section of benchmarks/README.md. The model is MTCNN's PNet with its trained weights
(fully convolutional, so all three modes run it; ~5 ms a step on one core) unless
``--model`` names another of the region benchmark's (unet, fcn).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, machine_facts, read_clip, replace_section,  # noqa: E402
                    write_json)

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "vtest.avi"
MODES = {"exact": {}, "approximate": {"layer_thresholds": 0.05},
         "regions": {"mode": "regions", "margin": "exact"}}
NOISE_SIGMA = 2.0
NOISE_FIELDS = 8


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_model(name, h, w, n_threads, tmp):
    import torch

    import framedelta as fd
    from framedelta.converters.zoo.pnet import pnet, pnet_preprocess
    from framedelta.formats import Preprocess
    from regions import IMAGENET, zoo_model

    if name == "pnet":
        net, pre = pnet(), pnet_preprocess()
    else:
        net, pre = zoo_model(name, h, w), Preprocess(**IMAGENET)
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, torch.rand(1, 3, h, w), path, preprocess=pre)
    return fd.load(path, n_threads=n_threads)


def looped_frames(clip, n, seed=0):
    """``n`` frames: the clip over and over, loop k with noise field k (seeded)."""
    rng = np.random.default_rng(seed)
    fields = [np.round(rng.normal(0, NOISE_SIGMA, clip[0].shape)).astype(np.int16)
              for _ in range(NOISE_FIELDS)]
    buf = np.empty(clip[0].shape, np.int16)
    for i in range(n):
        loop, j = divmod(i, len(clip))
        np.add(clip[j], fields[(loop * 3 + j) % NOISE_FIELDS], out=buf)
        yield np.clip(buf, 0, 255).astype(np.uint8)


def soak_one(args):
    """One mode in this process; prints its record as JSON."""
    from framedelta.engine.checks import deviation

    clip = read_clip(args.video, args.clip_frames)
    h, w = clip[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.model, h, w, args.threads, tmp)
    s = model.stream(threshold=8, detector="block", block=16, **MODES[args.one])
    samples, checks = [], []
    t0 = time.perf_counter()
    for i, frame in enumerate(looped_frames(clip, args.frames, args.seed)):
        y = s.step(frame)
        n = i + 1
        if n % args.check_every == 0 or n == args.frames:
            d = deviation(y, model.run(s.reference_input))
            checks.append({"frame": n, "max_abs": d.max_abs, "rel_l2": d.rel_l2,
                           "label_agreement": d.label_agreement})
        if n % args.sample_every == 0 or n == args.warmup or n == args.frames:
            samples.append({"frame": n, "rss": rss_bytes(), "cache_bytes": s.cache_bytes,
                            "model_memory_bytes": model.memory_bytes,
                            "crop_cache_bytes": model.crop_cache_bytes,
                            "seconds": time.perf_counter() - t0})
    after = [p for p in samples if p["frame"] >= args.warmup]
    base = after[0]["rss"]
    record = {
        "mode": args.one, "stream_kwargs": MODES[args.one], "frames": args.frames,
        "warmup": args.warmup, "clip_frames": len(clip), "frame_shape": [h, w, 3],
        "ms_per_step": 1e3 * samples[-1]["seconds"] / args.frames,
        "rss_after_warmup": base, "rss_end": after[-1]["rss"],
        "rss_growth": (after[-1]["rss"] - base) / base,
        "rss_max_growth": (max(p["rss"] for p in after) - base) / base,
        "cache_bytes_range": [min(p["cache_bytes"] for p in after),
                              max(p["cache_bytes"] for p in after)],
        "crop_cache_bytes_max": max(p["crop_cache_bytes"] for p in samples),
        "worst_max_abs": max(c["max_abs"] for c in checks),
        "worst_rel_l2": max(c["rel_l2"] for c in checks),
        "samples": samples, "checks": checks,
    }
    print(json.dumps(record))


def table(result):
    rows = ["| mode | frames | ms/step | RSS after warm-up | growth at end | largest "
            "growth | cache_bytes | crop cache | worst max abs vs exact | worst rel L2 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["modes"]:
        lo, hi = r["cache_bytes_range"]
        cache = f"{lo / 2**20:.1f} MiB" + ("" if lo == hi else f" - {hi / 2**20:.1f} MiB")
        rows.append(f"| {r['mode']} | {r['frames']} | {r['ms_per_step']:.1f} | "
                    f"{r['rss_after_warmup'] / 2**20:.0f} MiB | {100 * r['rss_growth']:+.2f}% | "
                    f"{100 * r['rss_max_growth']:+.2f}% | {cache} | "
                    f"{r['crop_cache_bytes_max'] / 2**20:.1f} MiB | {r['worst_max_abs']:.3g} | "
                    f"{r['worst_rel_l2']:.3g} |")
    f = result["machine"]
    rows.append("")
    rows.append(f"{result['model']} on {Path(result['video']).name} ({result['clip_frames']} "
                f"frames looped with noise sigma {NOISE_SIGMA:g}), block detector 16, "
                f"threshold 8, {result['threads']} thread(s), warm-up {result['warmup']} "
                f"frames, RSS sampled every {result['sample_every']} frames, exactness "
                f"checked every {result['check_every']}; {f['cpu_model']}, "
                f"{f['cpu_count']} CPUs, commit {str(f.get('git_commit'))[:10]}.")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--model", default="pnet", choices=["pnet", "unet", "fcn"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--frames", type=int, default=10_000, help="frames per mode (10,000)")
    p.add_argument("--warmup", type=int, default=None,
                   help="frames before RSS counts (default: a tenth, at most 1000)")
    p.add_argument("--clip-frames", type=int, default=0, help="frames of the clip (0: all)")
    p.add_argument("--sample-every", type=int, default=None, help="default: frames / 100")
    p.add_argument("--check-every", type=int, default=None, help="default: frames / 20")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.warmup = args.warmup or max(1, min(1000, args.frames // 10))
    args.sample_every = args.sample_every or max(1, args.frames // 100)
    args.check_every = args.check_every or max(1, args.frames // 20)
    if args.one:
        return soak_one(args)
    read_clip(args.video, 1)            # says so and exits when the clip is absent
    result = {"model": args.model, "video": args.video, "threads": args.threads,
              "frames": args.frames, "warmup": args.warmup,
              "sample_every": args.sample_every, "check_every": args.check_every,
              "machine": machine_facts(args.threads), "modes": []}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--one", mode] + [
            a for a in (argv if argv is not None else sys.argv[1:])
            if a not in ("--update-readme",)]
        cmd = _without_modes(cmd)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode:
            raise SystemExit(f"soak of {mode} failed:\n{r.stderr[-3000:]}")
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rec["wall_seconds"] = time.perf_counter() - t0
        result["modes"].append(rec)
        result["clip_frames"] = rec["clip_frames"]
        print(f"{mode}: {rec['frames']} frames, {rec['ms_per_step']:.1f} ms/step, RSS "
              f"{rec['rss_after_warmup'] / 2**20:.0f} MiB after warm-up, growth "
              f"{100 * rec['rss_growth']:+.2f}% (largest {100 * rec['rss_max_growth']:+.2f}%), "
              f"worst max abs {rec['worst_max_abs']:.3g}", flush=True)
    path = write_json("soak" if args.model == "pnet" else f"soak_{args.model}", result)
    print(f"wrote {path}")
    print(table(result))
    if args.update_readme:
        replace_section(ROOT / "benchmarks" / "README.md",
                        "soak-table" if args.model == "pnet" else f"soak_{args.model}-table",
                        table(result))
    return 0


def _without_modes(cmd):
    """The child's command line: --modes and its values dropped (it runs --one)."""
    out, skip = [], False
    for a in cmd:
        if a == "--modes":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
