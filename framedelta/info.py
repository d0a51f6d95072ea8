"""What `framedelta info` prints: per node its op, output shape, MACs and receptive field."""

from dataclasses import dataclass

from .engine.receptive import receptive_fields
from .engine.registry import RECEPTIVE_RULES
from .formats.budget import MAX_ACTIVATION_BYTES, MAX_MACS, footprint, human_bytes
from .formats.graph import check_graph
from .formats.ops import OPS, resolve_attrs


@dataclass
class NodeInfo:
    name: str
    op: str
    category: str
    output_shape: tuple
    macs: int
    receptive_field: tuple   # (rf_h, rf_w) in input pixels, None once the node is global
    source: str


def describe(graph, shapes=None):
    """One NodeInfo per node, in execution order (``shapes``: check_graph's, if known)."""
    shapes = check_graph(graph) if shapes is None else shapes
    fields = receptive_fields(graph, shapes, RECEPTIVE_RULES)
    rows = []
    for node in graph.nodes:
        schema = OPS[node.op]
        attrs = resolve_attrs(schema, node.attrs)
        in_shapes = [shapes[t] for t in node.inputs]
        out_shapes = [shapes[t] for t in node.outputs]
        f = fields.get(node.outputs[0])
        rows.append(NodeInfo(node.name, node.op, schema.category.value, out_shapes[0],
                             schema.count_macs(attrs, in_shapes, out_shapes),
                             f,
                             node.source))
    return rows


def format_table(graph, path="", model=None):
    """The text `framedelta info` prints (with what ``model``, loaded, holds)."""
    shapes = check_graph(graph)
    rows = describe(graph, shapes)
    total = sum(r.macs for r in rows)
    lines = [f"model {path}".rstrip(),
             f"  input {graph.input.name} {tuple(graph.input.shape)} float32"
             + ("  (takes uint8 camera frames)" if graph.input.preprocess else ""),
             f"  producer {graph.producer}", ""]
    head = f"{'#':>4}  {'node':<28} {'op':<18} {'output shape':<20} {'MMACs':>9} {'RF':>9}"
    lines += [head, "-" * len(head)]
    first_global = None
    for i, r in enumerate(rows):
        rf = "global" if r.receptive_field is None else "{}x{}".format(*r.receptive_field)
        if r.receptive_field is None and first_global is None:
            first_global = r
        lines.append(f"{i:>4}  {r.name[:28]:<28} {r.op:<18} {str(r.output_shape):<20} "
                     f"{r.macs / 1e6:>9.2f} {rf:>9}")
    lines.append("-" * len(head))
    lines.append(f"  total {total / 1e9:.3f} GMACs in {len(rows)} nodes")
    spatial = [r for r in rows if r.receptive_field is not None]
    if spatial:
        rf = max(spatial, key=lambda r: r.receptive_field[0] * r.receptive_field[1])
        lines.append(f"  largest receptive field {rf.receptive_field[0]}x"
                     f"{rf.receptive_field[1]} input pixels (at {rf.name})")
    if first_global is not None:
        lines.append(f"  sparsity ends at {first_global.name} ({first_global.op}): from there on "
                     "any change anywhere makes every later position dirty")
    lines.append("  outputs: " + ", ".join(f"{t} {shapes[t]}" for t in graph.outputs))
    fp = footprint(graph, shapes)
    lines.append(f"  memory: activations {human_bytes(fp.activation_bytes)} per dense pass, "
                 f"as much again per stream (limit {human_bytes(MAX_ACTIVATION_BYTES)}); "
                 f"weights {human_bytes(fp.weight_bytes)}; {fp.macs / 1e9:.3f} of at most "
                 f"{MAX_MACS / 1e9:.0f} GMACs")
    if model is not None:
        lines.append(f"  loaded, the model holds {human_bytes(model.memory_bytes)} "
                     f"({model.memory_bytes} bytes: model.memory_bytes)")
    return "\n".join(lines)
