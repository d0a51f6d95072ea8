"""framedelta.converters: PyTorch (torch.export) -> framedelta graph -> model file.

torch is imported only when a conversion runs, so ``import framedelta`` needs only
numpy and h5py. Modules: torch_export (the driver), rules (one rule per aten op),
passes (BN folding, activation fusion, pad folding), checkpoint (loading a source
model), zoo (reference models in plain PyTorch).
"""


def convert(model, example_input=None, path=None, *, preprocess=None):
    """See :func:`framedelta.converters.torch_export.convert`."""
    from .torch_export import convert as _convert
    return _convert(model, example_input, path, preprocess=preprocess)


def load_source(spec, weights=None, allow_pickle=False):
    """See :func:`framedelta.converters.checkpoint.load_source`."""
    from .checkpoint import load_source as _load
    return _load(spec, weights=weights, allow_pickle=allow_pickle)


__all__ = ["convert", "load_source"]
