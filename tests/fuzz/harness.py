"""The model loader's fuzz harness: the property, a seed corpus, two mutators.

The property (:func:`check_one`): for any bytes, ``read_model`` either returns a graph
or raises ModelFormatError naming the file; a graph it returns prepares as a Model,
and when small enough runs, with ``stream.step(x)`` equal to ``run(x)`` bit for bit.
Anything else (another exception, a crash, a hang) is an escape.

Mutators: :func:`mutate_bytes` edits the file as bytes (bit flips, interesting values,
cut, spliced ranges: it finds breaks in libhdf5's parsing and our checks of it);
:func:`mutate_graph` edits the model as a model (an attribute of a node set to a value
of another kind or out of range, inputs rewired, an op swapped, a node or weight
dropped, a weight re-declared with another shape, dtype or layout, node order
swapped): it keeps the HDF5 valid so that the graph rules and the engine get
exercised. ``fuzz_loader.py`` runs them under atheris (coverage-guided); without it
the tests run them from a seeded random generator.
"""

import io
import os
import random
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from framedelta.engine.model import Model
from framedelta.errors import ModelFormatError
from framedelta.formats import OPS, read_model
from framedelta.formats.layout import LIBVER
from framedelta.formats.writer import _write

TESTS = Path(__file__).resolve().parents[1]
# a model this small also runs (dense and one stream step) on every accepted input
RUN_BYTES = 16 << 20
RUN_MACS = 20_000_000
INTERESTING = [0, 1, -1, 2, 3, 7, 255, 256, 1023, 1024, 1025, 65535, 65536, 65537,
               2**31 - 1, 2**31, 2**32, -2**31, 2**63 - 1, -2**63]
FLOATS = [0.0, -0.0, 1e-45, 1.0, -1.0, 0.5, 65536.0, 1e30, float("inf"), float("-inf"),
          float("nan")]


def seed_graphs():
    """Small valid graphs covering most ops: the format tests' two and the stream
    tests' model (uint8 preprocessing, strides, pool, bilinear, concat)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from test_format import all_ops_graph, make_graph
    from test_stream import _small_model
    return {"make_graph": make_graph(), "no_preprocess": make_graph(preprocess=False),
            "all_ops": all_ops_graph(), "small_model": _small_model(n_threads=1).graph}


def to_bytes(graph):
    """The model file of ``graph`` as bytes (no checks: seeds are valid, mutants not)."""
    bio = io.BytesIO()
    with h5py.File(bio, "w", libver=LIBVER) as f:
        _write(f, graph)
    return bio.getvalue()


def write_seed_corpus(folder):
    """One file per seed graph in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, g in seed_graphs().items():
        p = folder / f"seed_{name}.h5"
        p.write_bytes(to_bytes(g))
        paths.append(p)
    return paths


def _scratch():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix="framedelta-fuzz-", dir=base)


_SCRATCH = None


