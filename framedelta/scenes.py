"""A synthetic fixed-camera scene: the bundled clip of the demo and the benchmarks.

A static textured background (sky, buildings, pavement), a few objects that walk
across it, and a little sensor noise, as uint8 BGR frames the way OpenCV delivers
them. ``coverage`` sets the fraction of the frame the moving objects cover, so a
benchmark can sweep the changed area. Deterministic for a given seed.
"""

import numpy as np


def _background(h, w, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    horizon = int(h * 0.45)
    sky = np.stack([230 - 60 * y / h, 190 - 40 * y / h, 140 - 20 * y / h], -1)
    ground = np.stack([90 + 30 * np.sin(x / 23.0) * np.cos(y / 17.0)] * 3, -1) + \
        np.array([0, 5, 10], np.float32)
    img[:] = np.where((y < horizon)[..., None], sky, ground)
    for _ in range(max(3, w // 60)):             # buildings with windows
        bx, bw = rng.integers(0, w), rng.integers(w // 12, w // 5)
        top = rng.integers(h // 8, horizon)
        color = rng.uniform(60, 200, 3)
        img[top:horizon, bx:bx + bw] = color
        img[top + 4:horizon - 4:9, bx + 3:bx + bw - 3:7] = color * 0.5
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)   # fixed texture
    return img


def fixed_camera_frames(n_frames=50, height=360, width=480, coverage=0.03, seed=0,
                        noise=1.5):
    """Yield ``n_frames`` uint8 (height, width, 3) BGR frames of one fixed camera.

    ``coverage``: fraction of the frame covered by moving objects (0 gives a static
    scene with sensor noise only). ``noise``: std of per-frame sensor noise, in pixel
    units.
    """
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")
    rng = np.random.default_rng(seed)
    bg = _background(height, width, rng)
    area = coverage * height * width
    n_obj = 0 if area == 0 else max(1, min(12, int(round(area / 2500))))
    objs = []
    for _ in range(n_obj):
        side = np.sqrt(area / n_obj)
        oh, ow = max(2, int(side * 1.6)), max(2, int(side / 1.6))
        oh, ow = min(oh, height), min(ow, width)
        # textured, like people and cars: a moving object changes its whole area
        texture = rng.uniform(20, 235, 3) + rng.normal(0, 25, (oh, ow, 3))
        objs.append(dict(h=oh, w=ow, y=rng.uniform(0, height - oh), x=rng.uniform(0, width - ow),
                         vy=rng.uniform(-1, 1), vx=rng.choice([-1, 1]) * rng.uniform(2, 5),
                         texture=texture.astype(np.float32)))
    for _ in range(n_frames):
        frame = bg.copy()
        for o in objs:
            y0, x0 = int(o["y"]), int(o["x"])
            frame[y0:y0 + o["h"], x0:x0 + o["w"]] = o["texture"]
            o["y"] += o["vy"]
            o["x"] += o["vx"]
            if not 0 <= o["x"] <= width - o["w"]:
                o["vx"] = -o["vx"]
                o["x"] = min(max(o["x"], 0), width - o["w"])
            if not 0 <= o["y"] <= height - o["h"]:
                o["vy"] = -o["vy"]
                o["y"] = min(max(o["y"], 0), height - o["h"])
        if noise:
            frame += rng.normal(0, noise, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def video_frames(path, max_frames=None):
    """Yield uint8 BGR frames of a video file (needs opencv-python-headless)."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError("reading a video needs OpenCV: pip install opencv-python-headless "
                          "(or pip install 'framedelta[bench]')") from e
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {str(path)!r}")
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
    finally:
        cap.release()
