"""Torch layout outside, engine layout inside.

Inside the engine an image tensor (1, C, H, W) is a C-contiguous (H, W, C) array
(NHWC without the batch), a vector (1, F) is an (F,) array, and any other tensor
keeps its torch shape. Channels last puts the values one convolution tap needs
next to each other, which is what im2col and the depthwise loops want.
"""

import numpy as np


def is_image(shape):
    """(1, C, H, W): the engine holds it as an (H, W, C) array."""
    return len(shape) == 4 and shape[0] == 1


def internal_shape(shape):
    shape = tuple(shape)
    if is_image(shape):
        return (shape[2], shape[3], shape[1])
    if len(shape) == 2 and shape[0] == 1:
        return (shape[1],)
    return shape


def to_internal(x, shape):
    """Torch-layout array of ``shape`` -> a new engine-layout float32 array."""
    shape = tuple(shape)
    if is_image(shape):
        return np.ascontiguousarray(np.asarray(x, np.float32).reshape(shape)[0].transpose(1, 2, 0))
    return np.ascontiguousarray(np.asarray(x, np.float32).reshape(internal_shape(shape)))


def to_torch(a, shape):
    """Engine-layout array -> torch-layout array of ``shape`` (a view when it can be)."""
    shape = tuple(shape)
    if is_image(shape):
        return a.transpose(2, 0, 1)[None]
    return a.reshape(shape)
