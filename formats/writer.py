"""Write a graph as a model file (SPEC.md). Only a graph that passes check_graph is
written, and the file appears at its path complete or not at all.
"""

import contextlib
import os
import secrets

import h5py
import numpy as np

from .graph import check_graph
from .layout import FORMAT_NAME, FORMAT_VERSION, LIBVER, node_group_name
from .ops import OPS

def _encode(kind, value):
    """An op attribute as SPEC.md encodes it (attribute encoding table)."""
    if kind == "int":
        return np.int64(value)
    if kind == "ints":
        return np.asarray(value, dtype=np.int64).reshape(-1)
    if kind == "float":
        return np.float64(value)
    if kind == "floats":
        return np.asarray(value, dtype=np.float64).reshape(-1)
    if kind == "str":
        return _string(value)
    raise AssertionError(kind)  # pragma: no cover - schema bug


def _fixed(nbytes):
    # fixed-length, not variable-length: a fixed string's size sits in the checksummed
    # object header, a vlen string's in the global heap, which nothing checks (SPEC.md)
    return h5py.string_dtype("utf-8", max(1, nbytes))


def _string(value):
    b = value.encode("utf-8")
    return np.array(b, dtype=_fixed(len(b)))


def _strings(values):
    bs = [v.encode("utf-8") for v in values]
    return np.array(bs, dtype=_fixed(max(map(len, bs), default=1)))


def _write(f, graph):
    f.attrs["format"] = _string(FORMAT_NAME)
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["producer"] = _string(graph.producer)

    spec = graph.input
    g = f.create_group("input")
    g.attrs["name"] = _string(spec.name)
    g.attrs["shape"] = np.asarray(spec.shape, dtype=np.int64)
    g.attrs["dtype"] = _string(spec.dtype)
    if spec.preprocess is not None:
        p = spec.preprocess
        g.attrs["pixel_scale"] = np.float64(p.scale)
        g.attrs["pixel_mean"] = np.asarray(p.mean, dtype=np.float64)
        g.attrs["pixel_std"] = np.asarray(p.std, dtype=np.float64)
        g.attrs["bgr_to_rgb"] = np.int64(bool(p.bgr_to_rgb))

    g = f.create_group("graph")
    g.attrs["outputs"] = _strings(graph.outputs)
    g.attrs["node_count"] = np.int64(len(graph.nodes))

    nodes = f.create_group("nodes")
    data = []
    for i, node in enumerate(graph.nodes):
        g = nodes.create_group(node_group_name(i))
        g.attrs["name"] = _string(node.name)
        g.attrs["op"] = _string(node.op)
        g.attrs["inputs"] = _strings(node.inputs)
        g.attrs["outputs"] = _strings(node.outputs)
        if node.source:
            g.attrs["source"] = _string(node.source)
        schema = OPS[node.op]
        a = g.create_group("attrs")
        for name, value in node.attrs.items():
            a.attrs[name] = _encode(schema.attrs[name].kind, value)
        w = g.create_group("weights")
        for name, arr in node.weights.items():
            # contiguous and unfiltered: loading is one read, and SPEC.md allows no other
            data.append((w.create_dataset(name, shape=arr.shape, dtype="<f4"), arr))
    # Values last, after all metadata: then a file cut short loses weight values, which
    # the reader reports by dataset, rather than the structure.
    for dset, arr in data:
        dset.write_direct(np.ascontiguousarray(arr, dtype="<f4"))


def write_model(graph, path):
    """Check ``graph`` (ModelFormatError naming node and field if it breaks a rule of
    SPEC.md) and write it to ``path``, replacing any file there atomically.
    """
    check_graph(graph)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # created here, not by mkstemp, so that the file gets the umask's usual mode
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        with h5py.File(tmp, "w", libver=LIBVER) as f:
            _write(f, graph)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):      # make the rename itself durable where we can
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
