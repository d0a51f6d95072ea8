"""The model file beyond one rule per corrupt file: userblocks, the memory and MAC
limits a reader checks before it allocates ([G17]), loading time for big graphs."""

import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

import framedelta as fd
from framedelta.errors import ModelFormatError
from framedelta.formats.budget import (MAX_ACTIVATION_BYTES, MAX_MACS, check_footprint,
                                       footprint)
from framedelta.formats.graph import Graph, InputSpec, Node, check_graph
from framedelta.formats.layout import LIBVER
from framedelta.formats.reader import read_model
from framedelta.formats.writer import _write, write_model
from test_format import assert_same_graph, lookup3, make_graph

USERBLOCK = 1024


def _write_with_userblock(graph, path, head=b"#!framedelta model\n"):
    """A valid HDF5 file whose first bytes belong to the user (a shebang, a licence,
    a signature): libhdf5 counts every address from the start of the file."""
    with h5py.File(path, "w", libver=LIBVER, userblock_size=USERBLOCK) as f:
        _write(f, graph)
    with open(path, "r+b") as fh:
        fh.write(head)


def test_userblock_file_reads_bit_for_bit(tmp_path):
    g = make_graph()
    p = tmp_path / "ub.h5"
    _write_with_userblock(g, p)
    assert p.read_bytes().startswith(b"#!framedelta model\n")
    with h5py.File(p, "r") as f:
        assert f.userblock_size == USERBLOCK
    assert_same_graph(g, read_model(p))


def test_userblock_file_cut_short_still_names_the_dataset(tmp_path):
    p = tmp_path / "ub.h5"
    _write_with_userblock(make_graph(), p)
    with h5py.File(p, "r") as f:
        spots = [(d.id.get_offset(), f[f"nodes/{i:06d}"].attrs["name"].decode(), f"weights/{w}")
                 for i in range(int(f["graph"].attrs["node_count"]))
                 for w, d in f[f"nodes/{i:06d}/weights"].items()]
    offset, name, field = max(spots)      # offsets count from the start of the file
    # cut inside that dataset; the superblock (version 2, after the userblock) states
    # the end of file (counted from the start of the file, as libhdf5 writes it), so
    # libhdf5 opens the shorter file
    b = bytearray(Path(p).read_bytes()[:offset + 6])
    assert b[USERBLOCK + 8] == 2
    b[USERBLOCK + 28:USERBLOCK + 36] = struct.pack("<Q", len(b))
    sb = bytes(b[USERBLOCK:USERBLOCK + 44])
    b[USERBLOCK + 44:USERBLOCK + 48] = struct.pack("<I", lookup3(sb))
    Path(p).write_bytes(bytes(b))
    with pytest.raises(ModelFormatError) as info:
        read_model(p)
    assert (info.value.node, info.value.field) == (name, field)
    assert str(p) in str(info.value)


# --- [R30]: the totals a file may demand ------------------------------------------------

def _pad_bomb(n_relus=4):
    """A few kilobytes that once made fd.load reserve 8 GiB per tensor, 40 GiB in all:
    a pad of a 2x2 input to 65534 x 32767 (each tensor within MAX_NUMEL), then relus."""
    nodes = [Node("pad", "pad", ["x"], ["p0"], {"pads": (0, 0, 65532, 32765)})]
    nodes += [Node(f"relu{i}", "relu", [f"p{i}"], [f"p{i + 1}"]) for i in range(n_relus)]
    return Graph(InputSpec("x", (1, 1, 2, 2)), nodes, [f"p{n_relus}"], "hostile")


def _mac_bomb():
    """1 MB of weights, 1e12 multiply-accumulates a pass: a 16-channel 31x31 conv on
    2048x2048 (activations 512 MiB, within their limit)."""
    w = np.zeros((16, 16, 31, 31), np.float32)
    return Graph(InputSpec("x", (1, 16, 2048, 2048)), [
        Node("conv", "conv2d", ["x"], ["y"], {"out_channels": 16, "kernel": (31, 31),
                                              "stride": (1, 1), "pads": (15, 15, 15, 15),
                                              "dilation": (1, 1)},
             {"weight": w, "bias": np.zeros(16, np.float32)})], ["y"], "hostile")


def _write_bomb(make):
    def corrupt(path):
        p = Path(path).with_name(f"{make.__name__}.h5")
        write_model(make(), p)          # valid: the limits are the reader's
        return p
    return corrupt


LIMIT_CASES = [
    pytest.param(_write_bomb(_pad_bomb), None, "activation_bytes", id="R30-activations"),
    pytest.param(_write_bomb(_mac_bomb), None, "macs", id="R30-macs"),
]


