"""Read a model file (SPEC.md), trusting nothing in it.

The checks run in the order of SPEC.md, "Validation order"; each raises
ModelFormatError(path, node, field, message) and carries its rule id ([R..]) in a
comment. Nothing is allocated from a size the file declares until that size has been
checked against the limits and against the graph (check_graph runs on stand-in weights
that occupy no memory); only then are the weights read. Only hard links are followed,
and only contiguous or compact float32 datasets are read, so no other file, filter
plugin or external storage is ever touched; strings are fixed-length, so no length comes
from the unchecksummed global heap. Nothing in a file is executed.
"""

import math
import os
from contextlib import contextmanager

import h5py
import numpy as np

from framedelta.errors import ModelFormatError

from .budget import check_footprint
from .graph import Graph, InputSpec, Node, Preprocess, check_graph
from .layout import (FORMAT_NAME, FORMAT_VERSION, GRAPH_ATTRS, INPUT_ATTRS, MAX_ATTR_BYTES,
                     MAX_ATTR_LEN, NODE_ATTRS, NODE_MEMBERS, PREPROCESS_ATTRS, ROOT_ATTRS,
                     ROOT_MEMBERS, node_group_name)
from .ops import MAX_DIM, MAX_NODES, MAX_NUMEL, MAX_RANK, MAX_TEXT_LEN, OPS

# What h5py raises on a damaged file; a ModelFormatError (a ValueError) passes through.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError,
              OverflowError)

_CLASS_NAMES = {
    h5py.h5t.INTEGER: "an integer", h5py.h5t.FLOAT: "a float", h5py.h5t.STRING: "a string",
    h5py.h5t.ENUM: "an enum (how booleans are stored)", h5py.h5t.COMPOUND: "a compound",
    h5py.h5t.REFERENCE: "a reference", h5py.h5t.VLEN: "a variable-length sequence",
    h5py.h5t.ARRAY: "an array type", h5py.h5t.OPAQUE: "opaque bytes",
    h5py.h5t.BITFIELD: "a bitfield", h5py.h5t.TIME: "a time",
}

# attribute kind -> (HDF5 type class, 1-D?)
_KINDS = {
    "str": (h5py.h5t.STRING, False), "strs": (h5py.h5t.STRING, True),
    "int": (h5py.h5t.INTEGER, False), "ints": (h5py.h5t.INTEGER, True),
    "float": (h5py.h5t.FLOAT, False), "floats": (h5py.h5t.FLOAT, True),
}

_LAYOUTS = {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous",
            h5py.h5d.CHUNKED: "chunked", h5py.h5d.VIRTUAL: "virtual"}


def _file_size(path):
    return os.stat(path).st_size


