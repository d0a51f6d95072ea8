"""Shared test setup: hypothesis profiles and small helpers.

Profiles: ``ci`` (default; 25 examples, bounded so the suite stays well under CI's
budget), ``dev`` (300) and ``stress`` (3000). Pick one with HYPOTHESIS_PROFILE=dev.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("stress", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VTEST = Path(os.environ.get("FRAMEDELTA_VTEST", SHARED_DATA / "vtest.avi"))


def close_to_torch(y, ref):
    """The project's tolerance against torch: max |y - ref| <= 1e-4 * (1 + max |ref|)."""
    y, ref = np.asarray(y), np.asarray(ref)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    err = float(np.max(np.abs(y - ref))) if y.size else 0.0
    bound = 1e-4 * (1.0 + float(np.max(np.abs(ref))) if ref.size else 1.0)
    assert err <= bound, f"max abs diff {err:.3g} > {bound:.3g}"


@pytest.fixture
def vtest_path():
    if not VTEST.exists():
        pytest.skip(f"the shared clip {VTEST} is absent (it lives in ../shared/data beside "
                    "the project; set FRAMEDELTA_VTEST to use another copy)")
    return VTEST
