"""Graph passes on the framedelta graph the rules produced, before it is checked.

Each pass rewrites ``graph.nodes`` in place and returns how many rewrites it made. A
fusion happens only where it cannot change what anyone observes: the intermediate
tensor it removes has exactly one user (or only foldable users) and is not a graph
output. Weight arithmetic is done in float64 and stored as float32.
"""

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
    """A zero 'pad' pseudo-node whose readers are all conv2d adds its (top, left,
    bottom, right) to their pads: F.pad(x, (0, 1, 0, 1)) + conv gives asymmetric pads.
    Pads that the format cannot hold (not smaller than the kernel extent) stay, and the
    converter then reports the pad as unsupported."""
    users = _users(graph)
    n = 0
    for pad in [node for node in graph.nodes if node.op == "pad"]:
        out = pad.outputs[0]
        readers = users[out]
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

def _shapes(graph):
    """{tensor: torch-layout shape} as the schemas infer them; None where a node is a
    pseudo-op or breaks its schema (the check after the passes reports it)."""
    from framedelta.formats.ops import SchemaError, resolve_attrs
    shapes = {graph.input.name: tuple(graph.input.shape)}
    for node in graph.nodes:
        ins = [shapes.get(t) for t in node.inputs]
        out = None
        if node.op in OPS and all(s is not None for s in ins):
            try:
                out = tuple(OPS[node.op].infer(resolve_attrs(OPS[node.op], node.attrs), ins)[0])
            except (SchemaError, KeyError, TypeError, ValueError):
                out = None
        for t in node.outputs:
            shapes[t] = out
    return shapes


def _sole_reader(graph, users, tensor, op):
    """The node reading ``tensor`` when it is the only reader, has op ``op`` and the
    tensor is not a graph output; else None."""
    readers = users.get(tensor, [])
    if tensor in graph.outputs or len(readers) != 1 or readers[0].op != op:
        return None
    return readers[0]