@pytest.mark.parametrize("corrupt, node, field", LIMIT_CASES)
def test_limit_case(tmp_path, corrupt, node, field):
    p = corrupt(tmp_path / "m.h5")
    with pytest.raises(ModelFormatError) as info:
        read_model(p)
    assert (info.value.path, info.value.node, info.value.field) == (str(p), node, field)


def test_pad_bomb_is_refused_naming_the_figure_before_allocating(tmp_path):
    import tracemalloc
    p = _write_bomb(_pad_bomb)(tmp_path / "m.h5")
    assert p.stat().st_size < 16 << 10
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError) as info:
            fd.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert str(p) in msg and "40.0 GiB" in msg and "limit is 4.0 GiB" in msg
    assert "'pad'" in msg and "max_activation_bytes=" in msg
    assert peak < 16 << 20
    # and per stream as much again: the limit is the model's and every stream's
    fp = footprint(_pad_bomb(), check_graph(_pad_bomb()))
    assert fp.activation_bytes == 4 * (4 + 5 * 65534 * 32767)


def test_mac_bomb_is_refused_naming_the_figure(tmp_path):
    g = _mac_bomb()
    fp = footprint(g, check_graph(g))
    assert fp.macs > MAX_MACS and fp.activation_bytes < MAX_ACTIVATION_BYTES
    with pytest.raises(ModelFormatError) as info:
        check_footprint(g, check_graph(g), "m.h5")
    assert info.value.field == "macs" and "1.03e+12" in str(info.value)
    assert "max_macs=" in str(info.value)


def test_limits_are_overridable_for_a_knowingly_big_model(tmp_path):
    g = make_graph()
    p = tmp_path / "m.h5"
    write_model(g, p)
    fp = footprint(g, check_graph(g))
    with pytest.raises(ModelFormatError, match="activation"):
        fd.load(p, max_activation_bytes=fp.activation_bytes - 1)
    with pytest.raises(ModelFormatError, match="multiply-accumulates"):
        fd.load(p, max_macs=fp.macs - 1)
    m = fd.load(p, max_activation_bytes=fp.activation_bytes, max_macs=fp.macs)
    assert m.footprint == fp
    with pytest.raises(ValueError, match="positive integer"):
        fd.load(p, max_macs=0)


def test_memory_bytes_counts_buffers_weights_and_packs(tmp_path):
    g = make_graph()
    p = tmp_path / "m.h5"
    write_model(g, p)
    m = fd.load(p, n_threads=1)
    fp = m.footprint
    buffers = sum(out.nbytes for _, _, out in m._steps)
    assert buffers == fp.activation_bytes - 4 * 3 * 8 * 8     # all but the input
    # weights as read, plus their packed forms (at least the conv's and the linear's)
    assert buffers + fp.weight_bytes < m.memory_bytes < buffers + 4 * fp.weight_bytes + 8192
    assert m.crop_cache_bytes == 0


def test_info_reports_memory(tmp_path, capsys):
    from framedelta.cli import main
    p = tmp_path / "m.h5"
    write_model(make_graph(), p)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "memory: activations" in out and "per stream" in out
    assert "model.memory_bytes" in out


# --- loading time grows linearly with the graph ------------------------------------------

def _fan_in(k, fan):
    """k concats of ``fan`` inputs each (the same tensor): a legal graph whose file
    is mostly input names (80 x 65536 took 17 s to load)."""
    nodes = [Node("r", "relu", ["x"], ["r"])]
    nodes += [Node(f"c{j}", "concat", ["r"] * fan, [f"c{j}"], {"axis": 1}) for j in range(k)]
    return Graph(InputSpec("x", (1, 1, 1, 1)), nodes, [f"c{j}" for j in range(k)])


def _chain(n):
    nodes = [Node(f"r{i}", "relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    return Graph(InputSpec("t0", (1, 1, 4, 4)), nodes, [f"t{n}"])


@pytest.mark.parametrize("make, small, big", [(_fan_in, (1, 4096), (8, 4096)),
                                             (_fan_in, (2, 2048), (2, 16384)),
                                             (_chain, (250,), (2000,))],
                         ids=["more-concats", "wider-concats", "longer-chain"])
def test_loading_time_is_near_linear(tmp_path, make, small, big):
    """8 times the graph must load in well under 64 times (quadratic) the time: at most
    16 times, best of three runs each (the machine is shared)."""
    import time

    def best(args):
        p = tmp_path / f"{make.__name__}{args}.h5"
        write_model(make(*args), p)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fd.load(p, n_threads=1)
            times.append(time.perf_counter() - t0)
        return min(times)
    t_small, t_big = best(small), best(big)
    assert t_big < 16 * t_small, f"{t_small:.3f} s -> {t_big:.3f} s for 8x the graph"
