"""Every registered op has all seven parts of DESIGN.md's checklist.

1. an entry in formats/SPEC.md; 2. a numpy reference; 3. a Cython kernel (prepared
per node); 4. a receptive-field rule; 5. a registry line; 6. a converter rule that
produces it; 7. tests (a kernel-vs-reference case). A new op missing one fails here.
"""

import re
from pathlib import Path

import pytest

from framedelta.engine import _kernels
from framedelta.engine.registry import REGISTRY
from framedelta.formats.ops import OPS, OPS_BY_ID

SPEC = Path(__file__).resolve().parents[1] / "formats" / "SPEC.md"
ALL_OPS = sorted(OPS)


def test_registry_line_for_every_op():
    assert set(REGISTRY) == set(OPS)


def test_op_ids_are_unique_and_positive():
    assert len(OPS_BY_ID) == len(OPS) and min(OPS_BY_ID) >= 1


@pytest.mark.parametrize("op", ALL_OPS)
def test_spec_entry(op):
    text = SPEC.read_text()
    assert re.search(rf"^### `{re.escape(op)}`", text, re.M), f"no section for {op} in SPEC.md"


@pytest.mark.parametrize("op", ALL_OPS)
def test_reference_kernel_and_receptive_rule(op):
    impl = REGISTRY[op]
    assert callable(impl.reference) and impl.reference.__module__.endswith("reference")
    assert callable(impl.prepare) and callable(impl.receptive)
    assert impl.prepare.__module__.endswith("engine.ops")


def test_kernels_are_compiled():
    assert _kernels.__file__.endswith((".so", ".pyd"))


@pytest.mark.parametrize("op", ALL_OPS)
def test_converter_rule(op):
    from framedelta.converters.rules import produced_ops
    assert op in produced_ops(), f"no converter rule produces {op}"


@pytest.mark.parametrize("op", ALL_OPS)
def test_kernel_test_case(op):
    from test_kernels import CASES
    assert op in CASES, f"tests/test_kernels.py has no case for {op}"
