"""Where the dense fallback should start: masked vs dense convolution cost by dirty fraction.

    python benchmarks/fallback.py

For typical convolution layers (ResNet-18 and U-Net widths at 360x480, MobileNetV2's
1x1s), times the masked kernel on masks made of random 8x8 tiles at several dirty
fractions against the dense kernel on the same layer; prints masked/dense per
fraction. The crossover sets engine/stream.py's DENSE_FALLBACK.
"""

import time

import numpy as np

from framedelta.engine import _masks as I
from framedelta.engine import ops
from framedelta.formats.graph import Node

CASES = [(64, 64, 3, 90, 120), (128, 128, 3, 45, 60), (256, 256, 3, 23, 30),
         (32, 32, 3, 360, 480), (144, 24, 1, 90, 120), (24, 144, 1, 90, 120)]


def median_time(fn, n=5):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(n_threads=2):
    rng = np.random.default_rng(0)
    for cin, cout, k, h, w in CASES:
        attrs = {"out_channels": cout, "kernel": (k, k), "stride": (1, 1),
                 "pads": (k // 2,) * 4, "dilation": (1, 1), "groups": 1,
                 "activation": "relu", "act_min": -np.inf, "act_max": np.inf}
        node = Node("c", "conv2d", ["x"], ["y"], attrs,
                    {"weight": rng.standard_normal((cout, cin, k, k)).astype(np.float32),
                     "bias": np.zeros(cout, np.float32)})
        shapes, out_shape = [(1, cin, h, w)], (1, cout, h, w)
        run = ops.prepare_conv2d(node, attrs, shapes, out_shape)
        x = rng.standard_normal((h, w, cin)).astype(np.float32)
        out = np.empty((h, w, cout), np.float32)
        td = median_time(lambda: run([x], out, n_threads))
        row = []
        for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
            tiles = rng.random(((h + 7) // 8, (w + 7) // 8)) < frac
            m = np.repeat(np.repeat(tiles, 8, 0), 8, 1)[:h, :w].astype(np.uint8)
            pix = I.mask_indices(m)
            tm = median_time(lambda: run([x], out, n_threads, pix))
            row.append(f"{len(pix) / (h * w):.2f}:{tm / td:.2f}")
        print(f"{cin:>3}->{cout:<3} k{k} {h}x{w}: dense {td * 1e3:6.2f} ms; masked/dense "
              "at dirty fraction " + " ".join(row), flush=True)


if __name__ == "__main__":
    main()
