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
    """The conv2d or conv_transpose2d (with no fused activation yet) whose output only
    ``node`` reads."""
    conv = producers.get(node.inputs[0])
    if conv is None or conv.op not in ("conv2d", "conv_transpose2d"):
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
    """conv2d or conv_transpose2d -> batch_norm, the conv output read by the BN only:
    scale the conv's output channels. Elsewhere the batch_norm stays as a per-channel
    affine node."""
    users, producers = _users(graph), _producers(graph)
    n = 0
    for bn in [node for node in graph.nodes if node.op == "batch_norm"]:
        conv = _sole_conv_input(graph, bn, users, producers)
        if conv is None:
            continue
        scale = bn.weights["scale"].astype(np.float64)
        shift = bn.weights["shift"].astype(np.float64)
        w = conv.weights["weight"].astype(np.float64)
        w = (scale_transposed_weight(w, scale, conv.attrs.get("groups", 1))
             if conv.op == "conv_transpose2d" else w * scale[:, None, None, None])
        b = conv.weights["bias"].astype(np.float64) * scale + shift
        conv.weights = {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}
        conv.outputs = list(bn.outputs)
        graph.nodes.remove(bn)
        producers[conv.outputs[0]] = conv
        n += 1
    return n


# standalone activation ops a convolution takes into its store (the kernels apply them
# to each output row while it is in L1: one pass over the activations less)
FUSABLE_ACTIVATIONS = ("relu", "clamp", "silu", "hardswish", "sigmoid")


def fuse_activations(graph):
    """conv2d or conv_transpose2d -> relu / clamp / silu / hardswish / sigmoid, the conv
    output read by the activation only: the conv's ``activation`` attribute (applied
    after the bias in the same kernel, with the standalone op's arithmetic)."""
    users, producers = _users(graph), _producers(graph)
    n = 0
    for act in [node for node in graph.nodes if node.op in FUSABLE_ACTIVATIONS]:
        conv = _sole_conv_input(graph, act, users, producers)
        if conv is None:
            continue
        if act.op == "clamp":
            conv.attrs.update(activation="clamp", act_min=act.attrs["min"],
                              act_max=act.attrs["max"])
        else:
            conv.attrs["activation"] = act.op
        conv.outputs = list(act.outputs)
        graph.nodes.remove(act)
        producers[conv.outputs[0]] = conv
        n += 1
    return n


# --- broadcasting arithmetic (add, sub, mul, div) ---------------------------

# --- activations and softmax ------------------------------------------------

def _only_reader(graph, users, t, node):
    """``node`` is the one reader of tensor ``t``, and ``t`` is not a graph output."""
    return t not in graph.outputs and users[t] == [node]


def _constant(node, op):
    """The constant operand of a one-input arithmetic node ``op`` (x OP other, or with
    ``reverse`` other OP x: the broadcasting arithmetic contract), or None."""
    if node is None or node.op != op or len(node.inputs) != 1 or "other" not in node.weights:
        return None
    return node.weights["other"], int(node.attrs.get("reverse", 0))


def _is_scalar(node, op, value, commutes=True):
    """``node`` is x OP value (any rank of constant, every element equal to the float32
    ``value``); for a non-commuting op the constant must be on the right."""
    c = _constant(node, op)
    if c is None or (c[1] and not commutes):
        return False
    return bool(np.all(c[0] == np.float32(value)))


def _relu6_of_x_plus_3(graph, users, producers, t):
    """If tensor ``t`` is min(max(x + 3, 0), 6) (hardtanh(0, 6), or relu and clamp(max=6)
    in either order, of add(x, 3)), each step read only by the next: (x, the nodes)."""
    last = producers.get(t)
    if last is None:
        return None
    chain = [last]
    if last.op == "clamp" and last.attrs.get("min") == 0.0 and last.attrs.get("max") == 6.0:
        pass
    elif last.op in ("clamp", "relu"):
        first = producers.get(last.inputs[0])
        want = "relu" if last.op == "clamp" else "clamp"
        if first is None or first.op != want or not _only_reader(graph, users, first.outputs[0],
                                                                 last):
            return None
        clamp = first if want == "clamp" else last
        if not (clamp.attrs.get("min", -np.inf) == -np.inf and clamp.attrs.get("max") == 6.0):
            return None
        chain.insert(0, first)
    else:
        return None
    add = producers.get(chain[0].inputs[0])
    if not _is_scalar(add, "add", 3.0) or not _only_reader(graph, users, add.outputs[0], chain[0]):
        return None
    return add.inputs[0], [add] + chain


def _by_six(node):
    """``node`` is v / 6 or v * (1/6)."""
    return _is_scalar(node, "div", 6.0, commutes=False) or _is_scalar(node, "mul", 1.0 / 6.0)


def _product(node):
    """The two inputs of a two-input mul, or None."""
    if node is None or node.op != "mul" or len(node.inputs) != 2 or node.weights:
        return None
    return node.inputs


def _replace(graph, node, op, x, attrs=None, weights=None, remove=()):
    """``node`` becomes ``op`` of ``x`` (keeping its name and output); ``remove`` goes."""
    node.op, node.inputs = op, [x]
    node.attrs, node.weights = dict(attrs or {}), dict(weights or {})
    for other in remove:
        graph.nodes.remove(other)