def _pixel_shuffle_chain(x, view, dims, out):
    """(op, attrs) when reshape(x -> view) -> permute(dims) -> reshape(-> out) is torch's
    F.pixel_shuffle or F.pixel_unshuffle of the image x, else None."""
    if x is None or len(x) != 4 or len(view) != 6 or x[0] != 1:
        return None
    _, c, h, w = x
    if dims == (0, 1, 4, 2, 5, 3):
        r = view[2]
        if view == (1, c // (r * r), r, r, h, w) and c % (r * r) == 0 \
                and out == (1, c // (r * r), h * r, w * r):
            return "pixel_shuffle", {"upscale": r}
    if dims == (0, 1, 3, 5, 2, 4):
        r = view[3]
        if view == (1, c, h // r, r, w // r, r) and h % r == 0 and w % r == 0 \
                and out == (1, c * r * r, h // r, w // r):
            return "pixel_unshuffle", {"downscale": r}
    return None


def fuse_pixel_shuffle(graph):
    """reshape -> permute -> reshape, each intermediate read only by the next (the clone
    between them is gone with drop_identities), as torch exports F.pixel_shuffle(x, r)
    (view (1, C/r^2, r, r, H, W), permute (0, 1, 4, 2, 5, 3), view (1, C/r^2, H r, W r))
    and F.pixel_unshuffle (view (1, C, H/r, r, W/r, r), permute (0, 1, 3, 5, 2, 4),
    view (1, C r^2, H/r, W/r)): one pixel_shuffle / pixel_unshuffle node, windowed
    instead of three global ones. Other permutations stay as they are."""
    users, producers, shapes = _users(graph), _producers(graph), _shapes(graph)
    n = 0
    for perm in [node for node in graph.nodes if node.op == "permute"]:
        first = producers.get(perm.inputs[0])
        if first is None or first.op != "reshape" \
                or _sole_reader(graph, users, first.outputs[0], "permute") is not perm:
            continue
        last = _sole_reader(graph, users, perm.outputs[0], "reshape")
        if last is None:
            continue
        fused = _pixel_shuffle_chain(shapes.get(first.inputs[0]), tuple(first.attrs["shape"]),
                                     tuple(perm.attrs["dims"]), tuple(last.attrs["shape"]))
        if fused is None:
            continue
        op, attrs = fused
        last.op, last.attrs, last.inputs = op, attrs, list(first.inputs)
        graph.nodes.remove(first)
        graph.nodes.remove(perm)
        n += 1
    return n


def fuse_layer_norm(graph):
    """permute (0, 2, 3, 1) -> layer_norm over the last axis -> permute (0, 3, 1, 2), the
    intermediates read only by the chain: F.layer_norm over the channels at each position
    (ConvNeXt's LayerNorm2d) becomes layer_norm over axis 1 of the image, pointwise."""
    users, producers, shapes = _users(graph), _producers(graph), _shapes(graph)
    n = 0
    for ln in [node for node in graph.nodes if node.op == "layer_norm"]:
        first = producers.get(ln.inputs[0])
        if first is None or first.op != "permute" or tuple(first.attrs["dims"]) != (0, 2, 3, 1) \
                or ln.attrs.get("axis", 1) != 3 \
                or _sole_reader(graph, users, first.outputs[0], "layer_norm") is not ln:
            continue
        x = shapes.get(first.inputs[0])
        last = _sole_reader(graph, users, ln.outputs[0], "permute")
        if x is None or len(x) != 4 or last is None \
                or tuple(last.attrs["dims"]) != (0, 3, 1, 2):
            continue
        ln.inputs, ln.outputs = list(first.inputs), list(last.outputs)
        ln.attrs = dict(ln.attrs, axis=1)
        graph.nodes.remove(first)
        graph.nodes.remove(last)
        n += 1
    return n


BROADCASTING_OPS = ("add", "sub", "mul", "div")


def fold_expand(graph):
    """A broadcasting op (add, sub, mul, div) that reads an expanded tensor reads the
    tensor before the expand instead, where its schema takes that shape and gives the
    same output shape (x * s.expand_as(x) is x * s). The expand goes when nothing else
    reads it."""
    from framedelta.formats.ops import SchemaError, resolve_attrs
    producers, shapes = _producers(graph), _shapes(graph)
    n = 0
    for node in graph.nodes:
        if node.op not in BROADCASTING_OPS or node.op not in OPS:
            continue
        for i, t in enumerate(node.inputs):
            exp = producers.get(t)
            if exp is None or exp.op != "expand":
                continue
            inputs = node.inputs[:i] + [exp.inputs[0]] + node.inputs[i + 1:]
            ins = [shapes.get(u) for u in inputs]
            if any(s is None for s in ins) or len(ins[i]) != len(shapes.get(t) or ()):
                continue
            try:
                out = OPS[node.op].infer(resolve_attrs(OPS[node.op], node.attrs), ins)[0]
                OPS[node.op].weights(resolve_attrs(OPS[node.op], node.attrs), ins)
            except (SchemaError, KeyError, TypeError, ValueError):
                continue
            if tuple(out) == shapes.get(node.outputs[0]):
                node.inputs = inputs
                n += 1
    return n



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
    # layout-breaking tails, computed whole: permute, expand, matmul
    fuse_pixel_shuffle,
    fuse_layer_norm,
    fold_expand,
    drop_dead,
)


def run_passes(graph):
    """Run every pass in order; returns {pass name: rewrites}."""
    return {p.__name__: p(graph) for p in PASSES}


# Pseudo-ops: what a rule may emit that is not a format op, for a pass to fold into a
# real one (a zero pad into the following convolutions); the message says why one that
# is left over cannot be converted.
PSEUDO_OPS = {
    "pad": ("zero padding is supported only where it folds into the padding of the "
            "convolutions that read it (every reader a conv2d, and the pad smaller than "
            "their kernel extent); a standalone constant pad op is not in format version 1"),
    # activations and softmax
    # rearranging and normalising: pad, pixel shuffle, slice, norms
}


def leftover_pseudo_nodes(graph):
    """Nodes whose op is not a format op (a 'pad' no pass could fold)."""
    return [node for node in graph.nodes if node.op not in OPS]
