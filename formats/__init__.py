"""framedelta.formats: the model file (HDF5), its normative spec (SPEC.md) and loader.

Nothing here runs a model; the engine and the converters both build on it.
"""

from .graph import Graph, InputSpec, Node, Preprocess, check_graph
from .layout import FORMAT_NAME, FORMAT_VERSION
from .ops import OPS, Category, OpSchema
from .reader import read_model
from .writer import write_model

__all__ = ["Graph", "InputSpec", "Node", "Preprocess", "check_graph", "OPS", "Category",
           "OpSchema", "FORMAT_NAME", "FORMAT_VERSION", "read_model", "write_model"]
