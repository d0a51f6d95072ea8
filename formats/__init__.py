"""framedelta.formats: the model file (HDF5), its normative spec (SPEC.md) and loader.

Nothing here runs a model; the engine and the converters both build on it.
"""

from .graph import Graph, InputSpec, Node, Preprocess, check_graph
from .ops import OPS, Category, OpSchema

FORMAT_NAME = "framedelta"
FORMAT_VERSION = 1