def _fuse_x_times(graph, users, producers, node, gate, op):
    """``node`` = x * gate(x), either operand order, the gate read by ``node`` alone:
    ``node`` becomes op(x) and the gate goes. Returns whether it did."""
    pair = _product(node)
    if pair is None:
        return False
    for x, g in (pair, pair[::-1]):
        gate_node = producers.get(g)
        if (gate_node is not None and gate_node.op == gate and gate_node.inputs[0] == x
                and _only_reader(graph, users, g, node)):
            _replace(graph, node, op, x, remove=[gate_node])
            return True
    return False


def fuse_hardswish(graph):
    """hardsigmoid: relu6(x + 3) / 6 (F.hardsigmoid decomposed, F.relu6(x + 3) / 6, or
    * (1/6)); hardswish: x * relu6(x + 3) / 6 (F.hardswish decomposed, the manual
    spellings, either operand order) and x * hardsigmoid(x). Each intermediate read
    only by the next step and not returned."""
    n, seen = 0, -1
    for node in list(graph.nodes):
        if node not in graph.nodes:       # removed by an earlier rewrite
            continue
        if seen != n:                     # first, or after a rewrite
            users, producers, seen = _users(graph), _producers(graph), n
        if _by_six(node):
            src = node.inputs[0]
            found = _relu6_of_x_plus_3(graph, users, producers, src)
            if found is not None and _only_reader(graph, users, src, node):
                _replace(graph, node, "hardsigmoid", found[0], remove=found[1])
                n += 1
                continue
            prod = producers.get(src)
            pair = _product(prod)
            if pair is None or not _only_reader(graph, users, src, node):
                continue
            for x, r in (pair, pair[::-1]):
                found = _relu6_of_x_plus_3(graph, users, producers, r)
                if found is not None and found[0] == x and _only_reader(graph, users, r, prod):
                    _replace(graph, node, "hardswish", x, remove=found[1] + [prod])
                    n += 1
                    break
        elif _fuse_x_times(graph, users, producers, node, "hardsigmoid", "hardswish"):
            n += 1
    return n


def fuse_silu(graph):
    """x * sigmoid(x), either operand order (F.silu and nn.SiLU decompose to it), the
    sigmoid read only by that mul and not returned: one silu."""
    users, producers = _users(graph), _producers(graph)
    return sum(_fuse_x_times(graph, users, producers, node, "sigmoid", "silu")
               for node in list(graph.nodes))


def fuse_prelu(graph):
    """where(x > 0, x, x * w) (nn.PReLU decomposed, torch.where spelled by hand), the
    comparison and the product read only by the where: prelu with the slopes w along
    the channels, or leaky_relu when w is one number."""
    users, producers = _users(graph), _producers(graph)
    n = 0
    for node in [nd for nd in graph.nodes if nd.op == "where"]:
        cond, x, neg = node.inputs
        gt, mul = producers.get(cond), producers.get(neg)
        if (gt is None or gt.op != "gt" or gt.inputs[0] != x or gt.attrs.get("other") != 0.0
                or not _only_reader(graph, users, cond, node)):
            continue
        c = _constant(mul, "mul")
        if c is None or mul.inputs[0] != x or not _only_reader(graph, users, neg, node):
            continue
        w = np.asarray(c[0], np.float32)
        if w.ndim < 2 or any(d != 1 for i, d in enumerate(w.shape) if i != 1):
            continue      # not one slope per channel: where stays, and is reported
        slope = w.reshape(-1)
        if slope.size == 1:
            _replace(graph, node, "leaky_relu", x, {"negative_slope": float(slope[0])},
                     remove=[gt, mul])
        else:
            _replace(graph, node, "prelu", x, {"num_parameters": int(slope.size)},
                     {"slope": slope}, remove=[gt, mul])
        n += 1
    return n


# --- windows: transposed conv, average pools --------------------------------

def scale_transposed_weight(w, scale, groups):
    """A conv_transpose2d weight (Cin, Cout/g, KH, KW) with output channel
    g * Cout/g + j scaled by scale[g * Cout/g + j] (batch-norm folding)."""
    cin, og, kh, kw = w.shape
    s = scale.reshape(groups, 1, og, 1, 1)
    return (w.reshape(groups, cin // groups, og, kh, kw) * s).reshape(w.shape)


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
    fuse_prelu,
    fuse_hardswish,
    fuse_silu,
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
# real one; the message says why one that is left over cannot be converted.
PSEUDO_OPS = {
    # activations and softmax
    "gt": ("a comparison is supported only inside where(x > 0, x, x * w), PReLU's "
           "decomposition, which converts to prelu or leaky_relu; framedelta has no "
           "boolean tensors"),
    "where": ("where(cond, a, b) is supported only as where(x > 0, x, x * w) with w one "
              "slope or one slope per channel (nn.PReLU, a hand-written leaky ReLU), each "
              "intermediate read by the where alone"),
    # rearranging and normalising: pad, pixel shuffle, slice, norms
    "concat_batch": ("argument 'dim'=0: concatenation along the batch (dim 0) is not "
                     "supported, the batch stays 1; only a sum over a stacked axis "
                     "(torch.stack(xs).sum(0)) converts, to adds"),
}


def leftover_pseudo_nodes(graph):
    """Nodes whose op is not a format op (a pseudo-op no pass could fold)."""
    return [node for node in graph.nodes if node.op not in OPS]
