"""Graph passes on the framedelta graph the rules produced, before it is checked.

Each pass rewrites ``graph.nodes`` in place and returns how many rewrites it made. A
fusion happens only where it cannot change what anyone observes: the intermediate
tensor it removes has exactly one user (or only foldable users) and is not a graph
output. Weight arithmetic is done in float64 and stored as float32.
"""

import math
from collections import Counter, defaultdict

import numpy as np

from framedelta.formats.ops import OPS


def _users(graph):
    """{tensor name: [nodes reading it]}."""
    users = defaultdict(list)
    for node in graph.nodes:
        for t in node.inputs:
            users[t].append(node)
    return users


def _producers(graph):
    return {t: node for node in graph.nodes for t in node.outputs}


def _rewire(graph, old, new):
    for node in graph.nodes:
        node.inputs = [new if t == old else t for t in node.inputs]


def _sole_conv_input(graph, node, users, producers):
    """The conv2d (with no fused activation yet) whose output only ``node`` reads."""
    conv = producers.get(node.inputs[0])
    if conv is None or conv.op != "conv2d":
        return None
    if conv.attrs.get("activation", "none") != "none":
        return None
    out = conv.outputs[0]
    if out in graph.outputs or users[out] != [node]:
        return None
    return conv


def drop_identities(graph):
    """identity (clone, eval dropout, a no-op view) disappears. When its output is a
    graph output, the producer of its input takes that output's name instead, provided
    nothing else reads the input and it is not itself returned; otherwise it stays."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "identity":
            continue
        src, out = node.inputs[0], node.outputs[0]
        if out not in graph.outputs:
            _rewire(graph, out, src)
        else:
            producer = _producers(graph).get(src)
            if (producer is None or src in graph.outputs
                    or _users(graph)[src] != [node]):
                continue
            producer.outputs = [out if t == src else t for t in producer.outputs]
        graph.nodes.remove(node)
        n += 1
    return n


def _extent_ok(pads, kernel, dilation):
    (pt, pl, pb, pr), (kh, kw), (dh, dw) = pads, kernel, dilation
    return max(pt, pb) < dh * (kh - 1) + 1 and max(pl, pr) < dw * (kw - 1) + 1


def fold_pads(graph):
    """A zero `pad` whose readers are all conv2d adds its (top, left, bottom, right) to
    their pads: F.pad(x, (0, 1, 0, 1)) + conv gives asymmetric pads, for free. A pad
    with another value or reader, returned by the graph, or too wide for a reader's
    kernel extent stays a `pad` node."""
    users = _users(graph)
    n = 0
    for pad in [node for node in graph.nodes if node.op == "pad"]:
        out = pad.outputs[0]
        readers = users[out]
        value = pad.attrs.get("value", 0.0)
        if value != 0.0 or math.copysign(1.0, value) < 0:
            continue      # a conv pads with +0.0
        if out in graph.outputs or not readers or any(r.op != "conv2d" for r in readers):
            continue
        new = {}
        for conv in readers:
            pads = tuple(p + q for p, q in zip(conv.attrs["pads"], pad.attrs["pads"]))
            if not _extent_ok(pads, conv.attrs["kernel"], conv.attrs["dilation"]):
                break
            new[conv.name] = pads
        else:
            for conv in readers:
                conv.attrs["pads"] = new[conv.name]
                conv.inputs = [pad.inputs[0]]
            graph.nodes.remove(pad)
            n += 1
    return n


def fold_batch_norm(graph):
    """conv2d -> batch_norm, the conv output read by the BN only: scale the conv's
    output channels. Elsewhere the batch_norm stays as a per-channel affine node."""
    users, producers = _users(graph), _producers(graph)
    n = 0
    for bn in [node for node in graph.nodes if node.op == "batch_norm"]:
        conv = _sole_conv_input(graph, bn, users, producers)
        if conv is None:
            continue
        scale = bn.weights["scale"].astype(np.float64)
        shift = bn.weights["shift"].astype(np.float64)
        w = conv.weights["weight"].astype(np.float64) * scale[:, None, None, None]
        b = conv.weights["bias"].astype(np.float64) * scale + shift
        conv.weights = {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}
        conv.outputs = list(bn.outputs)
        graph.nodes.remove(bn)
        producers[conv.outputs[0]] = conv
        n += 1
    return n


def fuse_activations(graph):
    """conv2d -> relu / clamp, the conv output read by the activation only: the conv's
    ``activation`` attribute (applied after the bias in the same kernel)."""
    users, producers = _users(graph), _producers(graph)
    n = 0
    for act in [node for node in graph.nodes if node.op in ("relu", "clamp")]:
        conv = _sole_conv_input(graph, act, users, producers)
        if conv is None:
            continue
        if act.op == "relu":
            conv.attrs["activation"] = "relu"
        else:
            conv.attrs.update(activation="clamp", act_min=act.attrs["min"],
                              act_max=act.attrs["max"])
        conv.outputs = list(act.outputs)
        graph.nodes.remove(act)
        producers[conv.outputs[0]] = conv
        n += 1
    return n


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

# --- activations and softmax ------------------------------------------------

# --- windows: transposed conv, average pools --------------------------------

# --- rearranging and normalising: pad, pixel shuffle, slice, norms ----------

# --- layout-breaking tails, computed whole: permute, expand, matmul ---------


def drop_dead(graph):
    """Nodes none of whose outputs is read or returned."""
    reads = Counter(t for node in graph.nodes for t in node.inputs)
    n = 0
    for node in reversed(list(graph.nodes)):
        if not any(reads[t] or t in graph.outputs for t in node.outputs):
            graph.nodes.remove(node)
            for t in node.inputs:
                reads[t] -= 1
            n += 1
    return n


# Order matters: spellings are fused into their ops before BN folding and activation
# fusion look at what follows each conv.
PASSES = (
    drop_identities,
    # activations and softmax
    # rearranging and normalising: pad, pixel shuffle, slice, norms
    fold_pads,
    fold_batch_norm,
    fuse_activations,
    drop_dead,
)


def run_passes(graph):
    """Run every pass in order; returns {pass name: rewrites}."""
    return {p.__name__: p(graph) for p in PASSES}


# Pseudo-ops: what a rule may emit that is not a format op, for a pass to fold into a
# real one; the message says why one that is left over cannot be converted.
PSEUDO_OPS = {
    # activations and softmax
    # rearranging and normalising: pad, pixel shuffle, slice, norms
}


def leftover_pseudo_nodes(graph):
    """Nodes whose op is not a format op (a pseudo-op no pass could fold)."""
    return [node for node in graph.nodes if node.op not in OPS]
