"""Fuzzing the model loader (tests/fuzz/): the seed corpus, both mutators, a short run,
and one regression test per escape the fuzzers found.

Switch: FRAMEDELTA_FUZZ_SECONDS=N runs the coverage-guided harness (atheris,
``pip install -e ".[fuzz]"``) for N seconds on the seed corpus (``.ci/run``: 60); the
seeded random run of the same mutators always runs (FRAMEDELTA_FUZZ_ITERATIONS,
default 300, about 2 s).
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import hashlib

import h5py
import numpy as np
import pytest
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import harness  # noqa: E402

from framedelta.engine.model import Model  # noqa: E402
from framedelta.formats import read_model  # noqa: E402
from framedelta.formats.graph import Graph, InputSpec, Node  # noqa: E402
from test_stream import assert_identical, graphs  # noqa: E402

FUZZ_SECONDS = int(os.environ.get("FRAMEDELTA_FUZZ_SECONDS", "0"))
FUZZ_ITERATIONS = int(os.environ.get("FRAMEDELTA_FUZZ_ITERATIONS", "300"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The seed corpus, made by the tests below: the fixed seeds, then the random graphs
    the property test draws (every op the stream tests build)."""
    return tmp_path_factory.mktemp("fuzz") / "corpus"


def test_seed_corpus_loads_and_runs(corpus):
    paths = harness.write_seed_corpus(corpus)
    assert len(paths) >= 4
    ops = set()
    for p in paths:
        assert harness.check_one(p.read_bytes()) == "ran"
        ops |= {n.op for n in read_model(p).nodes}
    assert len(ops) >= 13


@settings(max_examples=max(25, FUZZ_ITERATIONS // 10), derandomize=True, deadline=None)
@given(g=graphs(max_nodes=10))
def test_random_graphs_run_and_join_the_corpus(corpus, g):
    data = harness.to_bytes(g)
    assert harness.check_one(data) == "ran"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / f"graph_{hashlib.sha1(data).hexdigest()[:16]}.h5").write_bytes(data)


def test_structured_mutator_edits_the_graph_and_keeps_hdf5():
    """Mostly still HDF5 files that h5py opens, with the graph changed: so the graph
    rules and the engine are exercised, not only libhdf5's parser."""
    import io
    seed = harness.to_bytes(harness.seed_graphs()["make_graph"])
    rng = random.Random(1)
    opened = changed = 0
    for _ in range(60):
        out = harness.mutate_graph(seed, rng)
        try:
            with h5py.File(io.BytesIO(out), "r"):
                opened += 1
        except OSError:
            continue
        changed += out != seed
    assert opened >= 50 and changed >= 50


def test_byte_mutator_changes_bytes():
    seed = harness.to_bytes(harness.seed_graphs()["make_graph"])
    rng = random.Random(2)
    outs = [harness.mutate_bytes(seed, rng) for _ in range(50)]
    # (an edit may write a byte's own value back: rarely)
    assert len(set(outs)) >= 45 and outs.count(seed) <= 2


def test_short_random_fuzz_run():
    counts = harness.run_random(iterations=FUZZ_ITERATIONS, seed=0)
    assert sum(counts.values()) == FUZZ_ITERATIONS
    assert counts["refused"] > 0 and counts["ran"] > 0


@pytest.mark.skipif(FUZZ_SECONDS <= 0, reason="coverage-guided fuzzing runs with "
                    "FRAMEDELTA_FUZZ_SECONDS=N (.ci/run sets 60)")
def test_atheris_run(tmp_path, corpus):
    pytest.importorskip("atheris", reason='atheris is not installed: pip install -e ".[fuzz]"')
    script = Path(harness.__file__).with_name("fuzz_loader.py")
    crashes = tmp_path / "crashes"
    harness.write_seed_corpus(corpus)
    crashes.mkdir()
    r = subprocess.run([sys.executable, str(script), str(corpus),
                        f"-max_total_time={FUZZ_SECONDS}", "-timeout=60",
                        "-rss_limit_mb=4096", "-max_len=1048576",
                        f"-artifact_prefix={crashes}/"],
                       capture_output=True, text=True, timeout=FUZZ_SECONDS + 300)
    found = sorted(crashes.iterdir())
    assert r.returncode == 0 and not found, (
        f"the fuzzer found an escape ({[str(p) for p in found]}):\n{r.stderr[-4000:]}")
    assert "Done" in r.stderr


# --- regressions: one per escape --------------------------------------------------------

def _input_as_output():
    """Found by the structured mutator (graph outputs rewired): SPEC.md [G16] lets the
    graph input itself be an output; the layer-wise stream had no cache for it and
    raised KeyError on its first step."""
    w = np.full((2, 3, 1, 1), 0.5, np.float32)
    return Graph(InputSpec("x", (1, 3, 16, 16)), [
        Node("conv", "conv2d", ["x"], ["y"], {"out_channels": 2, "kernel": (1, 1),
                                              "stride": (1, 1), "pads": (0, 0, 0, 0),
                                              "dilation": (1, 1)},
             {"weight": w, "bias": np.zeros(2, np.float32)})], ["y", "x"], "fuzz")


@pytest.mark.parametrize("kwargs", [{}, {"layer_thresholds": 0.0}, {"mode": "regions"}],
                         ids=["exact", "approximate", "regions"])
def test_graph_input_as_an_output_streams(kwargs):
    if kwargs.get("mode") == "regions":
        pytest.importorskip("cv2", reason="mode='regions' needs opencv-python-headless")
    model = Model(_input_as_output(), n_threads=1)
    s = model.stream(threshold=0, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    for _ in range(3):
        y = s.step(x)
        assert_identical(y, model.run(x))
        np.testing.assert_array_equal(y[1], x)
        x = x.copy()
        x[..., 4:9, 2:7] += 1
    assert harness.check_one(harness.to_bytes(_input_as_output())) == "ran"
