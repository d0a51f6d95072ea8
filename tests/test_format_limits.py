"""The model file beyond one rule per corrupt file: userblocks, the memory and MAC
limits a reader checks before it allocates ([G17]), loading time for big graphs."""

import struct
from pathlib import Path

import h5py
import pytest

from framedelta.formats.layout import LIBVER
from framedelta.formats.reader import read_model
from framedelta.formats.writer import _write
from test_format import assert_same_graph, lookup3, make_graph
from framedelta.errors import ModelFormatError

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
