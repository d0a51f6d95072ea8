"""The exceptions framedelta raises. All derive from :class:`FramedeltaError`.

This module imports nothing from the rest of the package so that every layer
(formats, engine, converters) can raise these without import cycles.
"""


class FramedeltaError(Exception):
    """Base class of every error framedelta raises on purpose."""


class ModelFormatError(FramedeltaError, ValueError):
    """A model file breaks a rule of formats/SPEC.md.

    ``path``, ``node`` and ``field`` say where: the file, the node (its name, or
    ``None`` for file-level fields) and the attribute or dataset at fault.
    """

    def __init__(self, path, node, field, message):
        self.path = str(path) if path is not None else None
        self.node = node
        self.field = field
        self.reason = message
        where = [f"file {self.path!r}" if self.path else "in-memory graph"]
        if node is not None:
            where.append(f"node {node!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}")


class ConversionError(FramedeltaError):
    """A source model could not be converted (for a reason other than an unknown op)."""


class UnsupportedOperatorError(ConversionError):
    """The source model uses an operator framedelta has no rule for.

    ``op`` is the operator (e.g. ``aten.lstm.input``); ``where`` is the module path and
    source line it came from in the user's model, when the exporter recorded them.
    """

    def __init__(self, op, where=None, detail=None):
        self.op = str(op)
        self.where = where
        msg = f"unsupported operator {self.op}"
        if where:
            msg += f" (from {where})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
