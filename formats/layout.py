"""Names and encodings of the HDF5 layout (SPEC.md, "File layout"), shared by the
reader and the writer so that the two cannot drift apart.
"""

from .ops import MAX_NAME_LEN, MAX_NODES

FORMAT_NAME = "framedelta"
FORMAT_VERSION = 1          # the newest version this code reads and the one it writes

# HDF5 file-format features the writer may use: 1.8 (superblock v2, object header v2)
# puts a checksum on every piece of metadata, so a damaged header is reported, not parsed.
LIBVER = ("v108", "v108")

ROOT_ATTRS = ("format", "format_version", "producer")
ROOT_MEMBERS = ("input", "graph", "nodes")
INPUT_ATTRS = ("name", "shape", "dtype")
PREPROCESS_ATTRS = ("pixel_scale", "pixel_mean", "pixel_std", "bgr_to_rgb")
GRAPH_ATTRS = ("outputs", "node_count")
NODE_ATTRS = ("name", "op", "inputs", "outputs", "source")
NODE_MEMBERS = ("attrs", "weights")

MAX_ATTR_LEN = MAX_NODES    # elements of any 1-D attribute (names, ints, floats)
MAX_ATTR_BYTES = MAX_ATTR_LEN * MAX_NAME_LEN   # stored bytes of any one attribute


def node_group_name(index):
    """/nodes/000000, /nodes/000001, ...: six digits cover MAX_NODES (65536) nodes."""
    return f"{index:06d}"
