"""The model file: round trips, and one corrupt-file test per rule of formats/SPEC.md.

Every case is a valid file (a small graph: conv2d -> relu -> add -> concat ->
max_pool2d -> global_avg_pool -> reshape -> linear) broken in one way; the reader must
raise ModelFormatError naming the expected file, node and field. Case ids start with
the SPEC rule id they cover ([R..] for the file, [G..] for the graph);
``test_every_spec_rule_has_a_case`` keeps the two in step.
"""

import math
import re
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from framedelta.errors import ModelFormatError
from framedelta.formats import (FORMAT_NAME, FORMAT_VERSION, OPS, Graph, InputSpec, Node,
                                Preprocess, check_graph, read_model, write_model)
from framedelta.formats import reader as reader_module
from framedelta.formats.layout import LIBVER, MAX_ATTR_LEN
from framedelta.formats.ops import MAX_DIM, MAX_NAME_LEN, MAX_NODES, MAX_TEXT_LEN
from framedelta.formats.writer import _write

SPEC = Path(__file__).resolve().parents[1] / "formats" / "SPEC.md"


# --- graphs ---------------------------------------------------------------------------

def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_graph(preprocess=True):
    """x(1,3,8,8) -> conv -> relu; add(c, r); concat(a, r) -> pool -> gap -> flat -> fc."""
    rng = np.random.default_rng(0)
    win = {"stride": (1, 1), "pads": (1, 1, 1, 1), "dilation": (1, 1)}
    nodes = [
        Node("conv", "conv2d", ["x"], ["c"], {"out_channels": 4, "kernel": (3, 3), **win,
                                              "activation": "clamp", "act_min": 0.0,
                                              "act_max": 6.0},
             {"weight": _w(rng, 4, 3, 3, 3), "bias": _w(rng, 4)}, "model.conv (net.py:12)"),
        Node("relu", "relu", ["c"], ["r"]),
        Node("add", "add", ["c", "r"], ["a"]),
        Node("cat", "concat", ["a", "r"], ["k"], {"axis": 1}),
        Node("pool", "max_pool2d", ["k"], ["p"], {"kernel": (2, 2), "stride": (2, 2),
                                                  "pads": (0, 0, 0, 0), "dilation": (1, 1),
                                                  "ceil_mode": 0}),
        Node("gap", "global_avg_pool", ["p"], ["g"]),
        Node("flat", "reshape", ["g"], ["f"], {"shape": (1, 8)}),
        Node("fc", "linear", ["f"], ["y"], {"out_features": 5},
             {"weight": _w(rng, 5, 8), "bias": _w(rng, 5)}, "model.fc"),
    ]
    pre = Preprocess(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True) \
        if preprocess else None
    return Graph(InputSpec("x", (1, 3, 8, 8), "float32", pre), nodes, ["y"], "test_format")


def all_ops_graph():
    """Every op of OPS at least once, with non-default attributes where there are any."""
    rng = np.random.default_rng(1)
    win = {"kernel": (3, 2), "stride": (2, 1), "pads": (1, 0, 0, 1), "dilation": (1, 2)}
    nodes = [
        Node("conv", "conv2d", ["image"], ["c"], {"out_channels": 6, **win, "groups": 3,
                                              "activation": "relu"},
             {"weight": _w(rng, 6, 1, 3, 2), "bias": _w(rng, 6)}),
        Node("bn", "batch_norm", ["c"], ["b"], {}, {"scale": _w(rng, 6), "shift": _w(rng, 6)}),
        Node("relu", "relu", ["b"], ["r"]),
        Node("clamp", "clamp", ["r"], ["cl"], {"min": -0.5, "max": math.inf}),
        Node("pool", "max_pool2d", ["cl"], ["p"], {"kernel": (2, 2), "stride": (2, 2),
                                                   "pads": (1, 1, 0, 0), "dilation": (1, 1),
                                                   "ceil_mode": 1}),
        Node("up", "upsample_nearest", ["p"], ["u"], {"size": (8, 10), "scales": (0.5, 0.5)}),
        Node("bil", "upsample_bilinear", ["p"], ["v"], {"size": (8, 10), "align_corners": 1,
                                                        "scales": (0.5, 0.5)}),
        Node("add", "add", ["u", "v"], ["a"]),
        Node("cat", "concat", ["a", "u", "v"], ["k"]),
        Node("id", "identity", ["k"], ["i"], source="dropout"),
        Node("gap", "global_avg_pool", ["i"], ["g"], {"keepdim": 0}),
        Node("fc", "linear", ["g"], ["l"], {"out_features": 4},
             {"weight": _w(rng, 4, 18), "bias": _w(rng, 4)}),
        Node("flat", "reshape", ["l"], ["f"], {"shape": (1, 2, 2)}),
    ]
    return Graph(InputSpec("image", (1, 3, 8, 9), "float32", None), nodes, ["f", "a"],
                 "framedelta tests")


