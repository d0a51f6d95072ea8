"""Coverage-guided fuzzing of the model loader with atheris (libFuzzer).

    pip install -e ".[fuzz]"
    python tests/fuzz/fuzz_loader.py --make-corpus corpus/          # the seeds
    python tests/fuzz/fuzz_loader.py corpus/ -max_total_time=3600 -rss_limit_mb=4096 \
        -artifact_prefix=crashes/                                   # the long run

The property and both mutators live in harness.py: libFuzzer's own byte mutator
(``atheris.Mutate``) half of the time, the structured graph-level mutator the other
half. An escape (any exception but ModelFormatError, a crash, a hang past -timeout)
stops the run and leaves the input in ``crash-*``; turn it into a regression test in
tests/test_fuzz.py. ``tests/test_fuzz.py`` runs this for FRAMEDELTA_FUZZ_SECONDS
(``.ci/run``: 60).
"""

import os
import random
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["framedelta", "harness"]):
    import harness


def test_one_input(data):
    harness.check_one(data)


def custom_mutator(data, max_size, seed):
    rng = random.Random(seed)
    if rng.random() < 0.5:
        out = harness.mutate_graph(data, rng)
    else:
        out = atheris.Mutate(data, max_size)
    return out[:max_size]


def main(argv):
    if len(argv) == 3 and argv[1] == "--make-corpus":
        for p in harness.write_seed_corpus(argv[2]):
            print(p)
        return
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