def read_model(path, max_activation_bytes=None, max_macs=None):
    """Read and validate the model file at ``path``; return its :class:`Graph`.

    Raises :class:`ModelFormatError` naming the file, the node (or None) and the field
    for any breach of SPEC.md; never another exception for a damaged or hostile file.
    ``max_activation_bytes``, ``max_macs``: the limits of [R30] (None: budget.py's
    defaults), raised for a model known to be that big.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):                                          # [R1]
        what = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise ModelFormatError(path, None, None, f"the model file {what}")
    try:
        f = h5py.File(path, "r")                                          # [R2]
    except _H5_ERRORS as e:
        raise ModelFormatError(path, None, None, "cannot be opened as HDF5 (not an HDF5 "
                               f"file, or damaged or truncated): {e}") from e
    try:
        return _Reader(path, f).read(max_activation_bytes, max_macs)
    finally:
        try:
            f.close()
        except _H5_ERRORS:  # pragma: no cover - closing a file we only read
            pass


class _Reader:
    def __init__(self, path, f):
        self.path = path
        self.f = f

    def fail(self, node, field, message):
        raise ModelFormatError(self.path, node, field, message)

    @contextmanager
    def at(self, node, field):
        """Any error h5py raises in this block is the file's fault, at ``field``."""
        try:
            yield
        except ModelFormatError:
            raise
        except _H5_ERRORS as e:
            raise ModelFormatError(self.path, node, field, f"cannot be read: {e}") from e

    # --- members and links -----------------------------------------------------------

    def member_names(self, group, node, field):
        with self.at(node, field):
            n = group.id.get_num_objs()
            if n > MAX_NODES + 1:
                self.fail(node, field, f"holds {n} members, more than any valid file")
            return [k for k in group.keys()]

    def only_members(self, group, allowed, node, prefix):
        for name in self.member_names(group, node, prefix.rstrip("/") or None):
            if name not in allowed:                                       # [R7]
                self.fail(node, prefix + name, "is not part of the format "
                          f"(allowed here: {', '.join(allowed) or 'nothing'})")

    def member(self, group, name, cls, node, field):
        """The member ``name`` of ``group``, reached through a hard link only."""
        with self.at(node, field):
            bname = name.encode("utf-8")
            if not group.id.links.exists(bname):                          # [R7]
                self.fail(node, field, "is missing")
            kind = group.id.links.get_info(bname).type
            if kind != h5py.h5l.TYPE_HARD:                                # [R8]
                what = {h5py.h5l.TYPE_SOFT: "a soft link",
                        h5py.h5l.TYPE_EXTERNAL: "an external link"}.get(kind, "a user-defined link")
                self.fail(node, field, f"is {what}; only hard links are allowed "
                          "(links are never followed)")
            obj = group[name]
        if not isinstance(obj, cls):                                      # [R9]
            self.fail(node, field, f"must be {'a group' if cls is h5py.Group else 'a dataset'},"
                      f" got {type(obj).__name__}")
        return obj

    # --- attributes ------------------------------------------------------------------

    def attr_names(self, obj, node, field):
        with self.at(node, field):
            return list(obj.attrs.keys())

    def only_attrs(self, obj, allowed, node, prefix):
        for name in self.attr_names(obj, node, prefix.rstrip(".") or None):
            if name not in allowed:                                       # [R6]
                self.fail(node, prefix + name, "is not an attribute of the format here")

    def attr(self, obj, name, kind, node, field, required=True):
        """Attribute ``name`` of ``obj`` as a Python value of ``kind``, type-checked
        against the HDF5 type and dataspace before its value is read."""
        want_cls, array = _KINDS[kind]
        with self.at(node, field):
            if not obj.attrs.__contains__(name):
                if required:                                              # [R10]
                    self.fail(node, field, "required attribute is missing")
                return None
            aid = obj.attrs.get_id(name)
            tid = aid.get_type()
            cls, size, shape = tid.get_class(), tid.get_size(), aid.shape
            vlen = cls == h5py.h5t.STRING and tid.is_variable_str()
        desc = {"str": "a string", "strs": "a 1-D array of strings", "int": "an integer",
                "ints": "a 1-D array of integers", "float": "a float",
                "floats": "a 1-D array of floats"}[kind]
        if cls != want_cls:                                               # [R11]
            got = _CLASS_NAMES.get(cls, "an unknown type")
            self.fail(node, field, f"must be {desc}, got {got}")
        if ((cls == h5py.h5t.INTEGER and size > 8)
                or (cls == h5py.h5t.FLOAT and size not in (2, 4, 8))):    # [R11]
            self.fail(node, field, f"must be {desc} of at most 64 bits, got {size * 8} bits")
        if vlen:                                                          # [R11]
            self.fail(node, field, f"must be {desc} of fixed length, got a variable-length "
                      "string (its length would come from unchecked metadata)")
        if shape is None:                                                 # [R11]
            self.fail(node, field, f"must be {desc}, got an empty (null) dataspace")
        if array and len(shape) != 1 or not array and shape != ():        # [R11]
            self.fail(node, field, f"must be {desc}, got shape {shape}")
        if array and shape[0] == 0:                                       # [R11]
            self.fail(node, field, f"must be {desc} with at least one element, got none")
        if array and shape[0] > MAX_ATTR_LEN:                             # [R12]
            self.fail(node, field, f"has {shape[0]} elements, the limit is {MAX_ATTR_LEN}")
        if cls == h5py.h5t.STRING and size > MAX_TEXT_LEN:                # [R12]
            self.fail(node, field, f"is a {size}-byte string, the limit is {MAX_TEXT_LEN}")
        with self.at(node, field):
            stored = aid.get_storage_size()
        if stored > MAX_ATTR_BYTES:                                       # [R12]
            self.fail(node, field, f"holds {stored} bytes, the limit is {MAX_ATTR_BYTES}")
        with self.at(node, field):
            # read through the attribute already open (its type and size were checked
            # above): h5py's attrs[name] would open and inspect it again, and that
            # doubled the time to load a graph of thousands of small nodes
            value = np.empty(shape, aid.dtype)
            aid.read(value)
            if value.ndim == 0:
                value = value[()]
        if kind == "int":
            return int(value)
        if kind == "ints":
            return tuple(int(v) for v in np.asarray(value).reshape(-1))
        if kind == "float":
            return float(value)
        if kind == "floats":
            return tuple(float(v) for v in np.asarray(value).reshape(-1))
        if kind == "str":
            return self.text(value, node, field)
        # each distinct string checked once (a concat's 65536 inputs are mostly one name)
        values = np.asarray(value, dtype=object).reshape(-1)
        texts = {}
        return [texts[v] if v in texts else texts.setdefault(v, self.text(v, node, field))
                for v in values]

    def text(self, value, node, field):
        try:                                                              # [R12]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if not isinstance(value, str):
                raise TypeError(f"got {type(value).__name__}")
            n = len(value.encode("utf-8"))
        except (UnicodeError, TypeError) as e:
            self.fail(node, field, f"is not a valid UTF-8 string: {e}")
        if n > MAX_TEXT_LEN:                                              # [R12]
            self.fail(node, field, f"is {n} bytes long, the limit is {MAX_TEXT_LEN}")
        return value

    # --- the file --------------------------------------------------------------------

    def read(self, max_activation_bytes=None, max_macs=None):
        f = self.f
        fmt = self.attr(f, "format", "str", None, "format")
        if fmt != FORMAT_NAME:                                            # [R3]
            self.fail(None, "format", f"must be {FORMAT_NAME!r}, got {fmt!r}: "
                      "not a framedelta model file")
        version = self.attr(f, "format_version", "int", None, "format_version")
        if version < 1:                                                   # [R4]
            self.fail(None, "format_version", f"must be a positive integer, got {version}")
        if version > FORMAT_VERSION:                                      # [R5]
            known = "version 1" if FORMAT_VERSION == 1 else f"versions 1 to {FORMAT_VERSION}"
            self.fail(None, "format_version", f"the file needs format version {version}; "
                      f"this reader supports {known} (a newer framedelta may read it)")
        producer = self.attr(f, "producer", "str", None, "producer")
        self.only_attrs(f, ROOT_ATTRS, None, "")
        self.only_members(f, ROOT_MEMBERS, None, "")
        g_input = self.member(f, "input", h5py.Group, None, "input")
        g_graph = self.member(f, "graph", h5py.Group, None, "graph")
        g_nodes = self.member(f, "nodes", h5py.Group, None, "nodes")
        with self.at(None, None):
            self.size = _file_size(self.path)

        spec = self.read_input(g_input)
        outputs, count = self.read_graph(g_graph)
        nodes, datasets = self.read_nodes(g_nodes, count)
        graph = Graph(spec, nodes, outputs, producer)
        shapes = check_graph(graph, self.path)                            # [G1]..[G16]
        check_footprint(graph, shapes, self.path, max_activation_bytes,  # [R30]
                        max_macs)
        for node in nodes:                                                # [R29]
            for name, dset in datasets[node.name].items():
                arr = np.empty(dset.shape, np.float32)
                with self.at(node.name, f"weights/{name}"):
                    dset.read_direct(arr)
                node.weights[name] = arr
        return graph

    def read_input(self, g):
        self.only_attrs(g, INPUT_ATTRS + PREPROCESS_ATTRS, None, "input.")
        self.only_members(g, (), None, "input/")
        name = self.attr(g, "name", "str", None, "input.name")
        shape = self.attr(g, "shape", "ints", None, "input.shape")
        if len(shape) != 4:                                               # [R13]
            self.fail(None, "input.shape", f"must hold 4 values (1, C, H, W), got {shape}")
        dtype = self.attr(g, "dtype", "str", None, "input.dtype")
        with self.at(None, "input"):
            present = [a for a in PREPROCESS_ATTRS if g.attrs.__contains__(a)]
        if not present:
            return InputSpec(name, shape, dtype, None)
        if len(present) != len(PREPROCESS_ATTRS):                         # [R14]
            missing = [a for a in PREPROCESS_ATTRS if a not in present]
            self.fail(None, f"input.{missing[0]}", "preprocessing attributes must be all "
                      f"present or all absent; missing: {', '.join(missing)}")
        scale = self.attr(g, "pixel_scale", "float", None, "input.pixel_scale")
        mean = self.attr(g, "pixel_mean", "floats", None, "input.pixel_mean")
        std = self.attr(g, "pixel_std", "floats", None, "input.pixel_std")
        bgr = self.attr(g, "bgr_to_rgb", "int", None, "input.bgr_to_rgb")
        if not (math.isfinite(scale) and scale > 0):                      # [R15]
            self.fail(None, "input.pixel_scale", f"must be finite and positive, got {scale}")
        if len(mean) != 3 or not all(math.isfinite(m) for m in mean):     # [R15]
            self.fail(None, "input.pixel_mean", f"must be 3 finite values, got {mean}")
        if len(std) != 3 or not all(math.isfinite(s) and s > 0 for s in std):  # [R15]
            self.fail(None, "input.pixel_std", f"must be 3 finite positive values, got {std}")
        if bgr not in (0, 1):                                             # [R16]
            self.fail(None, "input.bgr_to_rgb", f"must be 0 or 1, got {bgr}")
        return InputSpec(name, shape, dtype, Preprocess(scale, mean, std, bool(bgr)))

    def read_graph(self, g):
        self.only_attrs(g, GRAPH_ATTRS, None, "graph.")
        self.only_members(g, (), None, "graph/")
        outputs = self.attr(g, "outputs", "strs", None, "outputs")
        count = self.attr(g, "node_count", "int", None, "node_count")
        if not 1 <= count <= MAX_NODES:                                   # [R17]
            self.fail(None, "node_count", f"must be between 1 and {MAX_NODES}, got {count}")
        return outputs, count

    def read_nodes(self, g, count):
        self.only_attrs(g, (), None, "nodes.")
        with self.at(None, "nodes"):
            n = g.id.get_num_objs()
        if n != count:                                                    # [R18]
            self.fail(None, "nodes", f"holds {n} members but node_count is {count}")
        present = set(self.member_names(g, None, "nodes"))
        for i in range(count):
            if node_group_name(i) not in present:                         # [R19]
                extra = sorted(present - {node_group_name(j) for j in range(count)})
                self.fail(None, f"nodes/{node_group_name(i)}", "node group is missing"
                          + (f" (found {extra[0]!r} instead)" if extra else ""))
        nodes, datasets = [], {}
        for i in range(count):
            gname = node_group_name(i)
            node, dsets = self.read_node(self.member(g, gname, h5py.Group, None,
                                                     f"nodes/{gname}"), gname)
            nodes.append(node)
            datasets.setdefault(node.name, dsets)   # a duplicate name fails in check_graph
        return nodes, datasets

    def read_node(self, g, gname):
        name = self.attr(g, "name", "str", None, f"nodes/{gname}/name")
        op = self.attr(g, "op", "str", name, "op")
        schema = OPS.get(op)
        if schema is None:                                                # [R20]
            self.fail(name, "op", f"unknown op {op!r} (format version {FORMAT_VERSION} "
                      f"knows: {', '.join(OPS)})")
        inputs = self.attr(g, "inputs", "strs", name, "inputs")
        outputs = self.attr(g, "outputs", "strs", name, "outputs")
        source = self.attr(g, "source", "str", name, "source", required=False) or ""
        self.only_attrs(g, NODE_ATTRS, name, "")
        self.only_members(g, NODE_MEMBERS, name, "")
        g_attrs = self.member(g, "attrs", h5py.Group, name, "attrs")
        g_weights = self.member(g, "weights", h5py.Group, name, "weights")

        self.only_members(g_attrs, (), name, "attrs/")
        attrs = {}
        for a in self.attr_names(g_attrs, name, "attrs"):
            spec = schema.attrs.get(a)
            if spec is None:                                              # [R21]
                self.fail(name, f"attrs/{a}", f"unknown attribute for op {op!r} "
                          f"(it has: {', '.join(schema.attrs) or 'none'})")
            attrs[a] = self.attr(g_attrs, a, spec.kind, name, f"attrs/{a}")

        self.only_attrs(g_weights, (), name, "weights.")
        datasets, stand_ins = {}, {}
        for w in self.member_names(g_weights, name, "weights"):
            field = f"weights/{w}"
            dset = self.member(g_weights, w, h5py.Dataset, name, field)
            stand_ins[w] = self.check_dataset(dset, name, field)
            datasets[w] = dset
        node = Node(name, op, inputs, outputs, attrs, stand_ins, source)
        return node, datasets

    def check_dataset(self, d, node, field):
        """Everything about a weight dataset but its values; returns a stand-in array of
        its shape and dtype that occupies no memory."""
        with self.at(node, field):
            virtual = d.is_virtual
            dcpl = d.id.get_create_plist()
            external = dcpl.get_external_count()
            layout = dcpl.get_layout()
            tid = d.id.get_type()
            cls = tid.get_class()
            f32 = cls == h5py.h5t.FLOAT and tid.equal(h5py.h5t.IEEE_F32LE)
            shape = d.shape
            n_attrs = len(d.attrs)
        if virtual:                                                       # [R22]
            self.fail(node, field, "is a virtual dataset; its data would come from other "
                      "files, which are never read")
        if external:                                                      # [R23]
            self.fail(node, field, "keeps its data in external files, which are never read")
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT):         # [R24]
            self.fail(node, field, f"has {_LAYOUTS.get(layout, 'an unknown')} layout; only "
                      "contiguous or compact (unfiltered) datasets are allowed")
        if not f32:                                                       # [R25]
            with self.at(node, field):
                got = _CLASS_NAMES.get(cls, "an unknown type")
                if cls in (h5py.h5t.FLOAT, h5py.h5t.INTEGER):
                    got = str(d.dtype)
            self.fail(node, field, f"dtype must be float32 (IEEE, little-endian), got {got}")
        if shape is None or len(shape) == 0 or len(shape) > MAX_RANK:     # [R26]
            self.fail(node, field, f"must have rank 1 to {MAX_RANK}, got shape {shape}")
        if any(not 1 <= s <= MAX_DIM for s in shape):                     # [R26]
            self.fail(node, field, f"dimensions must be between 1 and {MAX_DIM}, got {shape}")
        numel = math.prod(shape)
        if numel > MAX_NUMEL:                                             # [R26]
            self.fail(node, field, f"{shape} has more than {MAX_NUMEL} elements")
        if n_attrs:                                                       # [R6]
            self.fail(node, field, "weight datasets carry no attributes")
        with self.at(node, field):
            stored = d.id.get_storage_size()
            offset = d.id.get_offset() if layout == h5py.h5d.CONTIGUOUS else 0
        if offset is None or stored != 4 * numel:                         # [R27]
            self.fail(node, field, f"stores {stored} bytes, its shape {shape} needs "
                      f"{4 * numel}" + (" (storage never written)" if offset is None else ""))
        # get_offset() counts from the start of the file, a userblock included
        start = offset
        if layout == h5py.h5d.CONTIGUOUS and start + stored > self.size:  # [R28]
            self.fail(node, field, f"data at bytes {start}..{start + stored} runs past the end "
                      f"of the file ({self.size} bytes): truncated file")
        return np.broadcast_to(np.zeros((), np.float32), shape)