def assert_same_graph(a, b):
    assert a.producer == b.producer
    assert a.input == b.input
    assert a.outputs == b.outputs
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for x, y in zip(a.nodes, b.nodes):
        assert (x.name, x.op, list(x.inputs), list(x.outputs), x.source) == \
            (y.name, y.op, list(y.inputs), list(y.outputs), y.source)
        assert x.attrs == y.attrs
        for k, v in x.attrs.items():
            assert type(v) is type(y.attrs[k])
        assert set(x.weights) == set(y.weights)
        for k in x.weights:
            assert y.weights[k].dtype == np.float32
            assert y.weights[k].shape == x.weights[k].shape
            assert y.weights[k].tobytes() == x.weights[k].tobytes()   # bit for bit
            assert y.weights[k].flags.writeable and y.weights[k].flags.c_contiguous


# --- file surgery ----------------------------------------------------------------------

def write_unchecked(graph, path):
    """Write ``graph`` without check_graph, as a buggy or hostile writer would."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        _write(f, graph)


def fstr(s):
    """A fixed-length UTF-8 string (array, for a list), as SPEC.md requires."""
    bs = [x.encode("utf-8") for x in s] if isinstance(s, list) else \
        s.encode("utf-8") if isinstance(s, str) else s
    n = max(map(len, bs)) if isinstance(bs, list) else len(bs)
    return np.array(bs, dtype=h5py.string_dtype("utf-8", max(1, n)))


def edit(fn):
    def corrupt(path):
        with h5py.File(path, "r+") as f:
            fn(f)
    return corrupt


def set_attr(obj, name, value, dtype=None):
    def fn(f):
        if dtype is not None:
            f[obj].attrs.create(name, value, dtype=dtype)
        elif isinstance(value, str) or isinstance(value, list) and isinstance(value[0], str):
            f[obj].attrs.create(name, fstr(value))
        else:
            f[obj].attrs.create(name, value)
    return edit(fn)


def del_attr(obj, name):
    return edit(lambda f: f[obj].attrs.__delitem__(name))


def delete(obj):
    return edit(lambda f: f.__delitem__(obj))


def replace(obj, fn):
    """Delete ``obj`` and call fn(parent, basename) to put something else there."""
    def do(f):
        parent, _, name = obj.rpartition("/")
        del f[obj]
        fn(f[parent or "/"], name)
    return edit(do)


def mutate(fn):
    def corrupt(path):
        g = make_graph()
        fn(g)
        write_unchecked(g, path)
    return corrupt


def set_node(name, **changes):
    def fn(g):
        n = next(n for n in g.nodes if n.name == name)
        for k, v in changes.items():
            if k.startswith("attr_"):
                n.attrs[k[5:]] = v
            else:
                setattr(n, k, v)
    return mutate(fn)


_M32 = 0xFFFFFFFF


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data, initval=0):
    """Bob Jenkins' hashlittle: HDF5's metadata checksum (H5_checksum_lookup3)."""
    v = [(0xDEADBEEF + len(data) + initval) & _M32] * 3
    data = bytes(data)
    rest = len(data)
    while True:
        chunk, data = data[:12], data[12:]
        if rest == 0:
            return v[2]
        for j in range(3):
            v[j] = (v[j] + int.from_bytes(chunk[4 * j:4 * j + 4].ljust(4, b"\0"), "little")) & _M32
        if rest <= 12:        # final mix
            for (x, y), k in zip([(2, 1), (0, 2), (1, 0)] * 3, (14, 11, 25, 16, 4, 14, 24)):
                v[x] = ((v[x] ^ v[y]) - _rot(v[y], k)) & _M32
            return v[2]
        for (x, y, z), k in zip([(0, 2, 1), (1, 0, 2), (2, 1, 0)] * 2, (4, 6, 8, 16, 19, 4)):
            v[x] = ((v[x] - v[y]) & _M32) ^ _rot(v[y], k)
            v[y] = (v[y] + v[z]) & _M32
        rest -= 12


def cut(data, length, fix_eof):
    """The first ``length`` bytes; with ``fix_eof`` the superblock (version 2) is made to
    agree, as if the file had been written that short, so libhdf5 opens it."""
    b = bytearray(data[:length])
    if fix_eof and length >= 48:
        assert b[8] == 2, "writer no longer writes superblock version 2"
        b[28:36] = struct.pack("<Q", length)
        b[44:48] = struct.pack("<I", lookup3(bytes(b[:44])))
    return bytes(b)


def truncate_into_last_dataset(path):
    """Cut the file inside the data of the dataset stored last; return its (node, field)."""
    with h5py.File(path, "r") as f:
        spots = []
        for i in range(int(f["graph"].attrs["node_count"])):
            g = f[f"nodes/{i:06d}"]
            for w, d in g["weights"].items():
                spots.append((d.id.get_offset(), g.attrs["name"].decode(), f"weights/{w}"))
    offset, name, field = max(spots)
    Path(path).write_bytes(cut(Path(path).read_bytes(), offset + 6, True))
    return name, field


# --- corrupt-file cases: (corrupt(path) -> optional new path, node, field) --------------

N = "nodes/{:06d}".format
CONV, RELU, ADD, CAT, POOL, GAP, FLAT, FC = (N(i) for i in range(8))


def _dir(path):
    d = path.parent / "a_directory.h5"
    d.mkdir()
    return d


def _virtual(g, name):
    layout = h5py.VirtualLayout(shape=(4,), dtype="<f4")
    layout[:] = h5py.VirtualSource("other.h5", "data", shape=(4,))
    g.create_virtual_dataset(name, layout)


def _patched(attr, value):
    def corrupt(path, monkeypatch):
        monkeypatch.setattr(reader_module, attr, value)
    return corrupt


def _read_fails(path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("Can't synchronously read data (simulated I/O error)")
    monkeypatch.setattr(h5py.Dataset, "read_direct", fail)


def _swap(a, b):
    def fn(f):
        f.move(a, "tmp")
        f.move(b, a)
        f.move("tmp", b)
    return edit(fn)


P = pytest.param
FILE_CASES = [
    # [R1] .. [R2]: the file itself
    P(lambda p: p.parent / "missing.h5", None, None, id="R1-missing"),
    P(_dir, None, None, id="R1-directory"),
    P(lambda p: p.write_bytes(b"not an HDF5 file\n" * 64), None, None, id="R2-not-hdf5"),
    P(lambda p: p.write_bytes(b""), None, None, id="R2-empty"),
    P(lambda p: p.write_bytes(p.read_bytes()[:3000]), None, None, id="R2-truncated"),
    # [R3] .. [R5]: format and version
    P(set_attr("/", "format", "onnx"), None, "format", id="R3-format-wrong"),
    P(set_attr("/", "format_version", 0), None, "format_version", id="R4-version-zero"),
    P(set_attr("/", "format_version", -3), None, "format_version", id="R4-version-negative"),
    P(set_attr("/", "format_version", FORMAT_VERSION + 1), None, "format_version",
      id="R5-version-newer"),
    # [R6] unknown attributes
    P(set_attr("/", "comment", "hello"), None, "comment", id="R6-root"),
    P(set_attr("input", "layout", "nchw"), None, "input.layout", id="R6-input"),
    P(set_attr("graph", "inputs", ["x"]), None, "graph.inputs", id="R6-graph"),
    P(set_attr("nodes", "order", 1), None, "nodes.order", id="R6-nodes"),
    P(set_attr(RELU, "inplace", 1), "relu", "inplace", id="R6-node"),
    P(set_attr(CONV + "/weights", "layout", "oihw"), "conv", "weights.layout",
      id="R6-weights-group"),
    P(set_attr(CONV + "/weights/weight", "layout", "oihw"), "conv", "weights/weight",
      id="R6-weight-dataset"),
    # [R7] members: required ones present, no others
    P(edit(lambda f: f.create_group("extra")), None, "extra", id="R7-root-extra"),
    P(delete("graph"), None, "graph", id="R7-graph-missing"),
    P(delete("nodes"), None, "nodes", id="R7-nodes-missing"),
    P(edit(lambda f: f["input"].create_group("mean")), None, "input/mean", id="R7-input-member"),
    P(edit(lambda f: f["graph"].create_dataset("order", data=[1])), None, "graph/order",
      id="R7-graph-member"),
    P(edit(lambda f: f[RELU].create_group("extra")), "relu", "extra", id="R7-node-member"),
    P(delete(RELU + "/weights"), "relu", "weights", id="R7-weights-missing"),
    P(delete(CONV + "/attrs"), "conv", "attrs", id="R7-attrs-missing"),
    P(edit(lambda f: f[CONV + "/attrs"].create_group("kernel")), "conv", "attrs/kernel",
      id="R7-attrs-member"),
    # [R8] hard links only
    P(replace("input", lambda g, n: g.__setitem__(n, h5py.SoftLink("/graph"))), None,
      "input", id="R8-soft-link"),
    P(replace(RELU, lambda g, n: g.__setitem__(n, h5py.SoftLink("/" + CONV))), None, RELU,
      id="R8-soft-link-node"),
    P(replace(CONV + "/weights/bias",
              lambda g, n: g.__setitem__(n, h5py.ExternalLink("/etc/passwd.h5", "/bias"))),
      "conv", "weights/bias", id="R8-external-link"),
    # [R9] groups are groups, datasets datasets
    P(replace("input", lambda g, n: g.create_dataset(n, data=[1, 3, 8, 8])), None, "input",
      id="R9-input-dataset"),
    P(replace(CONV + "/weights/weight", lambda g, n: g.create_group(n)), "conv",
      "weights/weight", id="R9-weight-group"),
    P(replace(CONV + "/attrs", lambda g, n: g.create_dataset(n, data=[1])), "conv", "attrs",
      id="R9-attrs-dataset"),
    # [R10] required attributes
    P(del_attr("/", "format"), None, "format", id="R10-format"),
    P(del_attr("/", "format_version"), None, "format_version", id="R10-format_version"),
    P(del_attr("/", "producer"), None, "producer", id="R10-producer"),
    P(del_attr("input", "name"), None, "input.name", id="R10-input-name"),
    P(del_attr("input", "shape"), None, "input.shape", id="R10-input-shape"),
    P(del_attr("input", "dtype"), None, "input.dtype", id="R10-input-dtype"),
    P(del_attr("graph", "outputs"), None, "outputs", id="R10-outputs"),
    P(del_attr("graph", "node_count"), None, "node_count", id="R10-node_count"),
    P(del_attr(RELU, "name"), None, RELU + "/name", id="R10-node-name"),
    P(del_attr(CONV, "op"), "conv", "op", id="R10-node-op"),
    P(del_attr(ADD, "inputs"), "add", "inputs", id="R10-node-inputs"),
    P(del_attr(ADD, "outputs"), "add", "outputs", id="R10-node-outputs"),
    # [R11] attribute type and dataspace
    P(set_attr("/", "format_version", 1.0), None, "format_version", id="R11-float-for-int"),
    P(set_attr("/", "format_version", "1"), None, "format_version", id="R11-str-for-int"),
    P(set_attr("/", "format_version", [1]), None, "format_version", id="R11-array-for-int"),
    P(set_attr("/", "producer", "me", dtype=h5py.string_dtype()), None, "producer",
      id="R11-vlen-string"),
    P(set_attr("/", "producer", h5py.Empty("S4")), None, "producer", id="R11-null-dataspace"),
    P(set_attr("/", "producer", np.array((1, 2.0), dtype=[("a", "<i4"), ("b", "<f8")])),
      None, "producer", id="R11-compound"),
    P(set_attr("input", "shape", np.array([1.0, 3, 8, 8])), None, "input.shape",
      id="R11-float-shape"),
    P(set_attr(POOL + "/attrs", "ceil_mode", True), "pool", "attrs/ceil_mode", id="R11-bool"),
    P(set_attr(CONV + "/attrs", "stride", np.array([1.0, 1.0])), "conv", "attrs/stride",
      id="R11-float-stride"),
    P(set_attr(CONV + "/attrs", "stride", 1), "conv", "attrs/stride", id="R11-scalar-for-ints"),
    P(set_attr(CONV + "/attrs", "kernel", np.array([[3, 3]])), "conv", "attrs/kernel",
      id="R11-2d-array"),
    P(set_attr(CONV + "/attrs", "kernel", np.array([], dtype=np.int64)), "conv",
      "attrs/kernel", id="R11-empty-array"),
    P(set_attr(CONV + "/attrs", "act_min", 0), "conv", "attrs/act_min", id="R11-int-for-float"),
    P(set_attr(CONV + "/attrs", "activation", 1), "conv", "attrs/activation",
      id="R11-int-for-str"),
    P(set_attr(ADD, "inputs", "c"), "add", "inputs", id="R11-scalar-for-strs"),
    P(set_attr(ADD, "inputs", np.array([1, 2])), "add", "inputs", id="R11-ints-for-strs"),
    # [R12] sizes and UTF-8
    P(set_attr("/", "producer", "p" * (MAX_TEXT_LEN + 1)), None, "producer",
      id="R12-long-string"),
    P(set_attr("/", "producer", fstr(b"caf\xe9")), None, "producer", id="R12-bad-utf8"),
    P(set_attr(ADD, "inputs", ["c"] * (MAX_ATTR_LEN + 1)), "add", "inputs",
      id="R12-too-many-elements"),
    P(_patched("MAX_ATTR_BYTES", 8), None, "format", id="R12-attribute-bytes"),
    # [R13] .. [R16] input
    P(set_attr("input", "shape", np.array([1, 3, 8], dtype=np.int64)), None, "input.shape",
      id="R13-shape-rank"),
    P(del_attr("input", "pixel_std"), None, "input.pixel_std", id="R14-partial-preprocess"),
    P(set_attr("input", "pixel_scale", -1.0), None, "input.pixel_scale", id="R15-scale"),
    P(set_attr("input", "pixel_scale", math.inf), None, "input.pixel_scale", id="R15-scale-inf"),
    P(set_attr("input", "pixel_mean", np.array([0.5, math.nan, 0.5])), None, "input.pixel_mean",
      id="R15-mean-nan"),
    P(set_attr("input", "pixel_mean", np.array([0.5, 0.5])), None, "input.pixel_mean",
      id="R15-mean-length"),
    P(set_attr("input", "pixel_std", np.array([1.0, 0.0, 1.0])), None, "input.pixel_std",
      id="R15-std-zero"),
    P(set_attr("input", "bgr_to_rgb", 2), None, "input.bgr_to_rgb", id="R16-bgr"),
    # [R17] .. [R19] /graph and /nodes
    P(set_attr("graph", "node_count", 0), None, "node_count", id="R17-zero-nodes"),
    P(set_attr("graph", "node_count", MAX_NODES + 1), None, "node_count", id="R17-too-many"),
    P(set_attr("graph", "node_count", 9), None, "nodes", id="R18-count-more"),
    P(set_attr("graph", "node_count", 7), None, "nodes", id="R18-count-less"),
    P(edit(lambda f: f.copy(f[RELU], "nodes/000008")), None, "nodes", id="R18-extra-group"),
    P(edit(lambda f: f.move(CAT, "nodes/3")), None, CAT, id="R19-bad-name"),
    P(edit(lambda f: f.move(FC, "nodes/000008")), None, FC, id="R19-gap"),
    # [R20] .. [R21] op and op attributes
    P(set_attr(CONV, "op", "lstm"), "conv", "op", id="R20-unknown-op"),
    P(set_attr(RELU + "/attrs", "inplace", 1), "relu", "attrs/inplace",
      id="R21-unknown-attribute"),
    P(set_attr(CONV + "/attrs", "strides", np.array([1, 1])), "conv", "attrs/strides",
      id="R21-misspelt-attribute"),
    # [R22] .. [R29] weight datasets
    P(replace(CONV + "/weights/bias", _virtual), "conv", "weights/bias", id="R22-virtual"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, shape=(4,), dtype="<f4", external=[("bias.raw", 0, 16)])), "conv", "weights/bias",
      id="R23-external-storage"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, "<f4"), chunks=(2,))), "conv", "weights/bias", id="R24-chunked"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, "<f4"), compression="gzip")), "conv", "weights/bias", id="R24-gzip"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(n, data=np.zeros(4))),
      "conv", "weights/bias", id="R25-float64"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, "<f2"))), "conv", "weights/bias", id="R25-float16"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, ">f4"))), "conv", "weights/bias", id="R25-big-endian"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, np.int32))), "conv", "weights/bias", id="R25-int"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.array(["a", "b", "c", "d"], dtype=object), dtype=h5py.string_dtype())),
      "conv", "weights/bias", id="R25-vlen-string"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, shape=(4,), dtype=h5py.vlen_dtype(np.float32))), "conv", "weights/bias",
      id="R25-vlen-float"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros(4, [("a", "<f4")]))), "conv", "weights/bias", id="R25-compound"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(n, data=np.float32(0))),
      "conv", "weights/bias", id="R26-scalar"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, data=np.zeros((1,) * 7, "<f4"))), "conv", "weights/bias", id="R26-rank"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, shape=(MAX_DIM + 1,), dtype="<f4")), "conv", "weights/bias", id="R26-absurd-dim"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(
        n, shape=(MAX_DIM, MAX_DIM), dtype="<f4")), "conv", "weights/bias",
      id="R26-absurd-numel"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(n, shape=(0,), dtype="<f4")),
      "conv", "weights/bias", id="R26-zero-dim"),
    P(replace(CONV + "/weights/bias", lambda g, n: g.create_dataset(n, shape=(4,), dtype="<f4")),
      "conv", "weights/bias", id="R27-never-written"),
    P(_patched("_file_size", lambda path: 100), "conv", "weights/bias", id="R28-past-eof"),
    P(truncate_into_last_dataset, None, None, id="R29-truncated"),
    P(_read_fails, "conv", "weights/bias", id="R29-read-error"),
    # [G1] .. [G16] graph rules, reached through the file
    P(set_attr("input", "shape", np.array([2, 3, 8, 8])), None, "input.shape", id="G1-batch"),
    P(set_attr("input", "shape", np.array([1, 3, 0, 8])), None, "input.shape", id="G1-zero"),
    P(set_attr("input", "shape", np.array([1, 3, MAX_DIM + 1, 8])), None, "input.shape",
      id="G1-absurd-dim"),
    P(set_attr("input", "shape", np.array([1, 3, MAX_DIM, MAX_DIM])), None, "input.shape",
      id="G1-numel-overflow"),
    P(set_attr("input", "dtype", "float16"), None, "input.dtype", id="G2-dtype"),
    P(set_attr("input", "shape", np.array([1, 4, 8, 8])), None, "input.preprocess",
      id="G3-preprocess-channels"),
    P(set_attr(RELU, "name", ""), "", "name", id="G4-empty-name"),
    P(set_attr(RELU, "outputs", ["r\0x"]), "relu", "outputs", id="G4-nul-in-name"),
    P(set_attr(RELU, "outputs", ["r" * (MAX_NAME_LEN + 1)]), "relu", "outputs",
      id="G4-long-name"),
    P(set_attr(RELU, "name", "conv"), "conv", "name", id="G6-duplicate-node-name"),
    P(set_attr(RELU, "inputs", ["c", "c"]), "relu", "inputs", id="G8-too-many-inputs"),
    P(set_attr(ADD, "inputs", ["c", "c", "c"]), "add", "inputs", id="G8-too-many-add-inputs"),
    P(set_attr(ADD, "inputs", ["c"]), "add", "attrs/other_shape",
      id="G13-one-input-add-without-constant"),
    P(set_attr(RELU, "outputs", ["r", "r2"]), "relu", "outputs", id="G8-two-outputs"),
    P(set_attr(RELU, "inputs", ["nope"]), "relu", "inputs", id="G9-dangling"),
    P(_swap(RELU, ADD), "add", "inputs", id="G9-cycle-reordered"),
    P(set_node("relu", inputs=["a"]), "relu", "inputs", id="G9-cycle"),
    P(del_attr(CONV + "/attrs", "kernel"), "conv", "attrs/kernel", id="G10-missing-required"),
    P(set_attr(CONV + "/attrs", "stride", np.array([-1, 1])), "conv", "attrs/stride",
      id="G11-negative-stride"),
    P(set_attr(CONV + "/attrs", "kernel", np.array([0, 3])), "conv", "attrs/kernel",
      id="G11-zero-kernel"),
    P(set_attr(CONV + "/attrs", "stride", np.array([1, 1, 1])), "conv", "attrs/stride",
      id="G11-wrong-length"),
    P(set_attr(CONV + "/attrs", "act_min", math.nan), "conv", "attrs/act_min", id="G11-nan"),
    P(set_attr(CONV + "/attrs", "out_channels", MAX_DIM + 1), "conv", "attrs/out_channels",
      id="G11-absurd-channels"),
    P(set_attr(CONV + "/attrs", "activation", "gelu"), "conv", "attrs/activation",
      id="G11-bad-choice"),
    P(set_attr(POOL + "/attrs", "ceil_mode", 2), "pool", "attrs/ceil_mode",
      id="G11-above-maximum"),
    P(delete(CONV + "/weights/bias"), "conv", "weights/bias", id="G12-missing-weight"),
    P(replace(CONV + "/weights/weight", lambda g, n: g.create_dataset(
        n, data=np.zeros((4, 3, 3, 2), "<f4"))), "conv", "weights/weight", id="G12-wrong-shape"),
    P(replace(FC + "/weights/weight", lambda g, n: g.create_dataset(
        n, data=np.zeros((8, 5), "<f4"))), "fc", "weights/weight", id="G12-transposed"),
    P(edit(lambda f: f[RELU + "/weights"].create_dataset("weight", data=np.zeros(4, "<f4"))),
      "relu", "weights/weight", id="G12-unexpected-weight"),
    P(set_node("conv", attr_groups=2), "conv", "attrs/groups", id="G13-groups"),
    P(set_node("pool", attr_pads=(2, 0, 0, 0)), "pool", "attrs/pads", id="G13-pads-too-large"),
    P(set_node("pool", attr_kernel=(9, 9)), "pool", "attrs/kernel", id="G13-window-too-big"),
    P(set_node("conv", attr_act_min=6.0, attr_act_max=0.0), "conv", "attrs/act_min",
      id="G13-clamp-bounds"),
    P(set_node("flat", attr_shape=(1, 7)), "flat", "attrs/shape", id="G13-reshape-numel"),
    P(set_node("flat", attr_shape=(2, 4, 1, 1)), "flat", "attrs/shape", id="G13-reshape-batch"),
    P(set_node("add", inputs=["x", "c"]), "add", "inputs", id="G13-add-shapes"),
    P(set_node("fc", inputs=["g"]), "fc", "input[0]", id="G13-linear-rank"),
    P(set_attr(RELU, "outputs", ["c"]), "relu", "outputs", id="G14-produced-twice"),
    P(set_attr(RELU, "outputs", ["x"]), "relu", "outputs", id="G14-overwrites-input"),
    P(set_attr("graph", "outputs", ["nope"]), None, "outputs", id="G16-not-produced"),
    P(set_attr("graph", "outputs", ["y", "y"]), None, "outputs", id="G16-twice"),
]


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "model.h5"
    write_model(make_graph(), p)
    return p


@pytest.mark.parametrize("corrupt, node, field", FILE_CASES)
def test_corrupt_file(model_path, monkeypatch, corrupt, node, field):
    if "monkeypatch" in corrupt.__code__.co_varnames[:corrupt.__code__.co_argcount]:
        target = corrupt(model_path, monkeypatch)
    else:
        target = corrupt(model_path)
    if isinstance(target, tuple):           # the case computed where the damage landed
        node, field = target
    path = target if isinstance(target, Path) else model_path
    with pytest.raises(ModelFormatError) as info:
        read_model(path)
    e = info.value
    assert (e.path, e.node, e.field) == (str(path), node, field), str(e)
    assert e.reason and str(path) in str(e)


def test_newer_version_says_which(model_path):
    set_attr("/", "format_version", 7)(model_path)
    with pytest.raises(ModelFormatError, match=rf"needs format version 7; this reader "
                       rf"supports version.* {FORMAT_VERSION}\b"):
        read_model(model_path)


def test_truncated_file_names_the_dataset(model_path):
    name, field = truncate_into_last_dataset(model_path)
    with pytest.raises(ModelFormatError) as info:
        read_model(model_path)
    assert (info.value.node, info.value.field) == (name, field)
    assert name == "fc" and field.startswith("weights/")


def test_absurd_declared_size_never_allocates(model_path):
    import tracemalloc
    replace(CONV + "/weights/weight", lambda g, n: g.create_dataset(
        n, shape=(MAX_DIM, MAX_DIM // 2, 1, 1), dtype="<f4"))(model_path)  # 8 GiB declared
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError) as info:
            read_model(model_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "weights/weight"
    assert peak < 16 << 20


# --- graph rules that a file cannot reach past the reader: in memory -------------------

def _bad(fn):
    g = make_graph()
    fn(g)
    return g


def _concat_mismatch(g):
    g.nodes[:] = [
        Node("pool", "max_pool2d", ["x"], ["p"], {"kernel": (2, 2), "stride": (2, 2),
                                                  "pads": (0, 0, 0, 0), "dilation": (1, 1)}),
        Node("cat", "concat", ["x", "p"], ["y"])]


def _huge_output(g):
    g.nodes[:] = [Node("up", "upsample_nearest", ["x"], ["y"],
                       {"size": (MAX_DIM, MAX_DIM), "scales": (1.0, 1.0)})]


def _wide_output(g):
    g.input = InputSpec("x", (1, 4, 250, 100), "float32", None)
    g.nodes[:] = [Node("flat", "reshape", ["x"], ["y"], {"shape": (1, 100000)})]


def _no_outputs(g):
    g.outputs = []


MEMORY_CASES = [
    P(lambda g: setattr(g.input.preprocess, "scale", -1.0), None, "input.scale", id="G3-scale"),
    P(lambda g: setattr(g.input.preprocess, "std", (1.0, 0.0, 1.0)), None, "input.std",
      id="G3-std"),
    P(lambda g: setattr(g.input.preprocess, "bgr_to_rgb", 1), None, "input.bgr_to_rgb",
      id="G3-bgr-not-bool"),
    P(lambda g: setattr(g, "producer", "x" * (MAX_TEXT_LEN + 1)), None, "producer",
      id="G4-long-producer"),
    P(lambda g: setattr(g.nodes[0], "source", "a\0b"), "conv", "source", id="G4-nul-source"),
    P(lambda g: setattr(g.input, "name", ""), None, "input.name", id="G4-empty-input-name"),
    P(lambda g: g.nodes.clear(), None, "nodes", id="G5-no-nodes"),
    P(lambda g: setattr(g.nodes[0], "op", "lstm"), "conv", "op", id="G7-unknown-op"),
    P(lambda g: g.nodes[1].attrs.update(inplace=1), "relu", "attrs/inplace",
      id="G10-unknown-attribute"),
    P(lambda g: g.nodes[4].attrs.update(ceil_mode=True), "pool", "attrs/ceil_mode",
      id="G11-bool-for-int"),
    P(lambda g: g.nodes[4].attrs.update(kernel=[2, 2]), "pool", "attrs/kernel",
      id="G11-list-for-tuple"),
    P(lambda g: g.nodes[0].weights.update(bias=np.zeros(4)), "conv", "weights/bias",
      id="G12-float64-weight"),
    P(_concat_mismatch, "cat", "input[1]", id="G13-concat-shapes"),
    P(_huge_output, "up", "outputs", id="G15-numel-overflow"),
    P(_wide_output, "flat", "outputs", id="G15-absurd-dim"),
    P(_no_outputs, None, "outputs", id="G16-none"),
]


@pytest.mark.parametrize("fn, node, field", MEMORY_CASES)
def test_writer_refuses_invalid_graph(tmp_path, fn, node, field):
    p = tmp_path / "bad.h5"
    with pytest.raises(ModelFormatError) as info:
        write_model(_bad(fn), p)
    assert (info.value.path, info.value.node, info.value.field) == (None, node, field)
    assert not p.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fn, node, field", [c for c in MEMORY_CASES
                                             if c.id.split("-")[0] in ("G13", "G15")])
def test_reader_refuses_invalid_graph(tmp_path, fn, node, field):
    p = tmp_path / "bad.h5"
    write_unchecked(_bad(fn), p)
    with pytest.raises(ModelFormatError) as info:
        read_model(p)
    assert (info.value.path, info.value.node, info.value.field) == (str(p), node, field)


def test_every_spec_rule_has_a_case():
    text = SPEC.read_text()
    rules = set(re.findall(r"\[([RG]\d+)\]", text))
    assert {f"R{i}" for i in range(1, 31)} <= rules and {f"G{i}" for i in range(1, 17)} <= rules
    from test_format_limits import LIMIT_CASES       # [R30], the totals
    covered = {c.id.split("-")[0] for c in FILE_CASES + MEMORY_CASES + LIMIT_CASES}
    assert rules - covered == set(), "SPEC rules without a corrupt-file test"
    assert covered - rules == set(), "cases naming rules SPEC.md does not have"


def test_reader_marks_every_rule():
    src = Path(reader_module.__file__).read_text()
    assert set(re.findall(r"\[(R\d+)\]", src)) == {f"R{i}" for i in range(1, 31)}


def test_spec_has_a_section_per_op():
    text = SPEC.read_text()
    for name, schema in OPS.items():
        m = re.search(rf"^### `{name}`\n\n(.*?)(?=^### |^## )", text, re.M | re.S)
        assert m, f"SPEC.md has no section for op {name}"
        body = m.group(1)
        assert f"Id {schema.op_id}, **{schema.category.value}**" in body
        for attr in schema.attrs:
            assert f"`{attr}`" in body, f"{name}: attribute {attr} not documented"
    assert not set(re.findall(r"^### `(\w+)`", text, re.M)) - set(OPS)


# --- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("graph", [make_graph(), make_graph(preprocess=False), all_ops_graph()],
                         ids=["small", "no-preprocess", "all-ops"])
def test_round_trip(tmp_path, graph):
    check_graph(graph)
    p = tmp_path / "m.h5"
    write_model(graph, p)
    back = read_model(p)
    assert_same_graph(graph, back)
    assert check_graph(back) == check_graph(graph)
    assert [n.attrs for n in back.nodes] == [n.attrs for n in graph.nodes]


def test_file_layout(model_path):
    with h5py.File(model_path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME.encode()
        assert f.attrs.get_id("format_version").get_type().equal(h5py.h5t.STD_I64LE)
        assert sorted(f) == ["graph", "input", "nodes"]
        assert sorted(f["nodes"]) == [f"{i:06d}" for i in range(8)]
        assert f["input"].attrs["shape"].dtype == np.int64
        assert f["input"].attrs["pixel_mean"].dtype == np.float64
        conv = f[CONV]
        assert conv.attrs["op"] == b"conv2d"
        assert conv["attrs"].attrs["kernel"].dtype == np.int64
        assert conv["attrs"].attrs["act_max"].dtype == np.float64
        w = conv["weights/weight"]
        assert w.shape == (4, 3, 3, 3) and w.dtype == np.dtype("<f4")
        assert w.chunks is None and w.compression is None
        for obj in (f, f["input"], f["graph"], conv, conv["attrs"]):
            for a in obj.attrs:
                t = obj.attrs.get_id(a).get_type()
                assert t.get_class() != h5py.h5t.VLEN
                assert t.get_class() != h5py.h5t.STRING or not t.is_variable_str(), a
        assert "source" not in f[RELU].attrs


def test_round_trip_special_weights(tmp_path):
    g = make_graph()
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38, 1.0],
                       np.float32)
    payload = np.frombuffer(np.array([0x7FC00001, 0xFFBADBAD], np.uint32).tobytes(), np.float32)
    g.nodes[-1].weights["bias"] = np.concatenate([special[:3], payload])
    g.nodes[0].weights["bias"] = special[4:]
    write_model(g, tmp_path / "m.h5")
    assert_same_graph(g, read_model(tmp_path / "m.h5"))


_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                min_size=1, max_size=20)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_NAME, min_size=10, max_size=10, unique=True),
       producer=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                        max_size=30),
       bias=hnp.arrays(np.float32, 5, elements=st.floats(width=32, allow_nan=True)),
       act=st.tuples(st.floats(-1e6, 0, width=32), st.floats(0, 1e6, width=32)),
       scale=st.floats(1e-6, 1e6), mean=st.tuples(*[st.floats(-1e3, 1e3)] * 3),
       bgr=st.booleans())
def test_round_trip_property(tmp_path, names, producer, bias, act, scale, mean, bgr):
    g = make_graph()
    tensors = dict(zip(["x", "c", "r", "a", "k", "p", "g", "f", "y"], names))
    g.input.name = tensors["x"]
    for n in g.nodes:
        n.inputs = [tensors[t] for t in n.inputs]
        n.outputs = [tensors[t] for t in n.outputs]
        n.source = names[9]
    g.nodes[0].name = names[9] + "\u2603"     # never one of the other node names
    g.outputs = [tensors["y"]]
    g.producer = producer
    g.nodes[0].attrs.update(act_min=float(act[0]), act_max=float(act[1]))
    g.nodes[-1].weights["bias"] = bias
    g.input.preprocess = Preprocess(scale, tuple(mean), (1.0, 2.0, 3.0), bgr)
    p = tmp_path / "prop.h5"
    write_model(g, p)
    assert_same_graph(g, read_model(p))


# --- writer ---------------------------------------------------------------------------

def test_writer_replaces_atomically(tmp_path, monkeypatch):
    p = tmp_path / "m.h5"
    write_model(make_graph(), p)
    before = p.read_bytes()
    bad = make_graph()
    bad.nodes[0].attrs["stride"] = (0, 1)
    with pytest.raises(ModelFormatError):
        write_model(bad, p)
    assert p.read_bytes() == before

    from framedelta.formats import writer
    def boom(f, graph):
        raise OSError("disk full")
    monkeypatch.setattr(writer, "_write", boom)
    with pytest.raises(OSError, match="disk full"):
        write_model(make_graph(), p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.h5"]


def test_writer_overwrites_and_accepts_str_path(tmp_path):
    p = tmp_path / "m.h5"
    write_model(make_graph(), str(p))
    write_model(all_ops_graph(), str(p))
    assert [n.op for n in read_model(str(p)).nodes] == [n.op for n in all_ops_graph().nodes]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.h5"]


# --- damage at random: only ever ModelFormatError ---------------------------------------

@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    p = tmp_path_factory.mktemp("bytes") / "m.h5"
    write_model(make_graph(), p)
    return p.read_bytes()


def _read_bytes(tmp_path, data):
    p = tmp_path / "damaged.h5"
    p.write_bytes(data)
    try:
        return read_model(p)
    except ModelFormatError as e:
        assert e.path == str(p)
        return e


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True), fix_eof=st.booleans())
def test_truncation_is_always_a_model_format_error(tmp_path, model_bytes, fraction, fix_eof):
    length = int(fraction * len(model_bytes))
    result = _read_bytes(tmp_path, cut(model_bytes, length, fix_eof))
    assert isinstance(result, ModelFormatError)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_damaged_bytes_never_raise_anything_else(tmp_path, model_bytes, edits):
    data = bytearray(model_bytes)
    for where, value in edits:
        data[int(where * len(data))] = value
    result = _read_bytes(tmp_path, bytes(data))
    if isinstance(result, Graph):       # damage in weight values or unused bytes
        check_graph(result)
