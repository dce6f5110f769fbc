"""Build script: cythonize ``src_pyx/*.pyx`` into ``nn_core._kernels.*``.

Compiler directives live here and only here.  ``NN_CORE_DEBUG=1`` turns bounds,
wraparound and initialisation checks on (and optimisation off) for debugging a kernel.
No ``-ffast-math``: the kernels rely on IEEE ``-inf`` masking and NaN propagation.
``-fno-trapping-math`` only tells GCC that floating-point operations raise no traps
(nothing here installs FP trap handlers); it keeps IEEE results, infinities and NaNs
exactly, and lets GCC if-convert the selects in the vectorised math so it can vectorise.
``-fno-math-errno``: the kernels never read ``errno``; without it ``sqrt`` stays a
scalar library call (it may set ``errno``) and loops around it do not vectorise.
No ``-march=native``: the vectorised loops (``src_pyx/_vmath.h``, ``_rnn_gates.h``) are
compiled for baseline x86-64 and again for AVX2+FMA / AVX-512F
(``__attribute__((target))``); ``src_pyx/_simd.h`` picks one at run time.

Build mechanics (what keeps ``pip install`` short):

* Cython's memoryview and buffer support code is generated once, into the shared module
  ``nn_core._kernels._cyutility``, instead of into every extension; this roughly halves
  the C that the compiler sees.
* ``.pyx`` files are cythonized, and extensions compiled, on every available core.
* ``-g0``: no debug information in release builds (Python's own CFLAGS carry ``-g``).
* Every built extension is also kept in ``build/ext-cache/`` under a hash of all its
  inputs (the generated C, the headers in ``src_pyx/``, the flags, compiler, Python and
  NumPy).  ``pip install -e .`` builds in a new temporary directory each time, so
  without this it would recompile everything; with it, only what changed is compiled.
"""
import hashlib
import os
import shutil
import sys
import sysconfig
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("NN_CORE_DEBUG", "0") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
if not DEBUG:
    CFLAGS.append("-g0")

JOBS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
SHARED = "nn_core._kernels._cyutility"
CACHE_DIR = os.path.join("build", "ext-cache")

PYX = sorted(glob(os.path.join("src_pyx", "*.pyx")))
if not PYX:  # e.g. an sdist that lost its sources: fail, never build a wheel without kernels
    sys.exit("setup.py: no src_pyx/*.pyx found; the kernel sources are missing")

extensions = [
    Extension(
        "nn_core._kernels." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["src_pyx", numpy.get_include()],
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in PYX
] + [Extension(SHARED, [os.path.join("src_pyx", "_cyutility.c")], extra_compile_args=CFLAGS)]


class cached_build_ext(build_ext):
    """``build_ext`` that reuses an extension built before from identical inputs."""

    def _inputs_hash(self, ext):
        h = hashlib.sha256()
        for path in sorted(ext.sources) + sorted(ext.depends) + sorted(glob("src_pyx/*.h")):
            h.update(path.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
        config = (ext.extra_compile_args, ext.extra_link_args, ext.define_macros,
                  ext.include_dirs, ext.libraries, self.compiler.compiler_so,
                  self.compiler.linker_so, sys.version, sysconfig.get_config_var("EXT_SUFFIX"),
                  numpy.__version__)
        h.update(repr(config).encode())
        return h.hexdigest()[:24]

    def build_extension(self, ext):
        out = self.get_ext_fullpath(ext.name)
        name = os.path.basename(out)
        cached = os.path.join(CACHE_DIR, f"{self._inputs_hash(ext)}-{name}")
        if os.path.exists(cached):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(cached, out)
            print(f"reusing {cached}")
            return
        super().build_extension(ext)
        os.makedirs(CACHE_DIR, exist_ok=True)
        for old in glob(os.path.join(CACHE_DIR, f"*-{name}")):  # one entry per module
            os.remove(old)
        tmp = cached + f".{os.getpid()}.tmp"
        shutil.copy2(out, tmp)
        os.replace(tmp, cached)


modules = cythonize(
    extensions,
    compiler_directives=DIRECTIVES,
    include_path=["src_pyx"],
    shared_utility_qualified_name=SHARED,
    nthreads=JOBS,
)
# Largest generated C first: the parallel build then ends with the short compiles.
modules.sort(key=lambda ext: os.path.getsize(ext.sources[0]), reverse=True)

setup(
    ext_modules=modules,
    cmdclass={"build_ext": cached_build_ext},
    options={"build_ext": {"parallel": JOBS}},
)
