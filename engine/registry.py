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
    "concat":            OpImpl(reference.concat, ops.prepare_concat, receptive.concat),
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
    "leaky_relu":        OpImpl(reference.leaky_relu, ops.prepare_leaky_relu, R("leaky_relu")),
    "prelu":             OpImpl(reference.prelu, ops.prepare_prelu, R("prelu")),
    "sigmoid":           OpImpl(reference.sigmoid, ops.prepare_sigmoid, R("sigmoid")),
    "tanh":              OpImpl(reference.tanh, ops.prepare_tanh, R("tanh")),
    "silu":              OpImpl(reference.silu, ops.prepare_silu, R("silu")),
    "hardswish":         OpImpl(reference.hardswish, ops.prepare_hardswish, R("hardswish")),
    "hardsigmoid":       OpImpl(reference.hardsigmoid, ops.prepare_hardsigmoid,
                                R("hardsigmoid")),
    "gelu":              OpImpl(reference.gelu, ops.prepare_gelu, R("gelu")),
    "softmax":           OpImpl(reference.softmax, ops.prepare_softmax, receptive.softmax),
    "log_softmax":       OpImpl(reference.log_softmax, ops.prepare_log_softmax,
                                receptive.softmax),
    "pow":               OpImpl(reference.pow, ops.prepare_pow, R("pow")),

    # windows: transposed conv, average pools
    "conv_transpose2d":  OpImpl(reference.conv_transpose2d, ops.prepare_conv_transpose2d,
                                receptive.conv_transpose),
    "avg_pool2d":        OpImpl(reference.avg_pool2d, ops.prepare_avg_pool2d,
                                receptive.pool_windows("avg_pool2d")),
    "adaptive_avg_pool2d": OpImpl(reference.adaptive_avg_pool2d,
                                  ops.prepare_adaptive_avg_pool2d,
                                  receptive.pool_windows("adaptive_avg_pool2d")),
    "adaptive_max_pool2d": OpImpl(reference.adaptive_max_pool2d,
                                  ops.prepare_adaptive_max_pool2d,
                                  receptive.pool_windows("adaptive_max_pool2d")),

    # rearranging and normalising: pad, pixel shuffle, slice, norms
    "pad":               OpImpl(reference.pad, ops.prepare_pad, receptive.pad),
    "slice":             OpImpl(reference.slice, ops.prepare_slice, receptive.sliced),
    "group_norm":        OpImpl(reference.group_norm, ops.prepare_group_norm,
                                R("group_norm"), masked=False),

    # layout-breaking tails, computed whole: permute, expand, matmul
    "permute":           OpImpl(reference.permute, ops.prepare_permute, R("permute"),
                                masked=False),
    "expand":            OpImpl(reference.expand, ops.prepare_expand, R("expand"), masked=False),
    "matmul":            OpImpl(reference.matmul, ops.prepare_matmul, R("matmul"), masked=False),
    "pixel_shuffle":     OpImpl(reference.pixel_shuffle, ops.prepare_pixel_shuffle,
                                receptive.pixel_shuffle),
    "pixel_unshuffle":   OpImpl(reference.pixel_unshuffle, ops.prepare_pixel_unshuffle,
                                receptive.pixel_unshuffle),
    "layer_norm":        OpImpl(reference.layer_norm, ops.prepare_layer_norm,
                                receptive.layer_norm),
}

RECEPTIVE_RULES = {name: impl.receptive for name, impl in REGISTRY.items()}

missing = set(OPS) ^ set(REGISTRY)
assert not missing, f"ops without an engine entry (or entries without a schema): {missing}"
