"""The build says what is wrong: without the compiled kernels, import explains how to build."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_without_compiled_kernels_says_how_to_build(tmp_path):
    pkg = tmp_path / "framedelta"
    shutil.copytree(ROOT / "framedelta", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "engine", pkg / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.c"))
    # -S: no site-packages, so neither the installed package nor an editable finder
    r = subprocess.run([sys.executable, "-S", "-c", "import framedelta"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install -e ." in r.stderr
    assert "build_ext --inplace" in r.stderr


def test_openmp_probe_reports_a_boolean():
    from framedelta.engine import _kernels
    assert isinstance(_kernels.openmp_enabled(), bool)
    assert _kernels.max_threads() >= 1
