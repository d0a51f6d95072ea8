"""Build of framedelta: the pure-Python packages and the Cython kernels.

The top-level folders map onto one package (DESIGN.md, Layout): framedelta/ is the
facade, engine/ is framedelta.engine, formats/ framedelta.formats, converters/
framedelta.converters.

Environment:
  FRAMEDELTA_PORTABLE=1   no -march=native (for wheels that run on other CPUs)
  FRAMEDELTA_NO_OPENMP=1  build without OpenMP even where the compiler has it
  FRAMEDELTA_BUILD_ONLY   comma-separated kernel modules to (re)build in place, for kernel
                          work: FRAMEDELTA_BUILD_ONLY=_kernels python setup.py build_ext -i
"""

import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0);
        return 0;
    }
""")


def openmp_flags():
    """Compile and run a tiny OpenMP program, as scikit-learn's build does.

    Returns the flags to use, or [] with a warning when OpenMP is unavailable.
    """
    if os.environ.get("FRAMEDELTA_NO_OPENMP"):
        warnings.warn("FRAMEDELTA_NO_OPENMP is set: kernels will run on one thread")
        return []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            subprocess.run(cc + ["-fopenmp", src, "-o", exe], check=True,
                           capture_output=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
            if out.strip() == "1":
                return ["-fopenmp"]
        except (OSError, subprocess.CalledProcessError):
            pass
    warnings.warn("\n*** framedelta: the C compiler does not support OpenMP; the kernels "
                  "will be built single-threaded (n_threads is then ignored). Install a "
                  "compiler with OpenMP (gcc, or clang with libomp) for multi-core speed. ***")
    return []


def kernel_modules():
    """Every engine/_*.pyx is one extension module (framedelta.engine._name);
    FRAMEDELTA_BUILD_ONLY=_kernels,_windows (for kernel work) builds just those."""
    names = sorted(os.path.basename(f)[:-4] for f in glob.glob("engine/_*.pyx"))
    only = os.environ.get("FRAMEDELTA_BUILD_ONLY")
    return [n for n in names if n in only.split(",")] if only else names


def extensions():
    omp = openmp_flags()
    # Never -ffast-math: it breaks NaN handling and the dense == incremental guarantee.
    compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function"] + omp
    if not os.environ.get("FRAMEDELTA_PORTABLE"):
        compile_args.append("-march=native")
    exts = [Extension(
        f"framedelta.engine.{name}",
        [f"engine/{name}.pyx"],
        include_dirs=[numpy.get_include(), "engine"],
        depends=sorted(glob.glob("engine/*.h") + glob.glob("engine/*.pxi")),
        extra_compile_args=compile_args,
        extra_link_args=omp,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ) for name in kernel_modules()]
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False})


setup(
    name="framedelta",
    version="0.3.0",
    description="Incremental CNN inference for fixed-camera video on the CPU",
    license="MIT",
    license_files=["LICENSE"],
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["framedelta", "framedelta.engine", "framedelta.formats",
              "framedelta.converters", "framedelta.converters.rules",
              "framedelta.converters.zoo", "framedelta.converters.onnx",
              "framedelta.converters.onnx.rules"],
    package_dir={"framedelta": "framedelta", "framedelta.engine": "engine",
                 "framedelta.formats": "formats", "framedelta.converters": "converters",
                 "framedelta.converters.rules": "converters/rules",
                 "framedelta.converters.zoo": "converters/zoo",
                 "framedelta.converters.onnx": "converters/onnx",
                 "framedelta.converters.onnx.rules": "converters/onnx/rules"},
    package_data={"framedelta.formats": ["SPEC.md"]},
    ext_modules=extensions(),
    install_requires=["numpy>=1.24", "h5py>=3.8",
                      "tqdm>=4.60"],
    extras_require={
        "torch": ["torch==2.13.0"],
        "regions": ["opencv-python-headless>=4.8"],   # mode="regions": connected components
        "onnx": ["onnx>=1.15"],                       # converting ONNX files
        "test": ["torch==2.13.0", "pytest>=7", "hypothesis>=6.80", "opencv-python-headless>=4.8",
                 "onnx>=1.15", "onnxruntime>=1.17"],
        # coverage-guided fuzzing of the loader (tests/fuzz/); wheels for Linux x86-64
        "fuzz": ["atheris>=2.3"],
        "bench": ["torch==2.13.0", "onnxruntime>=1.17", "onnx>=1.15",
                  "matplotlib>=3.7", "opencv-python-headless>=4.8"],
    },
    entry_points={"console_scripts": ["framedelta = framedelta.cli:main"]},
    zip_safe=False,
)
