"""Linear layers and the layout-breaking tails: permute, expand, matmul, pixel shuffle, layer norm.

Rules as described in rules/__init__.py; importing this module registers them.
"""

import numpy as np

from . import Data, Unused, axis_index, rule


# --- linear ---------------------------------------------------------------------------

def _linear(ctx, x, w_t, bias, alpha=1, beta=1, shape=None):
    if len(ctx.shape(x)) != 2:
        raise ctx.unsupported(f"argument 'mat1': a linear layer needs an (N, F) input, got "
                              f"shape {ctx.shape(x)}")
    if w_t.ndim != 2 or w_t.shape[0] != ctx.shape(x)[1]:
        raise ctx.unsupported(f"argument 'mat2': expected a constant ({ctx.shape(x)[1]}, out) "
                              f"matrix, got shape {w_t.shape}")
    out = int(w_t.shape[1])
    weight = float(alpha) * w_t.T.astype(np.float64)
    if bias is None:
        bias = np.zeros(out)
    elif bias.size != out or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
        raise ctx.unsupported(f"argument 'self': bias of shape {bias.shape} does not "
                              f"broadcast as a per-feature bias of {out}")
    return ctx.emit("linear", [x], {"out_features": out},
                    {"weight": weight, "bias": float(beta) * bias.reshape(-1)}, shape=shape)


@rule("aten.addmm.default", produces=("linear",))
def addmm(ctx, a):
    """nn.Linear / F.linear with bias: addmm(bias, x, permute(weight)); alpha and beta
    are folded into the weights."""
    return _linear(ctx, ctx.data(a["mat1"], "mat1"), ctx.const(a["mat2"], "mat2"),
                   ctx.const(a["self"], "self"), a["alpha"], a["beta"])


@rule("aten.mm.default", produces=("linear", "matmul", "permute", "reshape"))
def mm(ctx, a):
    """nn.Linear(bias=False): mm(x, permute(weight)), on any number of rows; torch.mm
    and @ of two computed matrices (matmul); a constant on the left (W @ x) through
    transposes."""
    return _matmul(ctx, a["self"], a["mat2"], "self", "mat2")


@rule("aten.permute.default", produces=("permute", "identity"))
def permute(ctx, a):
    """x.permute, x.transpose, x.t(), x.mT on computed tensors (a global node computed
    whole); folded on constants (the transposed weight of a linear layer)."""
    dims = [int(d) for d in a["dims"]]
    if isinstance(a["self"], np.ndarray):
        return np.transpose(a["self"], dims)
    x = ctx.data(a["self"], "self")
    rank = len(ctx.shape(x))
    dims = [axis_index(d, rank) for d in dims]
    if dims == list(range(rank)):
        return ctx.emit("identity", [x])
    _tail_shape(ctx, ctx.out_shape, f"argument 'dims' {list(a['dims'])}")
    return ctx.emit("permute", [x], {"dims": tuple(dims)})


# --- layout-breaking tails, computed whole: permute, expand, matmul ---------

MAX_TAIL_RANK = 6   # formats.ops.MAX_RANK (rules import nothing of the format)


def _tail_shape(ctx, shape, what):
    """The bounds every tail result keeps (SPEC: tails): rank 1 .. 6, N = 1 at rank 4."""
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_TAIL_RANK:
        raise ctx.unsupported(f"{what}: the result has shape {shape}; framedelta supports "
                              f"tensors of rank 1 to {MAX_TAIL_RANK}")
    if len(shape) == 4 and shape[0] != 1:
        raise ctx.unsupported(f"{what}: the result has shape {shape}; a rank-4 tensor must "
                              f"have N = 1 (framedelta keeps rank-4 tensors as images)")
    return shape


def emit_reshape(ctx, x, what, shape=None, name=None):
    """x viewed as ``shape`` (default: the node's output shape): reshape, or identity."""
    shape = tuple(ctx.out_shape if shape is None else shape)
    if shape == ctx.shape(x):
        return ctx.emit("identity", [x], shape=shape, name=name)
    _tail_shape(ctx, shape, what)
    return ctx.emit("reshape", [x], {"shape": shape}, shape=shape, name=name)


@rule("aten.unsqueeze.default", produces=("reshape",))
def unsqueeze(ctx, a):
    """x.unsqueeze(d), x[:, None], and torch.stack's per-input step: a reshape."""
    if isinstance(a["self"], np.ndarray):
        return np.expand_dims(a["self"], int(a["dim"]) % (a["self"].ndim + 1))
    return emit_reshape(ctx, ctx.data(a["self"], "self"), f"argument 'dim'={a['dim']}")


@rule("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default",
      produces=("reshape", "identity"))
def squeeze(ctx, a):
    """x.squeeze(), x.squeeze(d), x.squeeze((d, e)): a reshape."""
    if isinstance(a["self"], np.ndarray):
        dims = a.get("dim")
        dims = None if dims is None else tuple(
            d for d in np.atleast_1d(dims).astype(int) if a["self"].shape[d] == 1)
        return np.squeeze(a["self"], dims)
    return emit_reshape(ctx, ctx.data(a["self"], "self"), "the squeezed result")


@rule("aten.expand.default", produces=("expand", "identity"))
def expand(ctx, a):
    """x.expand(...), x.expand_as(y), and the broadcast that torch.matmul puts before
    bmm; folded on constants. passes.fold_expand lets broadcasting ops read the
    unexpanded tensor where they can."""
    if isinstance(a["self"], np.ndarray):
        c = a["self"]
        size = [c.shape[i - (len(a["size"]) - c.ndim)] if int(d) == -1 else int(d)
                for i, d in enumerate(a["size"])]
        return np.ascontiguousarray(np.broadcast_to(c, size))
    x = ctx.data(a["self"], "self")
    shape = ctx.out_shape
    if shape == ctx.shape(x):
        return ctx.emit("identity", [x])
    _tail_shape(ctx, shape, f"argument 'size' {list(a['size'])}")
    return ctx.emit("expand", [x], {"shape": shape})


