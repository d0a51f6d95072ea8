"""framedelta.engine: graph executor, kernels, numpy references.

Importing it checks that the compiled kernels exist, and says how to build them
when they do not (as scikit-learn's __check_build does).
"""

try:
    from . import _kernels  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "framedelta's compiled kernels (framedelta.engine._kernels) could not be "
        f"imported: {e}.\nIf you are working from a source checkout, build them with\n"
        "    pip install -e .            (or: python setup.py build_ext --inplace)\n"
        "which needs a C compiler, Cython and numpy. If you installed a wheel, "
        "reinstall it: pip install --force-reinstall framedelta") from e

from .model import Model, effective_n_threads  # noqa: E402

__all__ = ["Model", "effective_n_threads"]
