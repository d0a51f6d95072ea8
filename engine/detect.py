"""Change detection: the input a stream's results represent, and what changed in it.

A :class:`Reference` holds the stream's reference input (a uint8 frame for streams fed
with camera frames, and always its engine-layout float32 form). Each update compares a
new input with it, position by position (max over channels of |new - reference|), marks
positions changed by the detector's rule, and takes the new values at those positions
only. Everything downstream (the layer-wise stream, the region re-run) computes from
the reference, so results never drift from ``model.run(reference_input)``.
"""

import math

import numpy as np

from . import _masks as I
from .layout import to_internal, to_torch

DETECTORS = ("pixel", "block")


def check_detector_args(threshold, detector, block):
    """ValueError for a threshold, detector or block a stream cannot take."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")


class Reference:
    """The reference input of one stream and its change detector.

    ``threshold``: a position counts as changed when the max over channels of
    |x - reference| exceeds it (pixel units for uint8 frames); ``detector`` "pixel", or
    "block" (a block x block tile changes whole when its mean of that max exceeds the
    threshold).
    """

    def __init__(self, model, threshold=0.0, detector="pixel", block=16, n_threads=1):
        check_detector_args(threshold, detector, block)
        self.model = model
        self.threshold = float(threshold)
        self.detector = detector
        self.block = int(block)
        self.n_threads = n_threads
        _, c, h, w = model.input_shape
        self.input = np.empty((h, w, c), np.float32)     # engine layout
        self._frame = None                               # uint8 reference, frame streams
        self._diff = np.empty((h, w), np.float32)        # float inputs' change map
        self._diff8 = np.empty((h, w), np.uint8)         # frames': integers 0..255
        self.change = np.empty((h, w), np.uint8)         # the last update's change mask
        self.n_changed = 0
        self.reset()

    def reset(self):
        self.started = False
        self.updated = False         # the last input went through update(), not first()
        self._frame = None
        self.frames = None           # None before the first input, then True or False

    @property
    def nbytes(self):
        n = self.input.nbytes + self._diff.nbytes + self._diff8.nbytes + self.change.nbytes
        return n + (self._frame.nbytes if self._frame is not None else 0)

    def as_input(self, x):
        """Check ``x`` and say how it is fed: (uint8 (H, W, 3) frame or float32 (C, H, W)
        torch-layout array, is_frame).

        ValueError for a wrong shape, dtype or rank (named first, whatever the stream
        was fed before), then for a stream fed frames and tensors alternately without a
        reset. Nothing changes here either way."""
        arr, frame = self.model.check_any_input(x)
        if self.frames is not None and frame != self.frames:
            fed, got = ("uint8 frames", "a float32 tensor") if self.frames else \
                ("float32 tensors", "a uint8 frame")
            raise ValueError(f"this stream was fed {fed} so far and received {got}; call "
                             "reset() before switching")
        if frame:
            return arr, True
        # float tensors stay in torch layout: detection and taking the changes read
        # its channel planes directly (no transposed copy of the whole input a step)
        return np.ascontiguousarray(arr[0]), False

    def value(self):
        """The reference as fed: uint8 (H, W, 3) frame, or float32 (1, C, H, W) torch
        layout; None before the first input."""
        if not self.started:
            return None
        if self.frames:
            return self._frame.copy()
        return np.array(to_torch(self.input, self.model.input_shape), order="C")

    def first(self, new, frame):
        """Take the first input whole."""
        self.frames = frame
        if frame:
            self._frame = new.copy()
            self.input[...] = self.model.frame_to_internal(new, self.n_threads)
        else:
            self.input[...] = to_internal(new[None], self.model.input_shape)
        self.started = True
        self.updated = False
        self.n_changed = self._diff.size

    def update(self, new, frame):
        """Detect changes against the reference and take them in; returns the uint8
        change mask (H, W), or None when nothing changed."""
        mask, nt = self.change, self.n_threads
        if frame:
            I.max_abs_diff_u8(new, self._frame, self._diff8, nt)
            if self.detector == "pixel":
                n = I.pixel_change_mask_u8(self._diff8, self.threshold, mask)
            else:
                n = I.block_change_mask_u8(self._diff8, self.threshold, self.block, mask, nt)
        else:
            I.max_abs_diff_f32_planes(new, self.input, self._diff, nt)
            if self.detector == "pixel":
                n = I.pixel_change_mask(self._diff, self.threshold, mask)
            else:
                n = I.block_change_mask(self._diff, self.threshold, self.block, mask)
        self.n_changed = n
        self.updated = True
        if n == 0:
            return None
        if frame:
            lut, src = self.model.frame_lut
            I.take_changed_u8(new, self._frame, self.input, mask, lut, src, nt)
        else:
            I.take_changed_f32_planes(new, self.input, mask, nt)
        return mask

    def change_mask(self):
        """bool (H, W): what the last update counted changed; None when the last input
        was the first (taken whole) or there was none."""
        if not self.updated:
            return None
        if self.n_changed == 0:
            return np.zeros(self.change.shape, bool)
        return self.change.astype(bool)

    @property
    def changed_fraction(self):
        return self.n_changed / self._diff.size
