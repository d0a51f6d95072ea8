"""Packed weights shared by the models of one graph (region mode's crop models).

A crop model is the model's graph re-shaped to a crop size and prepared again; its
weights are the same arrays, so packing them again per crop shape only multiplies the
memory (64 crop shapes of a U-Net held 64 packed copies). Inside ``sharing(memo)`` a
pack function decorated with :func:`shared` returns the packed array it made before for
the same weight array and arguments. The memo keeps the weight array itself, so its
id is never reused while the entry lives; weights are never written after load.
"""

import contextvars
import functools
from contextlib import contextmanager

_memo = contextvars.ContextVar("framedelta_pack_memo", default=None)


def shared(pack):
    """``pack(w, *args)`` made to reuse its result for the same ``w`` and ``args``
    within :func:`sharing`; outside it, unchanged."""
    @functools.wraps(pack)
    def wrapper(w, *args):
        memo = _memo.get()
        if memo is None:
            return pack(w, *args)
        key = (pack.__name__, id(w), args)
        hit = memo.get(key)
        if hit is None or hit[0] is not w:
            hit = memo[key] = (w, pack(w, *args))
        return hit[1]
    return wrapper


@contextmanager
def sharing(memo):
    """Packs made in this block (this thread) come from and go to ``memo`` (a dict)."""
    token = _memo.set(memo)
    try:
        yield memo
    finally:
        _memo.reset(token)


def packed_arrays(memo):
    """The packed arrays a memo holds."""
    return [packed for _, packed in memo.values()]
