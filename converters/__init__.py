"""framedelta.converters: PyTorch (torch.export) -> framedelta graph -> model file.

torch is imported only when a conversion runs, so ``import framedelta`` needs only
numpy and h5py; the ``onnx`` package only when an ONNX file is converted. Modules:
torch_export (the torch driver), onnx/ (the ONNX importer, its rules and folding),
lowering (what both drivers' rules see), rules (one rule per aten op),
passes (BN folding, activation fusion, pad folding), checkpoint (loading a source
model), zoo (reference models in plain PyTorch).
"""

import os


def is_onnx_path(model):
    """``model`` names an ONNX file (a path ending in .onnx)."""
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def convert(model, example_input=None, path=None, *, preprocess=None, input_shape=None):
    """An ONNX file (a path ending in .onnx): :func:`framedelta.converters.onnx.convert`,
    with the input shape from ``input_shape``, else ``example_input``'s shape, else the
    file; anything else: :func:`framedelta.converters.torch_export.convert`."""
    if is_onnx_path(model):
        from .onnx import convert as _onnx
        if input_shape is None and example_input is not None:
            input_shape = tuple(example_input.shape)
        return _onnx(model, path, input_shape=input_shape, preprocess=preprocess)
    from .torch_export import convert as _convert
    return _convert(model, example_input, path, preprocess=preprocess)


def load_source(spec, weights=None, allow_pickle=False):
    """See :func:`framedelta.converters.checkpoint.load_source`."""
    from .checkpoint import load_source as _load
    return _load(spec, weights=weights, allow_pickle=allow_pickle)


__all__ = ["convert", "load_source"]
