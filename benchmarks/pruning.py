"""Would pruning pay? Measures how many recomputed positions come out bit-identical.

    python benchmarks/pruning.py --frames 100

After a node recomputes its dirty positions, a position whose new value equals the
cached one in every channel could leave the node's output mask (exact). This counts,
over a clip (vtest by default) and per model, the fraction of recomputed positions
that would drop out. It copies every cache before each step, so it is slow: it is a
measurement, not a mode. Writes benchmarks/results/pruning.json.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, machine_facts, write_json, zoo_model  # noqa: E402
from video import DEFAULT_VIDEO, IMAGENET  # noqa: E402


def measure(model, frames, threshold, detector):
    s = model.stream(threshold=threshold, detector=detector, block=16)
    recomputed = unchanged = 0
    per_node = {}
    for i, frame in enumerate(frames):
        before = {t: a.copy() for t, a in s._caches.items()} if i else None
        s.step(frame)
        if before is None:
            continue
        for step in s._plan:
            if step.rule is None:
                continue
            mask = s.dirty_mask(step.node.name)
            n = int(mask.sum())
            if n == 0:
                continue
            t = step.node.outputs[0]
            old, new = before[t][mask], s._caches[t][mask]
            same = int(np.all(old == new, axis=-1).sum())
            recomputed += n
            unchanged += same
            r = per_node.setdefault(step.node.name, [0, 0])
            r[0] += n
            r[1] += same
    return {"recomputed_positions": recomputed, "bit_identical": unchanged,
            "fraction": unchanged / max(1, recomputed),
            "per_node": {k: v[1] / max(1, v[0]) for k, v in per_node.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threshold", type=float, default=8.0)
    args = p.parse_args(argv)
    import torch

    import framedelta as fd
    from framedelta.formats import Preprocess
    from framedelta.scenes import video_frames
    frames = list(video_frames(args.video, args.frames))
    h, w = frames[0].shape[:2]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = Path(tmp) / f"{name}.h5"
            fd.convert(zoo_model(name, h, w), torch.rand(1, 3, h, w), path,
                       preprocess=Preprocess(**IMAGENET))
            model = fd.load(path)
            for det in ("pixel", "block"):
                r = measure(model, frames, args.threshold, det)
                results[f"{name}/{det}"] = r
                print(f"{name} {det}: {100 * r['fraction']:.3f}% of "
                      f"{r['recomputed_positions']} recomputed positions are bit-identical",
                      flush=True)
    write_json("pruning", {"benchmark": "pruning", "machine": machine_facts(None),
                           "frames": len(frames), "video": args.video, "results": results})


if __name__ == "__main__":
    main()
