"""framedelta: incremental CNN inference for fixed-camera video, on the CPU.

The public API, all of it::

    import framedelta as fd
    fd.convert(module, example_input, "net.h5")   # torch.nn.Module (eval) or ExportedProgram
    fd.convert("net.onnx", path="net.h5")        # an ONNX file (input_shape=... if dynamic)
    model = fd.load("net.h5")                    # validated first; fd.ModelFormatError if not
    model.memory_bytes, model.footprint          # what it holds; activations, weights, MACs
    model.input_shape                            # (1, C, H, W)
    y = model.run(x)                             # dense; float32 (1, C, H, W), torch layout
    s = model.stream(threshold=8, detector="block")   # one camera: incremental, exact
    y = s.step(frame)                            # == model.run(s.reference_input)
    model.stream(..., layer_thresholds=0.05)     # approximate mode (engine/approx.py)
    model.stream(..., mode="regions", margin="exact")  # region re-run (engine/regions.py)
    model.stream(..., check_every=100)           # measured deviation: s.last_stats.check

Errors derive from :class:`FramedeltaError`: :class:`ModelFormatError` (names file,
node, field), :class:`ConversionError` and :class:`UnsupportedOperatorError`.
Importing framedelta needs only numpy and h5py; torch is imported by
:func:`convert` alone.
"""

from .errors import (ConversionError, FramedeltaError, ModelFormatError,
                     UnsupportedOperatorError)
from .engine import Model

__version__ = "0.3.0"


def load(path, n_threads=None, *, max_activation_bytes=None, max_macs=None):
    """Read, validate and prepare the model file at ``path``.

    Every rule of formats/SPEC.md is checked before anything is allocated; a file that
    breaks one raises :class:`ModelFormatError` naming the file, node and field.
    ``n_threads``: threads for the kernels; None (default) means all cores.
    ``max_activation_bytes`` (default 4 GiB: a dense pass's buffers, each stream holds
    as much again) and ``max_macs`` (default 2^38 a pass): the limits of SPEC.md [R30];
    raise them to load a model known to be that big.
    """
    from .formats import read_model
    graph = read_model(path, max_activation_bytes=max_activation_bytes, max_macs=max_macs)
    return Model(graph, path=str(path), n_threads=n_threads)


def convert(model, example_input=None, path=None, *, preprocess=None, input_shape=None):
    """Convert a PyTorch model (needs torch) or an ONNX file (needs onnx) to a
    framedelta model file.

    ``model``: an ``nn.Module`` (put in eval mode), a ``torch.export.ExportedProgram``,
    or the path of an ``.onnx`` file. ``example_input``: a (1, C, H, W) float32 tensor;
    it fixes the input shape (for an ONNX file, optional: ``input_shape=(1, C, H, W)``
    or the file's own fixed shape do too). ``path``: where to write the file
    (optional). ``preprocess``: a :class:`framedelta.formats.Preprocess` for models fed
    with uint8 camera frames. Returns the converted :class:`framedelta.formats.Graph`.
    Raises :class:`UnsupportedOperatorError` naming the op and where it came from
    (module and source line; ONNX: node and opset), :class:`ConversionError` naming the
    file for an ONNX file it cannot read.
    """
    from .converters import convert as _convert
    return _convert(model, example_input, path, preprocess=preprocess,
                    input_shape=input_shape)


__all__ = ["load", "convert", "Model", "FramedeltaError", "ModelFormatError",
           "ConversionError", "UnsupportedOperatorError", "__version__"]