def check_one(data):
    """The property; returns "refused", "loaded" or "ran"; raises on an escape."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = _scratch()
    path = os.path.join(_SCRATCH, "m.h5")
    with open(path, "wb") as fh:
        fh.write(data)
    try:
        graph = read_model(path)
    except ModelFormatError as e:
        if e.path != path:
            raise AssertionError(f"ModelFormatError names {e.path!r}, not the file") from e
        return "refused"
    model = Model(graph, path, n_threads=1)
    fp = model.footprint
    if fp.activation_bytes > RUN_BYTES or fp.macs > RUN_MACS:
        return "loaded"
    rng = np.random.default_rng(len(data))
    x = rng.standard_normal(model.input_shape).astype(np.float32)
    y = model.run(x)
    s = model.stream(threshold=0)
    z = s.step(x)
    for a, b in zip(y if isinstance(y, tuple) else (y,), z if isinstance(z, tuple) else (z,)):
        same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
        if not same.all():
            raise AssertionError("the stream's first step differs from run()")
    return "ran"


# --- mutators ------------------------------------------------------------------------

def mutate_bytes(data, rng, max_size=1 << 20):
    """One to four byte-level edits."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            continue
        i = rng.randrange(len(b))
        kind = rng.randrange(6)
        if kind == 0:                                 # flip a bit
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:                               # an interesting integer
            n = rng.choice((1, 2, 4, 8))
            v = rng.choice(INTERESTING) % (1 << (8 * n))
            b[i:i + n] = v.to_bytes(n, "little")
        elif kind == 2:                               # cut
            del b[i:]
        elif kind == 3:                               # drop a range
            del b[i:i + rng.randint(1, 64)]
        elif kind == 4:                               # copy a range elsewhere
            j, n = rng.randrange(len(b)), rng.randint(1, 64)
            b[i:i + n] = b[j:j + n]
        else:                                         # random bytes
            n = rng.randint(1, 16)
            b[i:i + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(b[:max_size])


def _random_value(rng, names):
    kind = rng.randrange(7)
    if kind == 0:
        return np.int64(rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randint(-5, 40))
    if kind == 1:
        return np.asarray([rng.choice(INTERESTING[:12]) for _ in range(rng.randint(1, 5))],
                          np.int64)
    if kind == 2:
        return np.float64(rng.choice(FLOATS))
    if kind == 3:
        return np.asarray([rng.choice(FLOATS) for _ in range(rng.randint(1, 4))])
    if kind == 4:
        s = rng.choice(names + ["", "x" * 300, "\u00e9", "none", "relu", "clamp"])
        return np.bytes_(s.encode("utf-8") or b"\0")
    if kind == 5:
        return np.asarray([rng.choice(names).encode() or b"?" for _ in range(rng.randint(1, 4))])
    return np.float32(rng.choice(FLOATS))


def _nodes(f):
    return [f["nodes"][k] for k in sorted(f["nodes"].keys())]


def _edit(f, rng):
    nodes = _nodes(f)
    node = rng.choice(nodes)
    names = [n.attrs["name"].decode() for n in nodes if "name" in n.attrs]
    tensors = [f["input"].attrs["name"].decode()] + [
        o.decode() for n in nodes if "outputs" in n.attrs for o in np.atleast_1d(n.attrs["outputs"])]
    kind = rng.randrange(10)
    if kind == 0:                                     # an op attribute
        schema = OPS.get(node.attrs["op"].decode())
        keys = list(schema.attrs) if schema and schema.attrs else ["axis"]
        node["attrs"].attrs[rng.choice(keys)] = _random_value(rng, names)
    elif kind == 1:                                   # drop an op attribute
        keys = list(node["attrs"].attrs)
        if keys:
            del node["attrs"].attrs[rng.choice(keys)]
    elif kind == 2:                                   # rewire the inputs
        k = rng.randint(1, 4)
        node.attrs["inputs"] = np.asarray([rng.choice(tensors + ["nowhere"]).encode()
                                           for _ in range(k)])
    elif kind == 3:                                   # another op
        node.attrs["op"] = np.bytes_(rng.choice(list(OPS)).encode())
    elif kind == 4:                                   # a weight re-declared
        ws = node["weights"]
        keys = list(ws)
        name = rng.choice(keys) if keys else "weight"
        if name in ws:
            del ws[name]
        shape = tuple(rng.choice((1, 2, 3, 4, 8, 16)) for _ in range(rng.randint(1, 4)))
        opts = {}
        if rng.random() < 0.2:
            opts = {"chunks": True, "compression": "gzip"}
        dtype = rng.choice(("<f4", "<f4", "<f4", ">f4", "<f8", "<i4"))
        ws.create_dataset(name, data=np.ones(shape, dtype), **opts)
    elif kind == 5:                                   # drop a weight or a node
        ws = node["weights"]
        if list(ws) and rng.random() < 0.5:
            del ws[rng.choice(list(ws))]
        else:
            del f["nodes"][node.name.rsplit("/", 1)[1]]
    elif kind == 6:                                   # swap two nodes' places
        a, b = rng.choice(nodes), rng.choice(nodes)
        if a != b:
            ka, kb = a.name.rsplit("/", 1)[1], b.name.rsplit("/", 1)[1]
            f["nodes"].move(ka, "tmp")
            f["nodes"].move(kb, ka)
            f["nodes"].move("tmp", kb)
    elif kind == 7:                                   # the input
        f["input"].attrs[rng.choice(["shape", "name", "dtype", "pixel_scale", "pixel_std"])] \
            = _random_value(rng, names)
    elif kind == 8:                                   # the graph's outputs or count
        if rng.random() < 0.5:
            f["graph"].attrs["outputs"] = np.asarray([rng.choice(tensors).encode()
                                                      for _ in range(rng.randint(1, 3))])
        else:
            f["graph"].attrs["node_count"] = np.int64(rng.choice(INTERESTING[:10]))
    else:                                             # a node attribute of the format
        node.attrs[rng.choice(["name", "outputs", "source"])] = _random_value(rng, names)


def mutate_graph(data, rng):
    """One to three graph-level edits of a model file that h5py opens; the bytes
    mutated otherwise (or when an edit itself fails)."""
    bio = io.BytesIO(data)
    try:
        with h5py.File(bio, "r+") as f:
            for _ in range(rng.randint(1, 3)):
                _edit(f, rng)
    except Exception:             # noqa: BLE001 - not a model h5py can edit: bytes then
        return mutate_bytes(data, rng)
    return bio.getvalue()


def mutate(data, rng, max_size=1 << 20):
    """Either mutator, the structured one half of the time."""
    if rng.random() < 0.5:
        return mutate_graph(data, rng)[:max_size]
    return mutate_bytes(data, rng, max_size)


def run_random(seconds=None, iterations=None, seed=0, corpus=None):
    """Fuzz without atheris: mutants of the seeds (and of earlier mutants that loaded)
    from a seeded generator; returns {"refused": n, "loaded": n, "ran": n}. An escape
    raises, with the input saved in ``FRAMEDELTA_FUZZ_CRASHES`` (or a temp folder)."""
    import time
    rng = random.Random(seed)
    pool = [to_bytes(g) for g in seed_graphs().values()] if corpus is None else list(corpus)
    counts = {"refused": 0, "loaded": 0, "ran": 0}
    t_end = None if seconds is None else time.monotonic() + seconds
    i = 0
    while (iterations is None or i < iterations) and (t_end is None or time.monotonic() < t_end):
        data = mutate(rng.choice(pool), rng)
        try:
            got = check_one(data)
        except Exception as e:
            folder = Path(os.environ.get("FRAMEDELTA_FUZZ_CRASHES") or _scratch())
            folder.mkdir(parents=True, exist_ok=True)
            crash = folder / f"crash-{seed}-{i}.h5"
            crash.write_bytes(data)
            raise AssertionError(f"escape on input {i} (saved as {crash}): "
                                 f"{type(e).__name__}: {e}") from e
        counts[got] += 1
        if got != "refused" and len(pool) < 200:
            pool.append(data)
        i += 1
    return counts