def _one_matrix(ctx, w, arg):
    """The matrix of a constant batch of equal matrices (what expand made of a weight)."""
    if w.ndim == 3:
        if not (w == w[:1]).all():
            raise ctx.unsupported(f"argument {arg!r}: a constant batch of different matrices "
                                  f"(shape {w.shape}) is not supported; only one matrix "
                                  f"broadcast over the batch")
        w = w[0]
    return w


def _matmul(ctx, a, b, arg_a, arg_b):
    """a @ b for bmm (rank 3) and mm (rank 2): matmul of two computed tensors; with one
    constant side, a linear layer on the rows (x @ W), or on the rows of the transposed
    tensor (W @ x = (x^T @ W^T)^T); two constants fold."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
    if isinstance(a, Data) and isinstance(b, Data):
        return ctx.emit("matmul", [a.name, b.name])
    out = ctx.out_shape
    rank, lead = len(out), out[:-2]
    batch = int(np.prod(lead, dtype=np.int64))
    if isinstance(a, Data):                       # x @ W: a linear layer on the rows of x
        x, w = ctx.data(a, arg_a), _one_matrix(ctx, ctx.const(b, arg_b), arg_b)
        if rank == 2:
            return _linear(ctx, x, w, None)
        m, k = ctx.shape(x)[-2:]
        rows = emit_reshape(ctx, x, f"argument {arg_a!r}", (batch * m, k),
                        name=f"{ctx.node_name}_rows")
        y = _linear(ctx, rows.name, w, None, shape=(batch * m, w.shape[1]))
        return emit_reshape(ctx, y.name, "the result")
    # W @ x = (x^T @ W^T)^T
    w, x = _one_matrix(ctx, ctx.const(a, arg_a), arg_a), ctx.data(b, arg_b)
    k, n = ctx.shape(x)[-2:]
    perm = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    xt = ctx.emit("permute", [x], {"dims": perm}, shape=lead + (n, k), name=f"{ctx.node_name}_t")
    rows = emit_reshape(ctx, xt.name, f"argument {arg_b!r}", (batch * n, k),
                    name=f"{ctx.node_name}_rows")
    y = _linear(ctx, rows.name, w.T, None, shape=(batch * n, w.shape[0]))
    yt = emit_reshape(ctx, y.name, "the result", lead + (n, w.shape[0]), name=f"{ctx.node_name}_yt")
    return ctx.emit("permute", [yt.name], {"dims": perm})


@rule("aten.bmm.default", produces=("matmul", "linear", "permute", "reshape"))
def bmm(ctx, a):
    """torch.bmm, and torch.matmul / @ of batched tensors (which export as expand, view
    and bmm): matmul of two computed tensors; nn.Linear / F.linear on a (1, L, C) tensor
    (a constant right-hand side) as a linear layer on its rows."""
    return _matmul(ctx, a["self"], a["mat2"], "self", "mat2")


def _image_input(ctx, a, arg):
    x = ctx.data(a[arg], arg)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(f"argument {arg!r}: needs an (N, C, H, W) input, got shape "
                              f"{ctx.shape(x)}")
    return x


@rule("aten.pixel_shuffle.default", produces=("pixel_shuffle",))
def pixel_shuffle(ctx, a):
    """F.pixel_shuffle where the graph keeps it whole (run_decompositions spells it view,
    permute, clone, view; passes.fuse_pixel_shuffle puts that back together)."""
    x = _image_input(ctx, a, "self")
    return ctx.emit("pixel_shuffle", [x], {"upscale": int(a["upscale_factor"])})


@rule("aten.pixel_unshuffle.default", produces=("pixel_unshuffle",))
def pixel_unshuffle(ctx, a):
    """F.pixel_unshuffle where the graph keeps it whole (see pixel_shuffle)."""
    x = _image_input(ctx, a, "self")
    return ctx.emit("pixel_unshuffle", [x], {"downscale": int(a["downscale_factor"])})


@rule("aten.native_layer_norm.default", produces=("layer_norm",))
def native_layer_norm(ctx, a):
    """nn.LayerNorm / F.layer_norm over the last axis: layer_norm on that axis, computed
    whole; passes.fuse_layer_norm turns permute -> layer norm -> permute back (layer norm
    over the channels at each position, as ConvNeXt spells it) into layer_norm over
    axis 1 of the image, a pointwise op."""
    x = ctx.data(a["input"], "input")
    shape, norm = ctx.shape(x), [int(d) for d in a["normalized_shape"]]
    if len(norm) != 1 or len(shape) < 2:
        raise ctx.unsupported(f"argument 'normalized_shape' {norm}: only layer norm over the "
                              f"last axis of a tensor of rank 2 or more is supported (input "
                              f"shape {shape})")
    c = shape[-1]
    w = np.ones(c, np.float32) if a["weight"] is None else ctx.const(a["weight"], "weight")
    b = np.zeros(c, np.float32) if a["bias"] is None else ctx.const(a["bias"], "bias")
    eps = float(a["eps"])
    if not 0.0 <= eps <= 1e30:
        raise ctx.unsupported(f"argument 'eps'={eps}: must be in [0, 1e30]")
    y = ctx.emit("layer_norm", [x], {"axis": len(shape) - 1, "eps": eps},
                 {"weight": w.reshape(-1), "bias": b.reshape(-1)}, shape=shape)
    op = "aten.native_layer_norm.default"
    return y, Unused(op, "the mean of the layer norm"), Unused(op, "its inverse std")
