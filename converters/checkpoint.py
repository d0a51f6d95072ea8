"""Loading the model to convert: an ExportedProgram file, or code plus a state dict.

Three forms (DESIGN.md, Converter):

- ``model.pt2``: written by ``torch.export.save``; loaded with ``torch.export.load``.
- ``pkg.module:factory`` (+ ``weights``): the factory is imported and called with no
  arguments; the state dict is read with ``torch.load(weights_only=True)`` (no code
  from the file runs) and loaded with ``strict=True``.
- a whole pickled module (``torch.save(model)``): unpickling runs code from the file,
  so it needs ``allow_pickle=True``.
"""

import importlib
import os
import re
from collections.abc import Mapping

from framedelta.errors import ConversionError

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _torch():
    import torch
    return torch


def _need_file(path, what):
    if not os.path.isfile(path):
        raise ConversionError(f"{what} {str(path)!r} does not exist (or is not a file)")


def _load_pt2(path):
    torch = _torch()
    try:
        return torch.export.load(path)
    except Exception as e:  # a broken archive surfaces as many exception types
        raise ConversionError(f"{path!r} is not a readable torch.export archive (.pt2): "
                              f"{type(e).__name__}: {e}") from e


def _factory(spec):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConversionError(f"cannot import module {module_name!r} of {spec!r}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConversionError(f"module {module_name!r} has no attribute {attr!r} "
                                  f"(from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConversionError(f"{spec!r} is not callable: it must be a factory returning "
                              "an nn.Module")
    try:
        model = obj()
    except Exception as e:
        raise ConversionError(f"calling {spec}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, _torch().nn.Module):
        raise ConversionError(f"{spec}() returned {type(model).__name__}, not a "
                              "torch.nn.Module")
    return model


def _state_dict(path):
    """A state dict read without running code; ``{"state_dict": ...}`` is unwrapped."""
    torch = _torch()
    _need_file(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, others for junk
        raise ConversionError(
            f"{path!r} is not a plain state dict (torch.load(weights_only=True) refused it: "
            f"{type(e).__name__}). Save weights with torch.save(model.state_dict(), path); "
            f"a whole pickled module is loaded by giving it as the source with "
            f"allow_pickle=True") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path!r} does not hold a state dict (a mapping of names to "
                              f"tensors); got {type(obj).__name__}")
    return obj


def _load_weights(model, spec, weights):
    state = _state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"the state dict in {str(weights)!r} does not match the model "
                              f"from {spec!r}: {e}") from e


def _load_pickled(path, allow_pickle):
    torch = _torch()
    if not allow_pickle:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            holds = ("it holds plain weights (a state dict): give the model's code as "
                     "'pkg.module:factory' with this file as the weights")
        except Exception:
            holds = ("it holds a pickled object; unpickling runs code from the file, so "
                     "pass allow_pickle=True (CLI: --allow-pickle) only if you trust it")
        raise ConversionError(f"{path!r} is not a .pt2 export archive: {holds}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConversionError(f"cannot unpickle {path!r}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, torch.nn.Module):
        raise ConversionError(f"{path!r} holds a {type(obj).__name__}, not a "
                              "torch.nn.Module")
    return obj


def load_source(spec, weights=None, allow_pickle=False):
    """The model named by ``spec``: an ``ExportedProgram`` or an ``nn.Module`` in eval mode.

    ``spec``: a ``.pt2`` file, a ``pkg.module:factory`` import path, or (with
    ``allow_pickle``) a file written by ``torch.save(model)``. ``weights``: a state-dict
    file for a factory. Raises ConversionError saying what is wrong and what to do.
    """
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        if weights is not None:
            raise ConversionError(f"weights= applies to a 'pkg.module:factory' source only; "
                                  f"{spec!r} is a file that carries its own weights")
        if spec.endswith(".pt2"):
            return _load_pt2(spec)
        return _load_pickled(spec, allow_pickle).eval()
    if _IMPORT_PATH.match(spec):
        model = _factory(spec)
        if weights is not None:
            _load_weights(model, spec, os.fspath(weights))
        return model.eval()
    if spec.endswith((".pt2", ".pt", ".pth", ".bin")) or os.sep in spec:
        raise ConversionError(f"model file {spec!r} does not exist")
    raise ConversionError(f"{spec!r} is neither an existing file nor an import path of the "
                          "form 'pkg.module:factory'")
