"""framedelta.converters.onnx: an ONNX file -> framedelta graph -> model file.

Needs the ``onnx`` package (the ``onnx`` extra) at conversion time only; neither torch
nor onnxruntime. Modules: importer (the driver: reading, checking, lowering), fold
(numpy evaluation of constant nodes), rules (one small rule per ONNX op type).
"""


def convert(path, out_path=None, *, input_shape=None, preprocess=None):
    """See :func:`framedelta.converters.onnx.importer.convert`."""
    from .importer import convert as _convert
    return _convert(path, out_path, input_shape=input_shape, preprocess=preprocess)


__all__ = ["convert"]
