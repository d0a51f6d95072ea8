"""The engine's op table: one line per op (DESIGN.md, "Adding an op").

Each entry binds the op's numpy reference (the oracle), the function that prepares its
kernel for one node (dense, and masked where the op has a masked form), and its
receptive-field rule. The op's schema (attributes,
weights, shapes) lives in formats/ops.py, its converter rule in converters/.
"""

from dataclasses import dataclass

from framedelta.formats.ops import OPS

from . import ops, receptive, reference


@dataclass(frozen=True)
class OpImpl:
    reference: object   # (inputs, attrs, weights) -> output, torch layout
    prepare: object     # (node, attrs, in_shapes, out_shape) -> run(inputs, out, n_threads, pix)
    receptive: object   # (attrs, in_shapes, out_shape) -> SAME, per-axis ranges, or None
    masked: bool = True  # run() honours pix; False: the stream recomputes the node whole


R = receptive.by_category
REGISTRY = {
    "conv2d":            OpImpl(reference.conv2d, ops.prepare_conv2d, receptive.windowed),
    "batch_norm":        OpImpl(reference.batch_norm, ops.prepare_batch_norm, R("batch_norm")),
    "relu":              OpImpl(reference.relu, ops.prepare_relu, R("relu")),
    "clamp":             OpImpl(reference.clamp, ops.prepare_clamp, R("clamp")),
    "max_pool2d":        OpImpl(reference.max_pool2d, ops.prepare_max_pool2d, receptive.windowed),
    "global_avg_pool":   OpImpl(reference.global_avg_pool, ops.prepare_global_avg_pool,
                                R("global_avg_pool"), masked=False),
    "add":               OpImpl(reference.add, ops.prepare_add, R("add")),
    "concat":            OpImpl(reference.concat, ops.prepare_concat, R("concat")),
    "upsample_nearest":  OpImpl(reference.upsample_nearest, ops.prepare_upsample_nearest,
                                receptive.nearest),
    "upsample_bilinear": OpImpl(reference.upsample_bilinear, ops.prepare_upsample_bilinear,
                                receptive.bilinear),
    "linear":            OpImpl(reference.linear, ops.prepare_linear, R("linear"), masked=False),
    "reshape":           OpImpl(reference.reshape, ops.prepare_reshape, R("reshape"),
                                masked=False),
    "identity":          OpImpl(reference.identity, ops.prepare_identity, R("identity")),
    # broadcasting arithmetic (add, sub, mul, div)
    "sub":               OpImpl(reference.sub, ops.prepare_sub, R("sub")),
    "mul":               OpImpl(reference.mul, ops.prepare_mul, R("mul")),
    "div":               OpImpl(reference.div, ops.prepare_div, R("div")),

    # activations and softmax

    # windows: transposed conv, average pools

    # rearranging and normalising: pad, pixel shuffle, slice, norms

    # layout-breaking tails, computed whole: permute, expand, matmul
}

RECEPTIVE_RULES = {name: impl.receptive for name, impl in REGISTRY.items()}

missing = set(OPS) ^ set(REGISTRY)
assert not missing, f"ops without an engine entry (or entries without a schema): {missing}"
