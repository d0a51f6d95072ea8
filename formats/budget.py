"""What a graph costs before anything is allocated: activation bytes, weight bytes, MACs.

Each tensor is capped by MAX_NUMEL ([G15]), but a few kilobytes of file can still chain
thousands of tensors of that size, or demand 1e12 multiply-accumulates a frame. The
reader checks the totals against the limits below ([R30] in SPEC.md) after the graph
rules and before reading a weight; a caller who knows the model is that big raises them
(``framedelta.load(path, max_activation_bytes=..., max_macs=...)``).
"""

import math
from dataclasses import dataclass

from framedelta.errors import ModelFormatError

from .ops import OPS, resolve_attrs

# 4 GiB: a dense pass holds this much, and each stream as much again. The zoo's U-Net
# at 360x480 needs 350 MiB, at 1280x720 1.9 GiB (1080p needs the limit raised).
MAX_ACTIVATION_BYTES = 1 << 32
# 2^38 = 2.7e11 multiply-accumulates a frame: minutes a frame on a few cores. The U-Net
# at 360x480 does 2.8e10, at 1280x720 1.5e11.
MAX_MACS = 1 << 38


@dataclass(frozen=True)
class Footprint:
    """What running a graph costs (float32 everywhere)."""
    activation_bytes: int    # 4 x (input + every node output) elements: one dense pass
    weight_bytes: int        # 4 x every weight element, as stored in the file
    macs: int                # multiply-accumulates of one dense pass
    largest: tuple           # (node name, bytes) of the biggest tensor a node makes


def footprint(graph, shapes):
    """The :class:`Footprint` of ``graph`` whose tensors have ``shapes`` (check_graph's)."""
    act = 4 * math.prod(graph.input.shape)
    weights = macs = 0
    largest = (None, 0)
    for node in graph.nodes:
        schema = OPS[node.op]
        out_shapes = [shapes[t] for t in node.outputs]
        n = 4 * sum(math.prod(s) for s in out_shapes)
        act += n
        if n > largest[1]:
            largest = (node.name, n)
        weights += 4 * sum(math.prod(w.shape) for w in node.weights.values())
        macs += schema.count_macs(resolve_attrs(schema, node.attrs),
                                  [shapes[t] for t in node.inputs], out_shapes)
    return Footprint(act, weights, macs, largest)


def human_bytes(n):
    """'4.0 GiB', '350.0 MiB', '512 B'."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _limit(value, default, name):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def check_footprint(graph, shapes, path, max_activation_bytes=None, max_macs=None):
    """The graph's :class:`Footprint`; ModelFormatError naming the file and the figure
    when it is over a limit ([R30]). ``None``: the default limits."""
    max_act = _limit(max_activation_bytes, MAX_ACTIVATION_BYTES, "max_activation_bytes")
    max_macs = _limit(max_macs, MAX_MACS, "max_macs")
    fp = footprint(graph, shapes)
    if fp.activation_bytes > max_act:
        node, n = fp.largest
        raise ModelFormatError(
            path, None, "activation_bytes",
            f"the graph needs {human_bytes(fp.activation_bytes)} ({fp.activation_bytes} "
            f"bytes) of activations for a dense pass, and as much again per stream (node "
            f"{node!r} alone makes {human_bytes(n)}); the limit is {human_bytes(max_act)}: "
            "pass max_activation_bytes= to load a model known to be this big")
    if fp.macs > max_macs:
        raise ModelFormatError(
            path, None, "macs",
            f"the graph needs {fp.macs:.3g} multiply-accumulates a pass; the limit is "
            f"{max_macs:.3g}: pass max_macs= to load a model known to be this big")
    return fp
